"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

Reusable against any running dashboard (the one the tests start, or the Compose
stack's): give :func:`chromium` the dashboard's certificate and :func:`visit` its base
URL. Nothing is downloaded (``executable_path`` is Debian's ``/usr/bin/chromium``) and no
certificate check is switched off: the browser accepts exactly the dashboard's key
(``--ignore-certificate-errors-spki-list`` pins it), so a wrong server still fails.

A :class:`Visit` records every request the page makes, every console error, page error
and dialog (an ``alert()`` would mean a script got in), and keeps screenshots under
:data:`ARTIFACTS` (``tests/artifacts/``, ignored by git; ``HOMEWATCH_TEST_ARTIFACTS``
moves it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request, sync_playwright

from tests.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
ARTIFACTS = Path(os.environ.get("HOMEWATCH_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}


def spki_pin(certificate: Path) -> str:
    """Chromium's pin of a certificate's public key: base64(SHA-256(SubjectPublicKeyInfo))."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(server_certificate: Path) -> Iterator[Browser]:
    """Headless Chromium that trusts the dashboard's key and nothing else extra."""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS,
                  f"--ignore-certificate-errors-spki-list={spki_pin(server_certificate)}"])
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """One fresh user (a browser context) on one dashboard."""

    page: Page
    base: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(self.base))
        self.page.on("request", self._request)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"page error: {exc}"))
        self.page.on("dialog", self._dialog)

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} at {message.location}")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str) -> None:
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, (path, response and response.status)
        self.page.wait_for_load_state("load")

    def login(self, password: str) -> None:
        """Open the dashboard, be sent to the login page, log in: on the Now page."""
        self.page.goto(self.base + "/")
        assert urllib.parse.urlsplit(self.page.url).path == "/login", self.page.url
        self.page.fill("#password", password)
        with self.page.expect_navigation():
            self.page.click("button[type=submit]")
        assert urllib.parse.urlsplit(self.page.url).path == "/", self.page.url

    def wait_for_charts(self) -> dict[str, str]:
        """Wait until every chart on the page is drawn (or says it has no data);
        returns each chart's state by its name (``presence`` for the timeline)."""
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('figure.chart')]"
            ".every(f => f.dataset.state)")
        states: dict[str, str] = self.page.eval_on_selector_all(
            "figure.chart", "figs => Object.fromEntries(figs.map(f => "
            "[f.dataset.device ?? 'presence', f.dataset.state]))")
        return states

    def foreign_requests(self) -> list[str]:
        """Requests that left the dashboard's origin (none allowed)."""
        return [u for u in self.requests
                if "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(u)) != self.origin]

    def horizontal_overflow(self) -> int:
        """How many CSS pixels the page is wider than the viewport (0: no sideways scroll)."""
        overflow: int = self.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        return overflow

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        """Nothing left the origin, nothing went wrong in the console, no dialog opened."""
        assert self.foreign_requests() == []
        assert self.console_errors == []
        assert self.dialogs == []


@contextmanager
def visit(browser: Browser, base: str, *, viewport: dict[str, int] | None = None,
          timezone_id: str | None = None, locale: str = "en-GB",
          has_touch: bool = False) -> Iterator[Visit]:
    """A fresh browser context (no cookies) with one page on ``base``."""
    context = browser.new_context(viewport=viewport or DESKTOP,  # type: ignore[arg-type]
                                  timezone_id=timezone_id, locale=locale,
                                  has_touch=has_touch)
    try:
        yield Visit(context.new_page(), base.rstrip("/"))
    finally:
        context.close()
