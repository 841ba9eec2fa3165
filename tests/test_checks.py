"""The checks before a run talk to an S3 endpoint a bounded number of times (issue 15).

Expected values are hand counts of TCP connections accepted by a socket that
closes each one at once (what botocore sees from an endpoint that is up but
broken), not memscore's own figures.
"""

from __future__ import annotations

import socket
import threading

import pytest

from memscore.storage.uris import open_location
from memscore.tasks import checks


class ClosingEndpoint:
    """A TCP listener on 127.0.0.1 that accepts connections, counts them and closes each at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def endpoint(monkeypatch):
    pytest.importorskip("s3fs")
    server = ClosingEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield server
    server.close()


@pytest.mark.parametrize("check, error", [
    (checks.check_source, checks.SourceUnreadableError),
    (checks.check_destination, checks.DestinationUnwritableError),
])
def test_broken_endpoint_is_tried_twice_then_one_line(endpoint, check, error):
    uri = "s3://some-bucket/photos"
    location = open_location(uri, {"skip_instance_cache": True})
    with pytest.raises(error) as raised:
        check(location, uri)
    assert "\n" not in str(raised.value)
    # Two botocore attempts, each of which aiohttp may open twice when the socket closes under it:
    # at most 4 connections. With the run's own filesystem this endpoint sees 40 in about 20 s
    # (s3fs's 5 tries x botocore's 5 attempts with back-off), which is what the probe avoids.
    assert 1 <= endpoint.accepted <= 4


def test_probe_keeps_the_users_options_and_leaves_the_run_filesystem_alone(endpoint):
    user_config = {"connect_timeout": 3, "read_timeout": 7}
    location = open_location("s3://some-bucket/p", {"config_kwargs": user_config, "skip_instance_cache": True})
    probe = checks.probe_location(location)
    assert probe.fs is not location.fs
    config = probe.fs.config_kwargs
    assert config["connect_timeout"] == 3 and config["read_timeout"] == 7  # the user's own values win
    assert config["retries"]["total_max_attempts"] == 2
    assert "retries" not in location.fs.config_kwargs and user_config == {"connect_timeout": 3, "read_timeout": 7}


def test_local_locations_are_checked_as_given(tmp_path):
    location = open_location(str(tmp_path))
    assert checks.probe_location(location) is location
