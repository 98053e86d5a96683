"""Talking to the dashboard as a careful client does: over HTTPS, verifying its
certificate against the dashboard's CA, keeping cookies; and the dashboard as a real process,
or its application served in-process (:func:`served`, for tests that turn its clock).

Reusable against any dashboard (the one these tests start, or the Compose stack's): a
:class:`WebClient` needs only the base URL and the CA certificate.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web

from dashboard.server import Certificate
from tests.helpers import clean_env, free_port, python_m, stop_process, wait_for_port

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


_AGE_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


def age_bounds(text: str) -> tuple[float, float]:
    """The seconds an age such as "3 min ago" (or a bare "3 min") can stand for: its
    whole units, cut down as the dashboard shows them."""
    match = re.fullmatch(r"\s*(\d+) (s|min|h|d|y)(?: ago)?\s*", text)
    assert match, text
    unit = _AGE_UNITS[match[2]]
    return int(match[1]) * unit, (int(match[1]) + 1) * unit


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)

    @property
    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def cookie(self, name: str) -> str | None:
        """The Set-Cookie line for ``name``, if this response sets it."""
        return next((c for c in self.set_cookies if c.startswith(name + "=")), None)

    @property
    def csrf(self) -> str:
        """The form token in this page (the login form's or the logout button's)."""
        match = _CSRF.search(self.text)
        assert match, "no form token in the page"
        return html.unescape(match.group(1))


@dataclass
class WebClient:
    """One user agent: HTTPS verified against ``ca``, cookies kept, no redirects followed.

    ``source`` binds the client's side of each connection to that address (tests that
    come from several addresses: 127.0.0.2 and so on, all loopback).
    """

    base: str
    ca: Path
    source: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        url = urllib.parse.urlsplit(self.base)
        assert url.scheme == "https" and url.hostname and url.port, self.base
        self.host, self.port = url.hostname, url.port
        self.context = ssl.create_default_context(cafile=str(self.ca))

    def request(self, method: str, path: str, *, form: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, cookies: bool = True) -> Response:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=30,
            source_address=(self.source, 0) if self.source else None)
        sent = dict(headers or {})
        if cookies and self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            r = conn.getresponse()
            response = Response(r.status, r.msg, r.read())
        finally:
            conn.close()
        for line in response.set_cookies:
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in line.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: Mapping[str, str], **kw: Any) -> Response:
        return self.request("POST", path, form=form, **kw)

    def login(self, password: str, *, next_page: str = "/") -> Response:
        """Fill in the login form as a browser would (its token from the login page)."""
        page = self.get("/login")
        assert page.status == 200, page.status
        return self.post("/login", {"csrf": page.csrf, "password": password,
                                    "next": next_page})

    def logout(self) -> Response:
        page = self.get("/")
        assert page.status == 200, page.status
        return self.post("/logout", {"csrf": page.csrf})


@dataclass
class DashboardProcess:
    """``python -m dashboard`` on a free loopback port, its log in ``workdir``."""

    directory: Path  # --dashboard-dir: server.crt, server.key, password.hash, (password)
    history: Path
    ca: Path
    workdir: Path
    args: Sequence[str] = ()
    bind: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"https://{self.bind}:{self.port}"

    @property
    def password(self) -> str:
        """The household password, from the file the admin side writes for people."""
        return (self.directory / "password").read_text().strip()

    @property
    def health_file(self) -> Path:
        return self.workdir / "health"

    def command(self) -> list[str]:
        return python_m("dashboard", "--dashboard-dir", str(self.directory), "--history",
                        str(self.history), "--bind", self.bind, "--port", str(self.port),
                        "--health-file", str(self.health_file), *self.args)

    def start(self) -> DashboardProcess:
        self.port = self.port or free_port(self.bind)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "dashboard.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=clean_env(),
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited ({self.proc.returncode}):\n"
                                   f"{self.log()}")
            try:
                wait_for_port(self.bind, self.port, timeout=0.2)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the dashboard did not listen:\n{self.log()}") from None

    def client(self, **kw: Any) -> WebClient:
        return WebClient(self.base, self.ca, **kw)

    def log(self) -> str:
        return (self.workdir / "dashboard.log").read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM; returns the exit code."""
        if self.proc is None:
            return None
        stop_process(self.proc, 10)
        code = self.proc.returncode
        self.proc = None
        return code


@contextmanager
def served(app: web.Application, certificate: Certificate,
           bind: str = "127.0.0.1") -> Iterator[str]:
    """The dashboard's application served over HTTPS (its own TLS context) on a free
    loopback port by an event loop on a thread of its own; yields the base URL. For
    tests that hand the application a clock of their own."""
    port = free_port(bind)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, handle_signals=False)
    started = threading.Event()
    failed: list[BaseException] = []

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, bind, port, ssl_context=certificate.context).start()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)
        started.set()
        if not failed:
            loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="served-dashboard")
    thread.start()
    started.wait(30)
    if failed:
        thread.join(30)
        raise failed[0]
    try:
        yield f"https://{bind}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
