"""tests/support/browser.py drives the real headless chromium: console errors, failed requests, screenshots."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import browser as browser_support
from tests.support.browser import BrowserMissing
from tests.support.browser import artefacts_dir
from tests.support.browser import start_browser

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<link rel="icon" href="data:,"><title>browser support</title></head>
<body style="margin:0;background:#2a6"><h1>Feeder</h1><img src="/missing.png" alt="no bird">
<script>console.error("boom")</script></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # port 0: a free loopback port, no race
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.timeout(120)
def test_phone_page_console_errors_failed_requests_and_screenshot(page_url: str) -> None:
    with start_browser(390, 844) as browser:
        browser.open(page_url)
        assert browser.viewport() == (390, 844)

        errors = browser.console_errors()
        assert any("boom" in error for error in errors), errors
        failed = browser.failed_requests()
        assert any("/missing.png" in line and "404" in line for line in failed), failed
        assert all("/missing.png" in line for line in failed), failed  # nothing else failed (no favicon, ...)
        # The logs were drained: a second read has only what happened since.
        assert browser.console_errors() == []
        assert browser.failed_requests() == []

        shot = browser.screenshot(artefacts_dir() / "browser-support-phone.png")
        assert shot.stat().st_size > 0
        assert _png_size(shot) == (390, 844)


def test_missing_chromium_fails_naming_make_system_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(BrowserMissing, match="make system-packages"):
        start_browser(390, 844)
