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

from test_falseresmem_vitmem import HAS_VITMEM, vitmem_checkpoint  # noqa: F401 - fixture
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


def open_page(browser: DevTools, index: Path, height: int = 3200) -> dict:
    """Load ``index`` and wait for every image; the counts of thumbnails, plots and maps (shown, decoded)."""
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1,
                                                        "mobile": False})
    browser.send("Page.navigate", {"url": index.as_uri()})
    browser.wait_event("Page.loadEventFired")
    return browser.evaluate("""(async () => {
        const imgs = Array.from(document.images);
        await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
        const ok = sel => Array.from(document.querySelectorAll(sel)).filter(i => i.complete && i.naturalWidth > 0).length;
        const rho = document.getElementById('spearman-rho');
        return {thumbs: document.querySelectorAll('img.thumb').length, thumbs_loaded: ok('img.thumb'),
                plots: document.querySelectorAll('img.plot').length, plots_loaded: ok('img.plot'),
                maps: document.querySelectorAll('.card img.map').length, maps_loaded: ok('.card img.map'),
                map_captions: Array.from(document.querySelectorAll('.card figure.map figcaption')).map(c => c.textContent),
                missing: document.querySelectorAll('.card .missing').length,
                rho: rho ? rho.textContent : null};
    })()""")


def console_problems(browser: DevTools) -> list:
    """Console errors and warnings, uncaught exceptions and failed requests seen so far."""
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
    return problems


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

    counts = open_page(browser, out / "index.html")
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
    problems = console_problems(browser)
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


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VITMEM, reason="needs the vitmem package and timm")
def test_report_maps_of_two_models_in_chromium(tmp_path, browser, capsys, vitmem_checkpoint):  # noqa: F811
    """--maps on a DEST with two models: resnet18-nomem (Grad-CAM, weights made here) and ViTMem
    (occlusion, a locally made checkpoint): one map per model under every readable gallery image,
    each captioned with its method and layer or window; the larger view shows both."""
    import torch

    from memscore.flows.cli import main
    from memscore.models.aim import MemorabilityResNet
    from test_report import write_dest

    lab = make_lab(tmp_path / "lab", n=8, participants=4)
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"], model="resnet18-nomem",
               run_id="20260101T000000Z-bbbb")
    write_dest(Path(lab["dest"]), lab["archive"], lab["paths"], lab["scores"], model="vitmem",
               run_id="20260101T000000Z-cccc")
    torch.manual_seed(3)
    weights = tmp_path / "resnet18-nomem.pt"
    torch.save(MemorabilityResNet(memory_shape=None).state_dict(), weights)
    out = tmp_path / "report"
    assert main(["report", lab["dest"], "--out", str(out), "--model", "resmem", "--top", "2", "--sample", "1",
                 "--maps", "--maps-models", "resnet18-nomem,vitmem", "--occlusion-grid", "3",
                 "--maps-weights", f"resnet18-nomem={weights}", "--maps-weights", f"vitmem={vitmem_checkpoint}"]) == 0
    report = json.loads((out / "report.json").read_text())
    ok_rows = sum(g["thumb"]["status"] == "ok" for b in report["gallery"] for g in b["rows"])
    assert ok_rows == 4  # 5 shown, one moved away
    counts = open_page(browser, out / "index.html", height=2400)
    opened = browser.evaluate("""(async () => {
        document.querySelector('button.open').click();
        const maps = Array.from(document.querySelectorAll('#viewer-maps img.map'));
        await Promise.all(maps.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
        return {open: document.getElementById('viewer').open, maps: maps.filter(i => i.naturalWidth > 0).length};
    })()""")
    shot = tmp_path / "report-maps.png"
    browser.evaluate("document.getElementById('viewer').close(); document.getElementById('gallery').scrollIntoView(); 1")
    browser.screenshot(shot)
    problems = console_problems(browser)
    with capsys.disabled():
        print(f"\nmaps screenshot: {shot}\npage: {counts}\nviewer: {opened}\nconsole problems: {problems}")
    assert problems == []
    assert counts["maps"] == counts["maps_loaded"] == 2 * ok_rows
    captions = counts["map_captions"]  # a map with no positive attribution adds " · flat: ..."
    assert sum(c.startswith("resnet18-nomem · Grad-CAM, layer features.layer4.1.conv2") for c in captions) == ok_rows
    assert sum(c.startswith("vitmem · occlusion, 112 x 112 px window, stride 56, mid-grey") for c in captions) == ok_rows
    flat = sum(m["peak"] <= 0 for b in report["gallery"] for g in b["rows"] for m in g["maps"].values()
               if m["status"] == "ok")
    assert sum(c.endswith("flat: no region raises the score") for c in captions) == flat
    assert counts["map_captions"].count("vitmem") == 1 and counts["map_captions"].count("resnet18-nomem") == 1
    assert opened == {"open": True, "maps": 2}
