"""memscore report in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

The page of a small archive with human data loads from disk with no console errors
and no failed requests, shows every gallery thumbnail and every plot (decoded: their
``naturalWidth`` is above 0), opens the larger view on a click, and is saved as a
screenshot in the test's folder (its path is printed). ``.ci/run`` installs chromium,
so in CI (``CI`` set) this test fails rather than skips when chromium is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_report import make_lab


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium is not installed (apt-get install -y chromium; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class DevTools:
    """A minimal DevTools protocol client: one page session over the browser's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        msg_id = next(self.ids)
        message = {"id": msg_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> object:
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture()
def browser(tmp_path):
    binary = chromium_binary()
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {process.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
        port, path = port_file.read_text().splitlines()[:2]
        client = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = client.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        client.session = client.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        yield client
        client.ws.close()
    finally:
        from conftest import stop_process_group

        stop_process_group(process)


def test_report_page_in_chromium(tmp_path, browser, capsys):
    from memscore.flows.cli import main

    lab = make_lab(tmp_path / "lab")
    out = tmp_path / "report"
    assert main(["report", lab["dest"], "--out", str(out), "--human", lab["trials"], "--top", "4", "--sample", "5",
                 "--bootstrap", "200", "--splits", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    expected_thumbs = sum(g["thumb"]["status"] == "ok" for b in report["gallery"] for g in b["rows"])
    expected_plots = len(report["figures"]["distribution"]) + len(report["figures"]["human"])
    assert (expected_thumbs, expected_plots) == (12, 4)  # 13 shown, one moved away; 2 histograms, scatter, ceiling

    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 3200, "deviceScaleFactor": 1,
                                                        "mobile": False})
    browser.send("Page.navigate", {"url": (out / "index.html").as_uri()})
    browser.wait_event("Page.loadEventFired")
    counts = browser.evaluate("""(async () => {
        const imgs = Array.from(document.images);
        await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
        const ok = sel => Array.from(document.querySelectorAll(sel)).filter(i => i.complete && i.naturalWidth > 0).length;
        return {thumbs: document.querySelectorAll('img.thumb').length, thumbs_loaded: ok('img.thumb'),
                plots: document.querySelectorAll('img.plot').length, plots_loaded: ok('img.plot'),
                missing: document.querySelectorAll('.card .missing').length,
                rho: document.getElementById('spearman-rho').textContent};
    })()""")
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    # a click on a thumbnail opens the larger view with the image's path
    opened = browser.evaluate("""(async () => {
        document.querySelector('button.open').click();
        const img = document.getElementById('viewer-img');
        await (img.complete ? null : new Promise(r => { img.onload = img.onerror = r; }));
        return {open: document.getElementById('viewer').open, width: img.naturalWidth,
                caption: document.getElementById('viewer-caption').textContent};
    })()""")
    viewer = tmp_path / "report-viewer.png"
    browser.screenshot(viewer)
    browser.send("Runtime.evaluate", {"expression": "1"})  # flush pending events
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(params["exceptionDetails"].get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            problems.append(json.dumps(params.get("args")))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(params["entry"].get("text"))
        elif method == "Network.loadingFailed":
            problems.append(f"failed request: {params.get('errorText')}")
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}\nviewer screenshot: {viewer}\npage: {counts}\nviewer: {opened}\n"
              f"console problems: {problems}")
    assert problems == []
    assert counts["thumbs"] == counts["thumbs_loaded"] == expected_thumbs
    assert counts["plots"] == counts["plots_loaded"] == expected_plots
    assert counts["missing"] == 1
    assert counts["rho"] == f"{report['human']['spearman']['rho']:.3f}"
    first = report["gallery"][0]["rows"][0]
    assert opened["open"] is True and opened["width"] > 240 and first["path"] in opened["caption"]
    assert shot.stat().st_size > 10_000
