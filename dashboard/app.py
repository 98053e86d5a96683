"""The web application: routes, login, security headers, pages and the JSON API.

Every route needs a logged-in session except the login form itself and its own two
assets (:data:`PUBLIC`); ``/metrics`` also accepts a bearer token. Every
response carries the security headers (:func:`security_headers`), errors included.
Templates autoescape everything; scripts and styles are files served from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import methodcaller
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from dashboard import api, metrics
from dashboard.auth import (
    BROWSER_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    KnownBrowsers,
    LoginLimiter,
    Password,
    PasswordUnavailable,
    Session,
    Sessions,
    WatchedFile,
    same_secret,
)
from dashboard.inventory import Inventory
from homewatch.errors import StorageError
from homewatch.history import RANGES, DeviceReport, HistoryReader, Now

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
# The login page and its own two assets (its stylesheet, and the icon a browser would
# otherwise look for, in vain, at /favicon.ico); nothing else without a session.
LOGIN_ASSETS = ("/static/base.css", "/static/icon.svg")
PUBLIC = {("POST", "/login")} | {(m, p) for m in ("GET", "HEAD") for p in ("/login",
                                                                          *LOGIN_ASSETS)}
PAGES = {"/": "now", "/history": "history", "/devices": "devices"}
RANGE_LABELS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days", "1y": "year"}
MAX_BODY = 16 * 1024  # the only bodies are the login and logout forms
MAX_PASSWORD = 1024

T = TypeVar("T")


class HistoryUnavailable(Exception):
    """The history database cannot be read right now (503, with the reason)."""


class History:
    """The history reader on a thread of its own: SQLite connections stay in the thread
    that opened them, and the event loop never waits for a query. A read that fails
    (a damaged file, a write interrupted mid-commit) is logged once, with its reason,
    until reads work again."""

    def __init__(self, open_reader: Callable[[], HistoryReader]) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="history")
        self._problem: str | None = None
        try:
            self._reader = self._pool.submit(open_reader).result()
        except BaseException:
            self._pool.shutdown()
            raise

    async def call(self, query: Callable[[HistoryReader], T]) -> T:
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, query,
                                                                      self._reader)
        except StorageError as exc:
            if str(exc) != self._problem:
                log.error("%s", exc)
            self._problem = str(exc)
            raise HistoryUnavailable(str(exc)) from None
        if self._problem is not None:
            log.info("the history database can be read again")
            self._problem = None
        return result

    async def warm(self) -> None:
        """Work out each person's presence timeline ahead of the first request (replaying
        a year takes a few tenths of a second), one person at a time on the history's
        thread: a request that comes meanwhile waits for one person's at most. A
        history that cannot be read is logged once (:meth:`call`) and leaves the work
        to the first request; nothing here stops the dashboard."""
        began = time.perf_counter()
        kept = 0
        try:
            people = await self.call(lambda r: r.people())
            for person in people:
                kept = await self.call(methodcaller("warm", person))
        except HistoryUnavailable:
            log.info("presence timelines will be worked out at the first request instead")
            return
        except Exception as exc:  # a bug here must not take the dashboard down
            log.error("presence timelines not worked out ahead (%s: %s); the first request "
                      "will", type(exc).__name__, exc)
            return
        log.info("presence timelines ready: %d of %d people, in %.2f s", kept, len(people),
                 time.perf_counter() - began)

    def close(self) -> None:
        self._pool.submit(self._reader.close).result()
        self._pool.shutdown()


@dataclass
class Dashboard:
    """Everything the handlers share; one per application."""

    history: History
    password: Password
    sessions: Sessions
    limiter: LoginLimiter
    browsers: KnownBrowsers
    inventory: Inventory
    metrics_token: WatchedFile | None = None
    clock: Callable[[], float] = time.time

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE), self.password.generation)

    def close(self) -> None:
        self.history.close()
        self.password.close()


DASHBOARD = web.AppKey("dashboard", Dashboard)
TEMPLATE_ENV = web.AppKey("templates", jinja2.Environment)
WARMING: web.AppKey[asyncio.Task[None]] = web.AppKey("warming")


# -- rendering -------------------------------------------------------------------------

def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _utc(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = abs(seconds)
    for size, unit in ((86400 * 365, "y"), (86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{int(s // size)} {unit}"
    return f"{int(s)} s"


def _temperature(celsius: float | None) -> str:
    return "-" if celsius is None else f"{celsius:.1f}"


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(iso=_iso, utc=_utc, duration=_duration, temperature=_temperature)
    env.globals.update(ranges=list(RANGES), range_labels=RANGE_LABELS)
    return env


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    session = request.app[DASHBOARD].session(request)  # its forms carry its token
    text = request.app[TEMPLATE_ENV].get_template(name).render(
        page=PAGES.get(request.path, ""), csrf=session.csrf if session else "", **context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


# -- middleware and signals ------------------------------------------------------------

async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and static files included."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = (
        "private, no-cache" if request.path.startswith("/static/") else "no-store")
    response.headers["Server"] = "homewatch"


def _same_origin(request: web.Request) -> bool:
    """A POST from our own pages. Browsers say where a request comes from in
    ``Sec-Fetch-Site`` and ``Origin``; under our ``Referrer-Policy: no-referrer`` a form
    post's Origin is ``null``, so Sec-Fetch-Site decides, and an Origin, when it names
    one, must be ours. Every form also carries a token (the real check: a client that
    sends neither header still needs it)."""
    origin = request.headers.get("Origin")
    if origin not in (None, "null") and origin != f"https://{request.host}":
        return False
    return request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"


@web.middleware
async def require_login(request: web.Request,
                        handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    if (request.method, request.path) in PUBLIC:
        response: web.StreamResponse = await handler(request)
        return response
    session = dash.session(request)
    if session is None:
        if request.path == "/metrics" and _bearer_ok(request, dash.metrics_token):
            response = await handler(request)
            return response
        if request.method in ("GET", "HEAD") and request.path in PAGES:
            target = "/login" if request.path == "/" else f"/login?next={request.path}"
            raise web.HTTPSeeOther(target)
        headers = {"WWW-Authenticate": 'Bearer realm="homewatch"'} if (
            request.path == "/metrics") else None
        raise web.HTTPUnauthorized(text=_error("login required"),
                                   content_type="application/json", headers=headers)
    if request.method not in ("GET", "HEAD"):
        form = await request.post()
        token = form.get("csrf")
        if not (_same_origin(request) and isinstance(token, str)
                and same_secret(token, session.csrf)):
            log.warning("%s %s from %s refused: not from this dashboard's own page",
                        shown(request.method), shown(request.raw_path), request.remote)
            raise web.HTTPForbidden(text="This form did not come from the dashboard; "
                                    "reload the page.")
    response = await handler(request)
    return response


@web.middleware
async def server_timing(request: web.Request,
                        handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """``Server-Timing: app;dur=<ms>`` on what a logged-in user asked for: the time the
    dashboard spent on it (history reads, JSON or page), without TLS and the network
    (``make bench-history`` reads it; browsers show it in their developer tools)."""
    began = time.perf_counter()
    response: web.StreamResponse = await handler(request)
    response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - began):.2f}"
    return response


@web.middleware
async def history_unavailable(request: web.Request,
                              handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """A history that cannot be read is a 503 saying why, not a crash or a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
    except HistoryUnavailable as exc:
        if request.path.startswith("/api/") or request.path == "/metrics":
            raise web.HTTPServiceUnavailable(text=_error(f"history unavailable: {exc}"),
                                             content_type="application/json") from None
        raise web.HTTPServiceUnavailable(text=f"The history cannot be read right now: {exc}"
                                         ) from None
    return response


def shown(text: str, limit: int = 200) -> str:
    """A string a client chose (a path, a header) as it may appear in the log: one line,
    ASCII only (control characters, line separators and backslashes escaped, as in
    Python's ``unicode_escape``), at most ``limit`` characters of it."""
    escaped = text[:limit].encode("unicode_escape").decode("ascii")
    return escaped + ("..." if len(text) > limit else "")


def _error(message: str) -> str:
    return json.dumps({"error": message})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _bearer_ok(request: web.Request, token: WatchedFile | None) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return token is not None and scheme.lower() == "bearer" and bool(value) and (
        token.matches(value.strip()))


# -- login -----------------------------------------------------------------------------

def _next_page(value: str | None) -> str:
    return value if value in PAGES else "/"


def _login_form(request: web.Request, *, status: int = 200, error: str = "",
                headers: Mapping[str, str] | None = None) -> web.Response:
    token = token_urlsafe(24)
    response = render(request, "login.html", status=status, error=error, login_csrf=token,
                      next_page=_next_page(request.query.get("next")))
    response.headers.update(headers or {})
    response.set_cookie(LOGIN_COOKIE, token, secure=True, httponly=True, samesite="Strict",
                        path="/")
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.app[DASHBOARD].session(request) is not None:
        raise web.HTTPSeeOther(_next_page(request.query.get("next")))
    return _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    client = request.remote or "unknown"
    form = await request.post()
    token, cookie = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if not (_same_origin(request) and isinstance(token, str) and cookie
            and same_secret(token, cookie)):
        log.warning("login from %s refused: the form did not come from this dashboard", client)
        return _login_form(request, status=403, error="The login form expired. Try again.")
    browser = dash.browsers.verify(request.cookies.get(BROWSER_COOKIE))
    who = client if browser is None else f"{client} (a known browser)"
    wait = dash.limiter.attempt(client, browser)
    if wait > 0:
        seconds = math.ceil(wait)
        log.warning("login from %s refused: too many failed attempts, next allowed in %d s",
                    who, seconds)
        return _login_form(request, status=429, headers={"Retry-After": str(seconds)},
                           error=f"Too many failed attempts. Try again in {seconds} s.")
    password = form.get("password")
    if isinstance(password, str):  # a line end pasted or sent along (`password@FILE`),
        password = password.rstrip("\r\n")  # as stored passwords never end in one
    try:
        right = (isinstance(password, str) and len(password) <= MAX_PASSWORD
                 and await dash.password.check(password))
    except PasswordUnavailable as exc:
        dash.limiter.succeeded(client, browser)  # not the user's failure
        log.error("login from %s cannot be checked: %s", who, exc)
        return _login_form(request, status=503, error="The dashboard cannot check passwords "
                           "right now: its log says why.")
    if not right:
        dash.limiter.failed()
        log.warning("login from %s refused: wrong password", who)
        return _login_form(request, status=401, error="Wrong password.")
    dash.limiter.succeeded(client, browser)
    log.info("login from %s", who)
    response = _see_other(_next_page(str(form.get("next", "/"))))
    response.set_cookie(SESSION_COOKIE, dash.sessions.create(dash.password.generation),
                        secure=True, httponly=True, samesite="Strict", path="/")
    known = dash.browsers.issue(browser)  # this browser's, for its next logins
    if known is not None:
        response.set_cookie(BROWSER_COOKIE, known, max_age=dash.browsers.lifetime,
                            secure=True, httponly=True, samesite="Strict", path="/")
    response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[DASHBOARD].sessions.end(request.cookies.get(SESSION_COOKIE))
    log.info("logout from %s", request.remote)
    response = _see_other("/login")
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True,
                        samesite="Strict")
    return response


# -- pages and API ---------------------------------------------------------------------

def _range(request: web.Request) -> str:
    try:
        return api.parse_range(request.query.get("range"))
    except api.BadRequest as exc:
        if request.path.startswith("/api/"):
            raise web.HTTPBadRequest(text=_error(str(exc)),
                                     content_type="application/json") from None
        raise web.HTTPBadRequest(text=str(exc)) from None


async def _now(request: web.Request) -> api.JSON:
    dash = request.app[DASHBOARD]
    at = dash.clock()
    return api.now_view(await dash.history.call(lambda r: r.now(at)))


async def _fleet(dash: Dashboard) -> tuple[Now, list[DeviceReport],
                                           Mapping[tuple[str | None, str], int]]:
    """Now, the device reports and the rejections, read in one go."""
    at = dash.clock()
    return await dash.history.call(lambda r: (r.now(at), r.devices(), r.rejections()))


async def _devices(request: web.Request) -> api.JSON:
    dash = request.app[DASHBOARD]
    now, reports, rejections = await _fleet(dash)
    return api.devices_view(reports, rejections, dash.inventory.certificates(), now)


async def now_page(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    at = dash.clock()
    now, alerts = await dash.history.call(lambda r: (r.now(at), r.alerts(api.RECENT_ALERTS)))
    view = api.now_view(now)
    return render(request, "now.html", now=view, invented=view["invented"],
                  alerts=api.alerts_view(at, alerts))


async def history_page(request: web.Request) -> web.StreamResponse:
    range_name = _range(request)
    view = await _now(request)
    return render(request, "history.html", now=view, invented=view["invented"],
                  range=range_name)


async def devices_page(request: web.Request) -> web.StreamResponse:
    view = await _devices(request)
    invented = sorted(d["name"] for d in view["devices"] if d["simulated"])
    return render(request, "devices.html", devices=view, invented=invented)


async def api_now(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _now(request))


async def api_temperature(request: web.Request) -> web.StreamResponse:
    device = request.query.get("device")
    if not device:
        raise web.HTTPBadRequest(text=_error("device is required"),
                                 content_type="application/json")
    range_name = _range(request)
    dash = request.app[DASHBOARD]
    start, end = api.window(range_name, dash.clock())
    buckets = await dash.history.call(lambda r: r.temperature(device, start, end))
    return web.json_response(api.temperature_view(device, range_name, start, end, buckets))


async def api_presence(request: web.Request) -> web.StreamResponse:
    range_name = _range(request)
    dash = request.app[DASHBOARD]
    start, end = api.window(range_name, dash.clock())
    people = await dash.history.call(lambda r: r.presence(start, end))
    return web.json_response(api.presence_view(range_name, start, end, people))


async def api_alerts(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    at = dash.clock()
    alerts = await dash.history.call(lambda r: r.alerts(api.API_ALERTS))
    return web.json_response(api.alerts_view(at, alerts))


async def api_devices(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _devices(request))


async def metrics_text(request: web.Request) -> web.StreamResponse:
    dash = request.app[DASHBOARD]
    now, reports, rejections = await _fleet(dash)
    text = metrics.render(now, reports, rejections, dash.inventory.certificates(),
                          sessions=dash.sessions.count(),
                          login_failures=dash.limiter.failed_total,
                          login_refused=dash.limiter.refused)
    return web.Response(body=text.encode("utf-8"),
                        headers={"Content-Type": metrics.CONTENT_TYPE})


# -- the application -------------------------------------------------------------------

async def _start_warming(app: web.Application) -> None:
    """As the application starts: the presence timelines, in the background."""
    app[WARMING] = asyncio.create_task(app[DASHBOARD].history.warm())


async def _stop_warming(app: web.Application) -> None:
    task = app.get(WARMING)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(dash: Dashboard) -> web.Application:
    app = web.Application(middlewares=[require_login, history_unavailable, server_timing],
                          client_max_size=MAX_BODY)
    app[DASHBOARD] = dash
    app[TEMPLATE_ENV] = templates()
    app.on_response_prepare.append(security_headers)
    app.on_startup.append(_start_warming)
    app.on_cleanup.append(_stop_warming)
    app.router.add_get("/", now_page)
    app.router.add_get("/history", history_page)
    app.router.add_get("/devices", devices_page)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/now", api_now)
    app.router.add_get("/api/temperature", api_temperature)
    app.router.add_get("/api/presence", api_presence)
    app.router.add_get("/api/devices", api_devices)
    app.router.add_get("/api/alerts", api_alerts)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_static("/static", STATIC, follow_symlinks=False)
    return app
