"""Helpers for the catalogue app's browser tests (Playwright + Chromium): a live server, screenshots, and
the `browser` fixture (one Chromium per module; conftest.py offers it to every test module)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / os.environ.get("TFWHALE_SCREENSHOTS", "test-screenshots")
CHROMIUM = os.environ.get("TFWHALE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: install Debian's `chromium` package (apt-get install chromium), "
    "or set TFWHALE_CHROMIUM to a Chromium binary",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn serving one app in a thread of this process, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the app did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def write_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def shot(page, name: str, at=None) -> None:
    SHOTS.mkdir(exist_ok=True)
    if at is not None:
        at.evaluate("element => element.scrollIntoView()")
    page.screenshot(path=str(SHOTS / f"serve-{name}.png"))


def identify(page, path: str | list[str]):
    """Upload photos on the identify page; returns the newest result section once all have shown."""
    paths = [path] if isinstance(path, str) else path
    before = page.locator(".result").count()
    page.set_input_files("#files", paths)
    page.click("#identify")
    page.wait_for_function(f"document.querySelectorAll('.result').length >= {before + len(paths)}")
    return page.locator(".result").first
