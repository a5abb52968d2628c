"""Browser tests: headless Chromium (the Debian package; never ``playwright install``) driven by
Playwright's sync API against the integration ``service`` (real uvicorn, real Celery worker, real
Redis), plus a second API process with API keys on the same Redis prefix and worker.

Every page is watched: console errors, uncaught exceptions, failed requests and any request to a
host other than the local server fail the test (``PageGuard.assert_clean``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.conftest import ROOT, ZOO, Service, _stop

CHROMIUM = os.environ.get("GANCOMPRESS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("GANCOMPRESS_UI_SHOTS", "/tmp/ui-shots"))
API_KEY = "sk-browser-test-1"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Generous: two cores run the API, the worker, the sandboxed engine and Chromium at once.
JOB_TIMEOUT_MS = 300_000
UI_TIMEOUT_MS = 30_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class KeyedService:
    url: str
    key: str


@pytest.fixture(scope="session")
def keyed_service(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedService]:
    """A second API process with ``GANCOMPRESS_API_KEYS`` set, sharing the first one's Redis
    prefix, queue, storage and worker (its jobs belong to the key's owner, ``tester``)."""
    logs = tmp_path_factory.mktemp("keyed")
    env = {**service.env, "GANCOMPRESS_API_KEYS": f"tester:{API_KEY}"}
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if api.poll() is not None:
                raise RuntimeError(f"the keyed API exited ({api.returncode}); see {logs / 'api.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the keyed API did not start; see {logs / 'api.log'}")
            time.sleep(0.3)
        yield KeyedService(url=url, key=API_KEY)
    finally:
        _stop(api)


@pytest.fixture(scope="session")
def generator_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's DCGAN (ONNX, opset 17) when it is built, else a tiny DCGAN exported here."""
    zoo = ZOO / "dcgan" / "model.op17.onnx"
    if zoo.is_file():
        return zoo
    from tests.worker.engine import tiny

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny.export("dcgan", tmp_path_factory.mktemp("model") / "dcgan.onnx")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class PageGuard:
    """What went wrong on a page: console errors, page errors, failed or foreign requests."""

    base: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def allow_status(self, *statuses: int) -> None:
        """Expect API answers with these statuses (Chromium logs them as console errors)."""
        self.allowed_statuses.update(statuses)

    def on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        m = re.match(r"Failed to load resource: the server responded with a status of (\d+)", msg.text)
        if m and int(m.group(1)) in self.allowed_statuses:
            return
        self.console.append(f"{msg.text} @ {msg.location.get('url', '')}")

    def on_request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.hostname not in LOCAL_HOSTS:
            self.foreign.append(request.url)

    def on_failed(self, request: Any) -> None:
        failure = request.failure or ""
        # Navigating away (or starting a download) aborts what was in flight: not a failure.
        if "ERR_ABORTED" in failure:
            return
        self.failed.append(f"{request.method} {request.url}: {failure}")

    def assert_clean(self) -> None:
        problems = {
            "console errors": self.console,
            "page errors": self.errors,
            "failed requests": self.failed,
            "requests to other hosts": self.foreign,
        }
        bad = {k: v for k, v in problems.items() if v}
        assert not bad, f"problems on the page: {bad}"


@dataclass
class Browser:
    """One browser context on one server, with its guard."""

    page: Any
    context: Any
    guard: PageGuard
    base: str
    shots: Path

    def go(self, path: str) -> None:
        self.page.goto(self.base + path, wait_until="domcontentloaded")

    def shot(self, name: str) -> Path:
        """Full-page screenshot into the test's tmp_path, and a copy in /tmp/ui-shots/."""
        return self._save(name, full_page=True)

    def _save(self, name: str, full_page: bool) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        with contextlib.suppress(OSError):
            SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SHOTS / path.name)
        return path

    def assert_fits(self, label: str) -> None:
        """No horizontal scrolling at the current viewport width."""
        width = self.page.evaluate("() => document.documentElement.scrollWidth")
        inner = self.page.evaluate("() => window.innerWidth")
        assert width <= inner, f"{label}: the page is {width}px wide in a {inner}px viewport"

    def at_widths(self, name: str) -> None:
        """Screenshot at 1280px and 390px, checking there is no horizontal scrolling at either."""
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            self.page.wait_for_timeout(150)  # let layout settle after the resize
            self.assert_fits(f"{name} at {size['width']}px")
            self.shot(f"{name}-{label}")
        self.page.set_viewport_size(DESKTOP)

    def frame_shots(self, name: str, selector: str) -> None:
        """Viewport screenshots with ``selector`` scrolled into view, at both widths (full-page
        screenshots leave out-of-process frames such as the sandboxed report blank)."""
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            self.page.set_viewport_size(size)
            self.page.locator(selector).scroll_into_view_if_needed()
            self.page.wait_for_timeout(150)
            self._save(f"{name}-{label}", full_page=False)
        self.page.set_viewport_size(DESKTOP)

    def assert_labelled(self) -> None:
        """Every visible form control has a label (or an aria-label)."""
        unlabelled = self.page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                .filter((e) => e.type !== 'hidden' && e.offsetParent !== null)
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                               && !e.getAttribute('aria-labelledby'))
                .map((e) => e.id || e.name || e.outerHTML.slice(0, 60))"""
        )
        assert not unlabelled, f"form controls without a label: {unlabelled}"


def _open(browser: Any, base: str, shots: Path) -> tuple[Any, Browser]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True, base_url=base)
    context.set_default_timeout(UI_TIMEOUT_MS)
    guard = PageGuard(base)
    context.on("request", guard.on_request)
    context.on("requestfailed", guard.on_failed)
    page = context.new_page()
    page.on("console", guard.on_console)
    page.on("pageerror", lambda e: guard.errors.append(str(e)))
    return context, Browser(page=page, context=context, guard=guard, base=base, shots=shots)


@pytest.fixture
def ui(browser: Any, service: Service, tmp_path: Path) -> Iterator[Browser]:
    """A fresh browser context on the service without API keys."""
    context, b = _open(browser, service.url, tmp_path)
    yield b
    context.close()


@pytest.fixture
def keyed_ui(browser: Any, keyed_service: KeyedService, tmp_path: Path) -> Iterator[Browser]:
    """A fresh browser context (no stored key) on the service with API keys."""
    context, b = _open(browser, keyed_service.url, tmp_path)
    yield b
    context.close()
