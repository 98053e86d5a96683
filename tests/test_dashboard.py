"""The dashboard as a LAN sees it: the real process over a real history database, driven
over HTTPS by a client that verifies its certificate against the dashboard's CA."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from dashboard import auth
from dashboard.__main__ import open_dashboard
from dashboard.app import (
    CSP,
    LOGIN_ASSETS,
    MAX_PASSWORD,
    PUBLIC,
    STATIC,
    Dashboard,
    History,
    make_app,
)
from dashboard.auth import (
    BROWSER_COOKIE,
    BROWSER_LIFETIME,
    SESSION_COOKIE,
    KnownBrowsers,
    LoginLimiter,
    Password,
    Sessions,
)
from dashboard.inventory import Inventory
from dashboard.server import Certificate
from dashboard.settings import build
from homewatch import passwords
from homewatch.history import RANGES
from homewatch.history.sqlite import open_reader
from tests import history_sample as hs
from tests.helpers import ROOT, clean_env, free_port, gen_certs, homewatch_cli, python_m
from tests.history_sample import Sample
from tests.web import DashboardProcess, Response, WebClient, age_bounds, served

PAGES = ("/", "/history", "/history?range=1y", "/devices")
APIS = ("/api/now", f"/api/temperature?device={hs.KITCHEN}&range=24h",
        "/api/presence?range=7d", "/api/devices", "/api/alerts")


@pytest.fixture
def user(dashboard: DashboardProcess) -> WebClient:
    """A logged-in client."""
    client = dashboard.client()
    assert client.login(dashboard.password).status == 303
    return client


def app_routes(history: Path) -> list[tuple[str, str]]:
    """Every (method, path) the application's router serves, each static file included."""
    dash = Dashboard(history=History(lambda: open_reader(history)),
                     password=Password(history), sessions=Sessions(idle=1),
                     limiter=LoginLimiter(), browsers=KnownBrowsers(lambda: None),
                     inventory=Inventory(None))
    try:
        routes = []
        for route in make_app(dash).router.routes():
            info = route.resource.get_info() if route.resource else {}
            if "prefix" in info:  # the static directory: each of its files
                routes += [(route.method, f"{info['prefix']}/{f.name}")
                           for f in sorted(STATIC.iterdir())]
            else:
                routes.append((route.method, info.get("path") or info["formatter"]))
        return routes
    finally:
        dash.close()


def assert_no_data(r: Response) -> None:
    for secret in (hs.KITCHEN, "21.5", hs.FRANK, "demo-pi", "Annie"):
        assert secret not in r.text, (secret, r.text[:300])


# -- login required ----------------------------------------------------------------------

def test_every_route_is_refused_without_login(dashboard: DashboardProcess,
                                              history_db: tuple[Path, Sample]) -> None:
    """Every route in the app's router (so a new one cannot be forgotten), every static
    file included, is refused without a session: pages redirect to the login page, the
    rest answer 401; only the login form and its own two assets are served, without
    data."""
    routes = app_routes(history_db[0])
    assert ("GET", "/api/now") in routes and ("GET", "/static/chart.js") in routes
    anonymous = dashboard.client()
    for method, path in routes:
        form = {"csrf": "x"} if method == "POST" else None
        r = anonymous.request(method, path, form=form)
        if (method, path) in PUBLIC:  # the login form (a post without its token: 403)
            assert r.status == (403 if method == "POST" else 200), (method, path)
        elif method in ("GET", "HEAD") and path in ("/", "/history", "/devices"):
            assert r.status == 303 and r.headers["Location"].startswith("/login"), (method,
                                                                                   path)
        else:
            assert r.status == 401, (method, path, r.status)
        if method != "POST":
            assert_no_data(r)
    assert sorted(p for m, p in PUBLIC if m == "GET") == sorted(["/login", *LOGIN_ASSETS])


def test_unknown_paths_methods_and_forged_cookies_are_refused_too(
        dashboard: DashboardProcess) -> None:
    """No route list to probe: an unknown path or method answers 401 like any other
    without login, and a made-up or stale session cookie is no session."""
    anonymous = dashboard.client()
    for method, path in (("GET", "/nope"), ("GET", "/api/nope"), ("PUT", "/"),
                         ("DELETE", "/api/now"), ("GET", "/static/../app.py"),
                         ("GET", "/static/nope.js")):
        assert anonymous.request(method, path).status == 401, (method, path)
    forged = dashboard.client()
    forged.cookies[SESSION_COOKIE] = "x" * 43
    assert forged.get("/api/now").status == 401


def test_wrong_password_is_refused_and_never_logged(dashboard: DashboardProcess) -> None:
    """A wrong password gets the form again with 401 and no session; the log says who
    was refused, and neither the attempt nor the password is anywhere in it."""
    client = dashboard.client()
    wrong = "not-the-password-" + "x" * 8
    r = client.login(wrong)
    assert r.status == 401 and "Wrong password" in r.text
    assert r.cookie(SESSION_COOKIE) is None and SESSION_COOKIE not in client.cookies
    assert client.get("/api/now").status == 401
    assert client.login(dashboard.password).status == 303
    assert client.get("/api/now").status == 200
    log = dashboard.log()
    assert "login from 127.0.0.1 refused: wrong password" in log
    assert wrong not in log and dashboard.password not in log


def test_a_path_with_a_line_break_cannot_forge_a_log_line(
        dashboard: DashboardProcess, user: WebClient) -> None:
    """A path with an encoded line break (/%0aFAKE%20line) cannot start a log line."""
    anonymous = dashboard.client()
    for client, method in ((anonymous, "GET"), (anonymous, "POST"), (user, "GET"),
                           (user, "POST")):
        form = {"csrf": "x"} if method == "POST" else None
        assert client.request(method, "/%0aFAKE%20line", form=form).status in (401, 403,
                                                                                404)
    lines = dashboard.log().splitlines()
    assert not [line for line in lines if line.startswith("FAKE")]
    assert any("/%0aFAKE%20line" in line and "refused" in line for line in lines)


def test_session_cookie_is_secure_httponly_strict_and_ends_at_logout(
        dashboard: DashboardProcess) -> None:
    """The session cookie is Secure, HttpOnly, SameSite=Strict, Path=/ (a __Host- name:
    the browser enforces all that), a random token; logout ends it on the server."""
    client = dashboard.client()
    r = client.login(dashboard.password)
    assert r.status == 303 and r.headers["Location"] == "/"
    line = r.cookie(SESSION_COOKIE)
    assert line is not None
    flags = {f.strip().lower() for f in line.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    token = client.cookies[SESSION_COOKIE]
    assert len(token) >= 40 and dashboard.password not in token
    assert client.get("/").status == 200
    assert client.logout().headers["Location"] == "/login"
    replay = dashboard.client()
    replay.cookies[SESSION_COOKIE] = token
    assert replay.get("/api/now").status == 401
    assert replay.get("/").status == 303


def test_a_session_ends_after_its_idle_time_and_after_30_days_at_most(
        dashboard_certs: Path, history_db: tuple[Path, Sample]) -> None:
    """A session ends after --session-hours (24 by default) without a request, each
    request starting that time again, and 30 days after its login however active: the
    dashboard's own application from its settings, served in-process on a clock the
    test turns."""
    now = [1_000_000.0]
    args = ["--dashboard-dir", str(dashboard_certs / "dashboard"), "--history",
            str(history_db[0])]
    for extra, idle in (([], 24 * 3600), (["--session-hours", "2"], 2 * 3600)):
        settings = build([*args, *extra], {})
        dash = open_dashboard(settings, clock=lambda: now[0])
        try:
            with served(make_app(dash), Certificate(settings.tls_cert, settings.tls_key)
                        ) as base:
                user = WebClient(base, dashboard_certs / "dashboard-ca.crt")
                password = (dashboard_certs / "dashboard" / "password").read_text().strip()
                assert user.login(password).status == 303
                for _ in range(3):  # a request just within the idle time keeps it going
                    now[0] += idle - 60
                    assert user.get("/api/now").status == 200
                now[0] += idle + 1
                assert user.get("/api/now").status == 401
                assert user.get("/").status == 303  # to the login page
                if idle != 24 * 3600:
                    continue
                assert user.login(password).status == 303
                began = now[0]
                while now[0] + 23 * 3600 < began + 30 * 86400:
                    now[0] += 23 * 3600
                    assert user.get("/api/now").status == 200, (now[0] - began) / 86400
                now[0] = began + 30 * 86400 - 60
                assert user.get("/api/now").status == 200
                now[0] += 61  # 30 days since the login, though used a minute ago
                assert user.get("/api/now").status == 401
        finally:
            dash.close()


def test_posts_need_the_forms_token_and_our_origin(dashboard: DashboardProcess,
                                                   user: WebClient) -> None:
    """Login and logout are refused (403) without the form's token, with a wrong one,
    from another origin, or marked cross-site by the browser."""
    anonymous = dashboard.client()
    page = anonymous.get("/login")
    good = {"csrf": page.csrf, "password": dashboard.password}
    assert anonymous.post("/login", {"password": dashboard.password}).status == 403
    assert anonymous.post("/login", {**good, "csrf": "forged"}).status == 403
    assert anonymous.post("/login", good, headers={"Origin": "https://evil.example"}
                          ).status == 403
    assert anonymous.post("/login", good, headers={"Sec-Fetch-Site": "cross-site"}
                          ).status == 403
    no_cookie = dashboard.client()
    assert no_cookie.post("/login", good).status == 403
    assert SESSION_COOKIE not in anonymous.cookies
    logout = user.get("/").csrf
    assert user.post("/logout", {}).status == 403
    assert user.post("/logout", {"csrf": "forged"}).status == 403
    assert user.post("/logout", {"csrf": logout}, headers={"Origin": "https://evil.example"}
                     ).status == 403
    assert user.get("/api/now").status == 200  # still logged in
    fresh = anonymous.get("/login").csrf  # each refusal gave the form a new token
    assert anonymous.post("/login", {**good, "csrf": fresh}, headers={
        "Origin": "null", "Sec-Fetch-Site": "same-origin"}).status == 303


def test_login_returns_only_to_the_dashboards_own_pages(dashboard: DashboardProcess) -> None:
    """After login the user lands on the page they asked for, and never on another site."""
    client = dashboard.client()
    assert client.login(dashboard.password, next_page="/devices").headers["Location"] == (
        "/devices")
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        other = dashboard.client()
        assert other.login(dashboard.password, next_page=target).headers["Location"] == "/"


# -- headers, TLS -----------------------------------------------------------------------

def test_security_headers_on_every_response(dashboard: DashboardProcess,
                                            user: WebClient) -> None:
    """Pages, API, metrics, static files, the login page, redirects and errors all carry
    the CSP, nosniff, no-referrer and HSTS; pages and API are never cached."""
    anonymous = dashboard.client()
    responses = [user.get(p) for p in (*PAGES, *APIS, "/metrics", "/static/chart.js",
                                       "/nope", "/api/temperature?range=2h&device=x")]
    responses += [anonymous.get(p) for p in ("/login", "/", "/api/now",
                                             "/static/base.css")]
    assert {r.status for r in responses} == {200, 303, 401, 404, 400}
    for r in responses:
        h = r.headers
        assert h["Content-Security-Policy"] == CSP
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["Strict-Transport-Security"].startswith("max-age=")
        assert h["X-Frame-Options"] == "DENY"
        assert "aiohttp" not in h.get("Server", "")
    for r in responses[: len(PAGES) + len(APIS) + 1]:
        assert r.headers["Cache-Control"] == "no-store"
    assert CSP == ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                   "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                   "base-uri 'none'")


def test_https_only_tls_1_2_or_later(dashboard: DashboardProcess) -> None:
    """Plain HTTP gets no page; a client offering at most TLS 1.1 is refused; a verifying
    client gets TLS 1.3 from the certificate the dashboard's CA signed."""
    with socket.create_connection((dashboard.bind, dashboard.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(dashboard.ca)
    with warnings.catch_warnings():  # an outdated client, on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (pytest.raises(ssl.SSLError), socket.create_connection(
            (dashboard.bind, dashboard.port), timeout=5) as s,
          old.wrap_socket(s, server_hostname=dashboard.bind)):
        pass
    good = ssl.create_default_context(cafile=str(dashboard.ca))
    with (socket.create_connection((dashboard.bind, dashboard.port), timeout=5) as s,
          good.wrap_socket(s, server_hostname=dashboard.bind) as tls):
        assert tls.version() == "TLSv1.3"
    good.maximum_version = ssl.TLSVersion.TLSv1_2
    with (socket.create_connection((dashboard.bind, dashboard.port), timeout=5) as s,
          good.wrap_socket(s, server_hostname=dashboard.bind) as tls):
        assert tls.version() == "TLSv1.2"
    foreign = ssl.create_default_context()  # the system's CAs only
    with (pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(
            (dashboard.bind, dashboard.port), timeout=5) as s,
          foreign.wrap_socket(s, server_hostname=dashboard.bind)):
        pass


# -- what the pages and the API show ----------------------------------------------------

def _card(page: str, kind: str, name: str) -> str:
    """The card (``<li class="card KIND">``) of the Pi named ``name`` on a page."""
    cards = [c.split("</li>\n", 1)[0] for c in page.split(f'<li class="card {kind}">')[1:]]
    found = [c for c in cards if f'<span class="name">{name}</span>' in c]
    assert len(found) == 1, (kind, name, len(cards))
    return found[0]


def _assert_age(text: str, t: float) -> None:
    """``text`` ("35 s ago") is the age of ``t`` now, as the dashboard cuts it down."""
    low, high = age_bounds(text)
    assert low - 5 <= time.time() - t < high + 5, (text, time.time() - t)


def test_names_from_pis_are_escaped_everywhere(user: WebClient) -> None:
    """A Pi named <script>..., people named with quotes and markup, a scanner detail with
    markup: every page shows them as text (escaped), never as markup."""
    raw = (hs.EVIL_PI, hs.EVIL_PERSON, hs.ANNA, "<i>no adapter</i>")
    for path in PAGES:
        text = user.get(path).text
        for value in raw:
            assert value not in text, (path, value)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    now = user.get("/").text
    assert "Anna &#34;Annie&#34; &lt;b&gt;O&#39;Brien&lt;/b&gt;" in now
    assert "&lt;img src=x onerror=alert(2)&gt;" in now
    assert "&lt;i&gt;no adapter&lt;/i&gt; &amp; &#34;hci0&#34;" in now
    history = user.get("/history").text
    assert 'data-device="&lt;script&gt;alert(1)&lt;/script&gt;"' in history
    assert "<script>" not in re.sub(r'<script src="/static/[a-z]+\.js" defer></script>', "",
                                    history)


def test_now_api_and_page_show_each_person_and_pi(dashboard: DashboardProcess,
                                                 user: WebClient,
                                                 history_db: tuple[Path, Sample]) -> None:
    """Now: each person home or away since when, seen by which Pi and in which room
    (none unless home); each Pi's room, temperature, online state, scanner state; the
    demo Pi and its person marked demo; room names escaped."""
    now = user.get("/api/now").json()
    sample_now = history_db[1].now
    people = {p["name"]: p for p in now["people"]}
    assert people[hs.ANNA]["home"] is True and people[hs.ANNA]["seen_by"] == [hs.KITCHEN]
    assert people[hs.ANNA]["since"] == pytest.approx(sample_now - 2 * 3600, abs=1)
    assert people[hs.FRANK]["home"] is False and people[hs.FRANK]["simulated"] == "demo"
    assert people[hs.ANNA]["state"] == "home" and people[hs.FRANK]["state"] == "away"
    evil = people[hs.EVIL_PERSON]  # seen only by a Pi that went offline an hour ago
    assert (evil["state"], evil["home"], evil["seen_by"], evil["unconfirmed_by"]) == (
        "unknown", False, [], [hs.EVIL_PI])
    assert evil["since"] == pytest.approx(sample_now - 3600, abs=1)
    assert people[hs.ANNA]["room"] == hs.KITCHEN_ROOM
    assert people[hs.ANNA]["room_since"] == pytest.approx(sample_now - 2 * 3600, abs=1)
    assert evil["room"] is None and people[hs.FRANK]["room"] is None  # not home: no room
    pis = {p["name"]: p for p in now["pis"]}
    kitchen = pis[hs.KITCHEN]
    assert kitchen["temperature"] == hs.KITCHEN_NOW and kitchen["online"] is True
    assert kitchen["scanner_state"] == "ok" and kitchen["simulated"] is None
    assert pis[hs.EVIL_PI]["online"] is False
    assert pis[hs.EVIL_PI]["scanner_detail"] == hs.SCANNER_ERROR
    assert pis[hs.DEMO_PI]["simulated"] == "demo"
    assert (kitchen["room"], pis[hs.EVIL_PI]["room"], pis[hs.DEMO_PI]["room"]) == (
        hs.KITCHEN_ROOM, hs.EVIL_ROOM, None)
    assert now["invented"] == [hs.DEMO_PI] and now["simulated"] == "demo"
    assert kitchen["last_reading_at"] == kitchen["temperature_at"] == pytest.approx(
        sample_now - 30, abs=0.01)
    page = user.get("/").text
    card = _card(page, "pi", hs.KITCHEN)
    last = re.search(r'<dt>Last reading</dt><dd><span class="age" data-t="([0-9.]+)">'
                     r'([^<]*)</span></dd>', card)
    assert last and float(last[1]) == kitchen["last_reading_at"], card
    _assert_age(last[2], kitchen["last_reading_at"])
    assert '<span class="value">21.5</span>' in page
    assert "Demo data." in page and '<span class="sim"' in page
    assert '<span class="badge unknown">not seen</span>' in page
    assert ('last seen home by <span class="name">&lt;script&gt;alert(1)&lt;/script&gt;'
            '</span> offline') in page
    kitchen_room = "Kitchen &lt;em&gt;&amp;&lt;/em&gt; &#34;dining&#34;"
    assert f'<span class="badge ok">home</span> <span class="room">· {kitchen_room}</span>' \
        in page
    assert f'<dt>Room</dt><dd><span class="room">{kitchen_room}</span> since ' in page
    assert '<span class="room">&lt;script&gt;alert(3)&lt;/script&gt;</span>' in page
    assert "alert(3)</script>" not in page


def test_recent_alerts_on_the_now_page_and_in_the_api(user: WebClient,
                                                      history_db: tuple[Path, Sample]) -> None:
    """/api/alerts lists the recorded alerts newest first, with rule, subject, delivery
    and the demo mark; the Now page shows them escaped, the demo one marked."""
    data = user.get("/api/alerts").json()
    sample_now = history_db[1].now
    hot, arrived = data["alerts"]
    assert (hot["rule"], hot["kind"], hot["subject"], hot["delivery"], hot["simulated"]) == (
        "hot", "temperature-above", hs.DEMO_PI, "none", "demo")
    assert hot["at"] == pytest.approx(sample_now - 1800, abs=1)
    assert (arrived["subject"], arrived["delivery"], arrived["simulated"]) == (
        hs.ANNA, "delivered", None)
    assert arrived["delivered_at"] == pytest.approx(sample_now - 2 * 3600 + 1, abs=1)
    assert data["simulated"] == "demo"
    page = user.get("/").text
    assert page.count('id="alerts"') == 1 and "<title>Now · Homewatch</title>" in page
    section = page[page.index('id="alerts"'):]
    assert hs.EVIL_ALERT not in section
    assert "&lt;b&gt;kitchen&lt;/b&gt; &amp; &#34;hot&#34;: 30.0 °C" in section
    assert '<span class="sim" title="invented data, not measured">demo</span>' in section
    assert section.index("hot") < section.index("arrived")
    assert "no webhook" in section and "sent" in section


def test_temperature_api_for_every_range(user: WebClient,
                                         history_db: tuple[Path, Sample]) -> None:
    """24 hours, 7 and 30 days and a year: at most about 400 buckets inside the range,
    min <= mean <= max, in °C, the demo Pi's marked demo; wrong input is a clear 400."""
    sample = history_db[1]
    for range_name, seconds in RANGES.items():
        data = user.get(f"/api/temperature?device={hs.KITCHEN}&range={range_name}").json()
        assert data["unit"] == "°C" and data["range"] == range_name
        assert data["end"] - data["start"] == pytest.approx(seconds)
        buckets = data["buckets"]
        assert 50 <= len(buckets) <= 410, (range_name, len(buckets))
        for b in buckets:
            assert data["start"] - (b["end"] - b["start"]) <= b["start"] < data["end"]
            assert b["min"] <= b["mean"] <= b["max"] and b["count"] > 0
            assert b["simulated"] is None
        assert min(b["min"] for b in buckets) > 13 and max(b["max"] for b in buckets) < 27
        last = buckets[-1]  # holds the latest reading, taken 30 s before the sample's end
        assert last["start"] <= sample.now - 30 < last["end"]
        assert last["min"] <= hs.KITCHEN_NOW <= last["max"]
        demo = user.get(f"/api/temperature?device={hs.DEMO_PI}&range={range_name}").json()
        assert demo["simulated"] == "demo"
        assert demo["buckets"] and all(b["simulated"] == "demo" for b in demo["buckets"])
    escaped = user.get("/api/temperature?device=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
                       "&range=24h").json()
    assert escaped["device"] == hs.EVIL_PI and escaped["buckets"]
    assert user.get("/api/temperature?device=nobody&range=24h").json()["buckets"] == []
    for query in ("device=x&range=2h", "range=24h"):
        r = user.get(f"/api/temperature?{query}")
        assert r.status == 400 and r.json()["error"]


def test_presence_api_gives_each_persons_stretches(user: WebClient,
                                                   history_db: tuple[Path, Sample]) -> None:
    """The timeline's data: Anna's arrivals and departures over the last 7 days, the
    current stretch open-ended, seen-by Pis named; the demo person marked demo; a person
    seen only by a Pi that went offline is unknown from then on, not home, not away."""
    sample_now = history_db[1].now
    data = user.get("/api/presence?range=7d").json()
    people = {p["name"]: p for p in data["people"]}
    anna = people[hs.ANNA]["intervals"]
    homes = [(round((sample_now - i["start"]) / 3600), i["end"] is None)
             for i in anna if i["state"] == "home"]
    assert homes == [(72, False), (48, False), (2, True)]
    assert all(i["seen_by"] == [hs.KITCHEN] for i in anna if i["state"] == "home")
    assert people[hs.FRANK]["simulated"] == "demo"
    evil = [(round((sample_now - i["start"]) / 3600), i["end"] is None, i["state"],
             i["seen_by"], i["unconfirmed_by"]) for i in people[hs.EVIL_PERSON]["intervals"]]
    assert evil == [(24, False, "home", [hs.EVIL_PI], []),  # until its Pi went offline
                    (1, True, "unknown", [], [hs.EVIL_PI])]
    assert user.get("/api/presence?range=forever").status == 400


def test_devices_api_and_page_show_keys_certificates_and_rejections(
        dashboard: DashboardProcess, user: WebClient,
        history_db: tuple[Path, Sample]) -> None:
    """Devices: per Pi its key age, certificate expiry (from the admin side's
    certificates.json, also for a Pi never seen; the subscriber's identity is no Pi),
    rejected messages by reason, last seen; rejections from no known device apart."""
    sample_now = history_db[1].now
    inventory = json.loads((dashboard.directory / "certificates.json").read_text())
    garage = inventory["devices"]["pi-garage"]
    data = user.get("/api/devices").json()
    devices = {d["name"]: d for d in data["devices"]}
    assert set(devices) == {hs.KITCHEN, hs.EVIL_PI, hs.DEMO_PI, "pi-garage"}
    kitchen = devices[hs.KITCHEN]
    assert kitchen["rejected"] == {"decrypt": 3, "replay": 1}
    assert kitchen["key_updated_at"] == pytest.approx(sample_now - hs.KEY_AGE_DAYS * 86400)
    assert kitchen["certificate_not_after"] is None
    assert kitchen["readings"] > 35000 and kitchen["online"] is True
    assert devices["pi-garage"]["last_seen"] is None
    assert kitchen["first_seen"] == pytest.approx(sample_now - 366 * 86400, abs=0.01)
    assert kitchen["last_seen"] == pytest.approx(sample_now - 30, abs=0.01)
    assert devices[hs.DEMO_PI]["first_seen"] == pytest.approx(sample_now - 8 * 86400,
                                                              abs=0.01)
    assert devices["pi-garage"]["certificate_not_after"] == _unix(garage["not_after"])
    assert devices["pi-garage"]["key_updated_at"] == _unix(garage["key_created"])
    assert devices[hs.DEMO_PI]["simulated"] == "demo"
    assert data["rejected_unknown"] == {"unknown-device": 7}
    for server in ("ca", "broker", "dashboard"):
        assert data[server]["not_after"] == _unix(inventory[server]["not_after"])
    page = user.get("/devices").text
    card = _card(page, "device", hs.KITCHEN)
    seen = re.search(r'<dt>Last seen</dt><dd><time class="ts" datetime="([^"]+)" '
                     r'data-t="([0-9.]+)">([^<]+)</time> \(<span class="age" '
                     r'data-t="[0-9.]+">([^<]+)</span>\)</dd>', card)
    assert seen and float(seen[2]) == kitchen["last_seen"], card
    last_seen = datetime.fromtimestamp(kitchen["last_seen"], UTC)
    assert seen[1] == last_seen.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert seen[3] == last_seen.strftime("%Y-%m-%d %H:%M UTC")
    _assert_age(seen[4], kitchen["last_seen"])
    first = datetime.fromtimestamp(kitchen["first_seen"], UTC)
    assert (f'<dt>First seen</dt><dd><time class="ts" datetime="'
            f'{first.strftime("%Y-%m-%dT%H:%M:%SZ")}" data-t="{kitchen["first_seen"]}">'
            f'{first.strftime("%Y-%m-%d %H:%M UTC")}</time></dd>') in card
    garage = _card(page, "device", "pi-garage")
    assert "<dt>Last seen</dt><dd>never</dd>" in garage
    assert f"{hs.KEY_AGE_DAYS} d" in page
    assert '<span class="reason">decrypt</span>&nbsp;<span class="count">3</span>' in page
    assert "Rejected from no known device" in page


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_certificate_expiry_is_flagged_and_the_inventory_reread(
        own_dashboard: DashboardProcess) -> None:
    """A certificate that expires within 30 days is flagged, an expired one more so; a
    rewritten inventory shows at the next request; a broken one shows "unknown" and is
    logged once, without stopping anything."""
    inventory = own_dashboard.directory / "certificates.json"
    now = time.time()

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    inventory.write_text(json.dumps({
        "ca": {"not_after": iso(now + 3000 * 86400)},
        "broker": {"not_after": iso(now - 2 * 86400)},
        "devices": {hs.KITCHEN: {"role": "device", "not_after": iso(now + 20 * 86400),
                                 "key_created": iso(now - 86400)},
                    "subscriber": {"role": "subscriber", "not_after": iso(now)}}}))
    user = own_dashboard.client()
    assert user.login(own_dashboard.password).status == 303
    page = user.get("/devices").text
    assert re.search(r'<span class="expiry soon">.*\(in 19 d\)</span>', page)
    assert re.search(r'broker <span class="expiry expired">.*\(expired 2 d ago\)', page)
    names = [d["name"] for d in user.get("/api/devices").json()["devices"]]
    assert "subscriber" not in names and hs.KITCHEN in names
    inventory.write_text("{not json")
    assert user.get("/api/devices").json()["ca"]["not_after"] is None
    assert user.get("/devices").status == 200
    assert own_dashboard.log().count("certificate inventory") == 1


def test_metrics_need_a_session_or_the_token(dashboard: DashboardProcess,
                                             user: WebClient) -> None:
    """/metrics: 401 (Bearer challenge) without login or with a wrong token; the token
    file's token or a session opens it; label values from Pis are escaped for Prometheus."""
    anonymous = dashboard.client()
    r = anonymous.get("/metrics")
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status == 401
    token = (dashboard.workdir / "metrics-token").read_text().strip()
    assert anonymous.get("/api/now", headers={"Authorization": f"Bearer {token}"}
                         ).status == 401  # the token opens /metrics only
    r = anonymous.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert f'homewatch_temperature_celsius{{device="{hs.KITCHEN}",simulated=""}} 21.5' in text
    assert 'homewatch_temperature_celsius{device="demo-pi",simulated="demo"}' in text
    assert ('homewatch_person_home{person="Anna \\"Annie\\" <b>O\'Brien</b>",simulated=""} '
            "1.0") in text
    assert ('homewatch_rejected_messages_total{device="",reason="unknown-device"} 7.0'
            in text)
    assert 'homewatch_device_online{device="<script>alert(1)</script>"} 0.0' in text
    assert 'homewatch_person_home{person="<img' not in text  # not seen: no sample
    assert "homewatch_dashboard_login_failures_total" in text
    assert user.get("/metrics").status == 200


def _metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format: each metric's samples as (labels, value)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        labels = {k: re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), v)
                  for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or "")}
        samples.setdefault(match[1], []).append((labels, float(match[3])))
    return samples


def _readme_metrics() -> list[str]:
    """The metric names README's JSON API section lists, in its order."""
    readme = (ROOT / "README.md").read_text()
    paragraph = readme.split("`/metrics` has ", 1)[1].split("\n\n", 1)[0]
    paragraph = paragraph.split("The token is for", 1)[0]
    return re.findall(r"`(homewatch_[a-z_]+)(?:\{[a-z,]*\})?`", paragraph)


def test_every_metric_the_readme_lists_is_served_with_its_value(
        own_dashboard: DashboardProcess, history_db: tuple[Path, Sample]) -> None:
    """/metrics serves every metric README lists (and none it does not), each with the
    value the history, the inventory and the dashboard itself hold: temperatures and
    their times, online and scanner states, readings and rejections, who is home,
    certificate expiry, open sessions, failed and rate-limited logins."""
    names = _readme_metrics()
    assert len(names) == len(set(names)) == 12, names
    d, sample_now = own_dashboard, history_db[1].now
    attacker = d.client(source="127.0.0.3")
    for _ in range(5):
        assert attacker.login("wrong-password-5").status == 401
    assert attacker.login("wrong-password-5").status == 429
    user = d.client()
    assert user.login(d.password).status == 303
    r = user.get("/metrics")
    assert r.status == 200, r.text
    samples = _metric_samples(r.text)
    assert sorted(samples) == sorted(names)  # every documented one, nothing else
    for name in names:
        assert f"# HELP {name} " in r.text and f"# TYPE {name} " in r.text, name

    def value(metric: str, /, **labels: str) -> float:
        found = [v for have, v in samples[metric] if labels.items() <= have.items()]
        assert len(found) == 1, (metric, labels, samples[metric])
        return found[0]

    kitchen = hs.KITCHEN
    assert value("homewatch_temperature_celsius", device=kitchen) == hs.KITCHEN_NOW
    for name in ("homewatch_temperature_timestamp_seconds",
                 "homewatch_device_last_reading_timestamp_seconds"):
        assert value(name, device=kitchen) == pytest.approx(sample_now - 30, abs=1), name
    assert value("homewatch_device_online", device=kitchen) == 1.0
    assert value("homewatch_device_online", device=hs.EVIL_PI) == 0.0
    assert value("homewatch_device_scanner_ok", device=kitchen) == 1.0
    assert value("homewatch_device_scanner_ok", device=hs.EVIL_PI) == 0.0  # its error
    devices = {x["name"]: x for x in user.get("/api/devices").json()["devices"]}
    for name, device in devices.items():
        if device["readings"]:
            assert value("homewatch_device_readings_total", device=name) == device["readings"]
    assert value("homewatch_device_readings_total", device=kitchen) > 35000
    for (device, reason), n in hs.REJECTED.items():
        assert value("homewatch_rejected_messages_total", device=device or "",
                     reason=reason) == n
    assert value("homewatch_person_home", person=hs.ANNA) == 1.0
    assert value("homewatch_person_home", person=hs.FRANK, simulated="demo") == 0.0
    inventory = json.loads((d.directory / "certificates.json").read_text())
    for kind in ("ca", "broker", "dashboard"):
        assert value("homewatch_certificate_not_after_timestamp_seconds", kind=kind,
                     name=kind) == _unix(inventory[kind]["not_after"])
    assert value("homewatch_certificate_not_after_timestamp_seconds", kind="device",
                 name="pi-garage") == _unix(inventory["devices"]["pi-garage"]["not_after"])
    assert value("homewatch_dashboard_sessions") == 1.0
    assert value("homewatch_dashboard_login_failures_total") == 5.0
    assert value("homewatch_dashboard_login_rate_limited_total") == 1.0


def test_a_changed_metrics_token_file_is_read_again_without_a_restart(
        own_dashboard: DashboardProcess) -> None:
    """A new token written into the metrics token file opens /metrics at once, and the
    old one no longer does, without a restart."""
    d = own_dashboard
    path = d.directory / "metrics-token"
    old, new = path.read_text().strip(), secrets.token_urlsafe(24)
    anonymous = d.client()

    def status(token: str) -> int:
        return anonymous.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status

    assert status(old) == 200
    path.write_text(new + "\n")
    assert (status(new), status(old)) == (200, 401)
    assert d.proc is not None and d.proc.poll() is None  # the same process
    assert "metrics token file" in d.log() and "changed" in d.log()


def test_the_database_is_only_read(dashboard: DashboardProcess, user: WebClient,
                                   history_db: tuple[Path, Sample]) -> None:
    """A whole session (every page, every API range, metrics) leaves the database file
    and its directory exactly as they were."""
    path = history_db[0]

    def state() -> tuple[str, list[str], int]:
        return (hashlib.sha256(path.read_bytes()).hexdigest(),
                sorted(os.listdir(path.parent)), path.stat().st_mtime_ns)

    before = state()
    for p in (*PAGES, *APIS, "/metrics"):
        assert user.get(p).status == 200, p
    for range_name in RANGES:
        for device in (hs.KITCHEN, hs.DEMO_PI):
            assert user.get(f"/api/temperature?device={device}&range={range_name}"
                            ).status == 200
        assert user.get(f"/api/presence?range={range_name}").status == 200
    user.logout()
    assert state() == before


def test_health_file_is_touched_while_serving(dashboard: DashboardProcess) -> None:
    """The container's health check (`homewatch health FILE`) passes while it serves."""
    assert time.time() - dashboard.health_file.stat().st_mtime < 10
    r = subprocess.run(python_m("homewatch.cli", "health", str(dashboard.health_file)),
                       cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the rate limit and password changes: each on a dashboard of its own ---------------

@pytest.fixture
def own_dashboard(dashboard_certs: Path, history_db: tuple[Path, Sample],
                  tmp_path: Path) -> Iterator[DashboardProcess]:
    """A dashboard of this test's own: its own certs/dashboard (password, hash,
    inventory, a metrics token), its own copy of the history, rate limit and sessions."""
    shutil.copytree(dashboard_certs / "dashboard", tmp_path / "certs" / "dashboard")
    (tmp_path / "history").mkdir()
    shutil.copy2(history_db[0], tmp_path / "history" / "history.db")
    token = tmp_path / "certs" / "dashboard" / "metrics-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    process = DashboardProcess(directory=tmp_path / "certs" / "dashboard",
                               history=tmp_path / "history" / "history.db",
                               ca=dashboard_certs / "dashboard-ca.crt",
                               workdir=tmp_path / "run",
                               args=("--metrics-token-file", str(token))).start()
    yield process
    assert process.stop() == 0, process.log()


def test_login_attempts_are_rate_limited_per_address_and_overall(
        own_dashboard: DashboardProcess) -> None:
    """After 5 wrong passwords from one address, that address gets 429 with Retry-After,
    even with the right password, and the log says so without the password; other
    addresses still may try, until 20 failures overall close the door for everyone."""
    d = own_dashboard
    first = d.client(source="127.0.0.1")
    for _ in range(5):
        assert first.login("wrong-password-1").status == 401
    r = first.login(d.password)
    assert r.status == 429 and 0 < int(r.headers["Retry-After"]) <= 30
    assert "Too many failed attempts" in r.text and SESSION_COOKIE not in first.cookies
    assert "login from 127.0.0.1 refused: too many failed attempts" in d.log()
    for n in (2, 3, 4):  # 15 more failures from three other addresses: 20 overall
        other = d.client(source=f"127.0.0.{n}")
        for _ in range(5):
            assert other.login("wrong-password-2").status == 401
    fresh = d.client(source="127.0.0.5")
    r = fresh.login(d.password)
    assert r.status == 429 and int(r.headers["Retry-After"]) > 0
    log = d.log()
    assert "wrong-password" not in log and d.password not in log


def test_a_browser_that_logged_in_before_is_not_locked_out_by_others(
        own_dashboard: DashboardProcess) -> None:
    """Once others' failures refuse every address, a browser that logged in before still may."""
    d = own_dashboard
    home = d.client(source="127.0.0.9")
    r = home.login(d.password)
    assert r.status == 303
    line = r.cookie(BROWSER_COOKIE)
    assert line is not None
    flags = {f.strip().lower() for f in line.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/",
            f"max-age={BROWSER_LIFETIME}"} <= flags
    cookie = home.cookies[BROWSER_COOKIE]
    hash_line = (d.directory / "password.hash").read_text().strip()
    browser = KnownBrowsers(lambda: hash_line).verify(cookie)  # signed as the test expects
    assert browser is not None and d.password not in cookie
    home.logout()
    for n in (1, 2, 3, 9):  # 20 failures: everyone's budget and 127.0.0.9's own are spent
        attacker = d.client(source=f"127.0.0.{n}")
        for _ in range(5):
            assert attacker.login("wrong-password-3").status == 401
    assert d.client(source="127.0.0.9").login(d.password).status == 429
    assert d.client(source="127.0.0.5").login(d.password).status == 429
    assert home.login(d.password).status == 303  # the household's browser: let in
    assert KnownBrowsers(lambda: hash_line).verify(home.cookies[BROWSER_COOKIE]) == browser
    _, expires, mac = cookie.split(".")
    past = time.time() - BROWSER_LIFETIME - 60
    for bad in (f"{browser}.{int(expires) + 86400}.{mac}",  # a later expiry, forged
                KnownBrowsers(lambda: hash_line, clock=lambda: past).issue(),  # expired
                KnownBrowsers(lambda: "another password's hash").issue(),  # foreign key
                "x" * 43, f"{browser}.{expires}.{'A' * 43}"):
        stranger = d.client(source="127.0.0.5")
        stranger.cookies[BROWSER_COOKIE] = str(bad)
        assert stranger.login(d.password).status == 429, bad
    home.logout()
    for _ in range(5):  # its own failures still count, in a bucket of its own
        assert home.login("wrong-password-4").status == 401
    assert home.login(d.password).status == 429
    log = d.log()
    assert "wrong-password" not in log and d.password not in log and cookie not in log


def test_the_per_address_table_is_a_bounded_lru_that_keeps_a_refused_address() -> None:
    """At most max_clients addresses are kept; churn below that keeps a refused one refused."""
    now = [0.0]
    limiter = LoginLimiter(overall=10**9, max_clients=1000, clock=lambda: now[0])
    for _ in range(5):
        assert limiter.attempt("192.0.2.1") == 0
    assert limiter.attempt("192.0.2.1") > 0
    for n in range(998):  # 999 addresses known: below the cap
        assert limiter.attempt(f"fd00::{n:x}") == 0
    assert len(limiter.clients) == 999
    assert limiter.attempt("192.0.2.1") > 0  # still refused (and now the most recent)
    for n in range(999):
        limiter.attempt(f"fd01::{n:x}")
    assert len(limiter.clients) == 1000
    assert limiter.attempt("192.0.2.1") > 0  # the least recently used went first
    for n in range(50_000):  # rotating addresses: the table stays at its cap
        limiter.attempt(f"fd02::{n:x}")
    assert len(limiter.clients) == 1000


def test_attempts_refused_by_the_overall_limit_take_no_room_in_the_address_table() -> None:
    """New addresses refused by the overall limit are not remembered: churn costs tokens."""
    limiter = LoginLimiter(overall=3, max_clients=10, clock=lambda: 0.0)
    for n in range(3):
        assert limiter.attempt(f"192.0.2.{n}") == 0
    for n in range(1000):
        assert limiter.attempt(f"fd00::{n:x}") > 0
    assert len(limiter.clients) == 3


# -- large and many requests -----------------------------------------------------------

HUGE = 100 * 1024 * 1024  # what the requests below say their body is


def _post_huge(d: DashboardProcess, path: str, cookie: str = "") -> tuple[bytes, int]:
    """POST ``path`` with a body said to be 100 MiB, of which only 64 KiB is sent; the
    status line of the answer that comes back meanwhile, and how much was sent."""
    context = ssl.create_default_context(cafile=str(d.ca))
    with (socket.create_connection((d.bind, d.port), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname=d.bind) as s):
        head = (f"POST {path} HTTP/1.1\r\nHost: {d.bind}:{d.port}\r\nContent-Type: "
                f"application/x-www-form-urlencoded\r\nContent-Length: {HUGE}\r\n"
                + (f"Cookie: {cookie}\r\n" if cookie else "") + "\r\n")
        body = b"password=" + b"a" * (64 * 1024 - 9)
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0], len(body)


def test_an_oversized_body_is_refused_before_it_is_read_whole(
        dashboard: DashboardProcess, user: WebClient) -> None:
    """A login form, or a logged-in user's form, that says it is 100 MiB long is refused
    with 413 once more than 16 KiB of it came in: the answer comes while the client has
    sent 64 KiB of it, and the dashboard keeps serving."""
    cookie = f"{SESSION_COOKIE}={user.cookies[SESSION_COOKIE]}"
    for path, with_cookie in (("/login", ""), ("/logout", cookie)):
        status, sent = _post_huge(dashboard, path, with_cookie)
        assert status == b"HTTP/1.1 413 Request Entity Too Large", (path, status)
        assert sent < HUGE // 1000
    assert user.get("/api/now").status == 200  # the session was not ended either


def test_an_over_long_password_is_refused_without_hashing(
        dashboard_certs: Path, history_db: tuple[Path, Sample],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A password over 1 KiB is a wrong password at once: refused (401) without an
    scrypt check (32 MiB and about 0.1 s each), where one of 1 KiB is checked; the
    dashboard's own application, in-process, counting the checks it makes."""
    checks: list[int] = []

    def counted(password: str, stored: str) -> bool:
        checks.append(len(password))
        return passwords.verify_password(password, stored)

    monkeypatch.setattr(auth, "verify_password", counted)
    settings = build(["--dashboard-dir", str(dashboard_certs / "dashboard"), "--history",
                      str(history_db[0])], {})
    dash = open_dashboard(settings)
    try:
        with served(make_app(dash), Certificate(settings.tls_cert, settings.tls_key)) as base:
            client = WebClient(base, dashboard_certs / "dashboard-ca.crt")
            r = client.login("x" * (MAX_PASSWORD + 1))
            assert r.status == 401 and "Wrong password." in r.text
            assert checks == []
            assert client.login("x" * MAX_PASSWORD).status == 401
            assert checks == [MAX_PASSWORD]
            password = (dashboard_certs / "dashboard" / "password").read_text().strip()
            assert client.login(password).status == 303
            assert checks == [MAX_PASSWORD, len(password)]
    finally:
        dash.close()


def test_a_logged_in_user_is_served_while_logins_and_huge_bodies_pour_in(
        own_dashboard: DashboardProcess) -> None:
    """20 wrong passwords at once from 4 addresses (as many scrypt checks as the rate
    limit lets through, run one after another) and posts of 100 MiB bodies: meanwhile
    a logged-in user's requests are answered in well under a second each, while the
    checks are still queued."""
    d = own_dashboard
    user = d.client()
    assert user.login(d.password).status == 303
    attackers = [d.client(source=f"127.0.0.{2 + n // 5}") for n in range(20)]
    forms = [a.get("/login").csrf for a in attackers]
    answered: list[float] = []

    def guess(n: int) -> int:
        status = attackers[n].post("/login", {"csrf": forms[n], "password": f"wrong-{n}",
                                              "next": "/"}).status
        answered.append(time.monotonic())
        return status

    with ThreadPoolExecutor(24) as pool:
        began = time.monotonic()
        guesses = [pool.submit(guess, n) for n in range(20)]
        huge = [pool.submit(_post_huge, d, "/login") for _ in range(4)]
        time.sleep(0.3)
        took = []
        for _ in range(5):
            start = time.monotonic()
            assert user.get("/api/now").status == 200
            took.append(time.monotonic() - start)
        served_by = time.monotonic()
        assert [g.result() for g in guesses] == [401] * 20
        assert all(h.result()[0].startswith(b"HTTP/1.1 413") for h in huge)
    assert max(answered) - began > 1.0, "the checks were not queued"
    assert served_by < max(answered), "the user was not served while checks were queued"
    assert max(took) < 0.5, took


def test_a_new_password_ends_every_session_without_restart(
        own_dashboard: DashboardProcess) -> None:
    """`homewatch dashboard password` (what `make dashboard-password` runs) while the
    dashboard runs: every session ends at once, the old password is refused and the new
    one works, without a restart."""
    d = own_dashboard
    user = d.client()
    assert user.login(d.password).status == 303
    old = d.password
    homewatch_cli(d.directory.parent, "dashboard", "password")
    new = d.password
    assert new != old
    assert user.get("/api/now").status == 401
    assert d.client().login(old).status == 401
    assert d.client().login(new).status == 303
    assert "password hash file" in d.log() and "changed" in d.log()


def test_a_damaged_password_hash_lets_nobody_in_and_says_why(
        own_dashboard: DashboardProcess) -> None:
    """A damaged hash file ends every session and refuses every login with 503 (not a
    wrong password: the user is not to blame), and the log names the file and the fix."""
    d = own_dashboard
    user = d.client()
    assert user.login(d.password).status == 303
    (d.directory / "password.hash").write_text("scrypt$15$8$1$garbage\n")
    assert user.get("/api/now").status == 401
    r = d.client().login(d.password)
    assert r.status == 503 and "cannot check passwords" in r.text
    assert "password.hash is damaged" in d.log() and "make dashboard-password" in d.log()


def test_a_password_hash_fixed_in_place_with_its_mtime_kept_is_seen(
        own_dashboard: DashboardProcess) -> None:
    """A hash rewritten in place, inode, size and mtime kept, is seen: damaged, then fixed."""
    d = own_dashboard
    path = d.directory / "password.hash"
    good = path.read_bytes()
    before = path.stat()
    for content in (good.replace(b"scrypt$", b"xcrypt$", 1), good):  # damaged, repaired
        with open(path, "r+b") as f:
            f.write(content)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns)
        expected = 303 if content == good else 503
        assert d.client().login(d.password).status == expected


def test_presence_timelines_are_worked_out_in_the_background_as_it_starts(
        own_dashboard: DashboardProcess) -> None:
    """Right after it starts, before any request, the dashboard works out each person's
    presence timeline in the background (the log says how many its reader keeps), so
    the first presence request only adds what is new; what it answers is what a reader
    that worked out nothing ahead answers."""
    d = own_dashboard
    assert _eventually(lambda: "presence timelines ready" in d.log()), d.log()
    log = d.log()
    assert '"GET ' not in log and '"POST ' not in log  # no request came first
    with open_reader(d.history) as cold:
        people = cold.people()
        expected = cold.presence(time.time() - RANGES["1y"], time.time() + 60)
    assert len(people) == 3 and cold.timelines == len(people)
    assert f"presence timelines ready: {len(people)} of {len(people)} people" in log
    user = d.client()
    assert user.login(d.password).status == 303
    answer = user.get("/api/presence?range=1y").json()
    got = {p["name"]: p["intervals"] for p in answer["people"]}
    assert sorted(got) == sorted(people)
    for name in people:  # the same stretches (the first clipped to each range's start)
        assert [(i["end"], i["state"]) for i in got[name]] == [
            (i.end, i.state) for i in expected[name]], name


def test_a_history_unreadable_while_warming_is_logged_once_and_stops_nothing(
        history_db: tuple[Path, Sample], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Working out the timelines ahead on a history that cannot be read: its reason is
    logged once, the work is left to the first request, and nothing is raised."""
    copy = tmp_path / "history.db"
    shutil.copy2(history_db[0], copy)
    history = History(lambda: open_reader(copy))
    try:
        with open(copy, "r+b") as f:  # the same file, its header destroyed
            f.write(b"\0" * 100)
        with caplog.at_level(logging.INFO, logger="dashboard.app"):
            asyncio.run(history.warm())
    finally:
        history.close()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("file is not a database" in line for line in lines) == 1, lines
    assert "presence timelines will be worked out at the first request instead" in lines
    assert not any("presence timelines ready" in line for line in lines)


def test_an_unreadable_history_is_a_503_saying_why_until_it_is_back(
        own_dashboard: DashboardProcess) -> None:
    """A history file damaged under the running dashboard: pages and API answer 503 with
    SQLite's reason (one log line, no traceback), login still works, and once the file
    is whole again everything answers as before, without a restart."""
    user = own_dashboard.client()
    assert user.login(own_dashboard.password).status == 303
    intact = own_dashboard.history.read_bytes()
    with open(own_dashboard.history, "r+b") as f:  # the same file, its header destroyed
        f.write(b"\0" * 100)
    r = user.get("/api/now")
    assert r.status == 503 and "file is not a database" in r.json()["error"]
    page = user.get("/devices")
    assert page.status == 503 and "The history cannot be read right now" in page.text
    assert user.get("/metrics").status == 503
    assert own_dashboard.client().login(own_dashboard.password).status == 303
    log = own_dashboard.log()
    assert log.count("file is not a database") == 1 and "Traceback" not in log
    own_dashboard.history.write_bytes(intact)
    assert user.get("/api/now").json()["pis"]
    assert "the history database can be read again" in own_dashboard.log()


def _served_serial(d: DashboardProcess) -> int:
    """The serial number of the certificate a new connection gets."""
    context = ssl.create_default_context(cafile=str(d.ca))
    with (socket.create_connection((d.bind, d.port), timeout=5) as s,
          context.wrap_socket(s, server_hostname=d.bind) as tls):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(certificate: Path) -> int:
    return x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number


def _eventually(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _renewed(dashboard_certs: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    """A new dashboard certificate and key (PEM) from the same dashboard CA."""
    renewed = tmp_path / "renewed"
    shutil.copytree(dashboard_certs, renewed)
    gen_certs(renewed, "--renew-server")
    return ((renewed / "dashboard" / "server.crt").read_bytes(),
            (renewed / "dashboard" / "server.key").read_bytes())


def test_a_certificate_that_does_not_fit_its_key_leaves_the_previous_one_served(
        own_dashboard: DashboardProcess, dashboard_certs: Path, tmp_path: Path) -> None:
    """A new certificate met with the old key fails to load: the old one is still served."""
    d = own_dashboard
    cert, key = d.directory / "server.crt", d.directory / "server.key"
    old = _serial(cert)
    assert _served_serial(d) == old
    new_cert, new_key = _renewed(dashboard_certs, tmp_path)
    cert.write_bytes(new_cert)  # the renewal's first half: the old key does not fit it
    assert _serial(cert) != old
    assert _eventually(lambda: "still serving the previous certificate" in d.log()), d.log()
    assert _served_serial(d) == old
    key.write_bytes(new_key)
    assert _eventually(lambda: _served_serial(d) == _serial(cert)), d.log()
    assert "reloaded" in d.log()


def test_a_failed_certificate_load_is_retried_and_a_key_fixed_in_place_is_seen(
        own_dashboard: DashboardProcess, dashboard_certs: Path, tmp_path: Path) -> None:
    """After a failed load, a key written in place with its inode, size and mtime kept is served."""
    d = own_dashboard
    cert, key = d.directory / "server.crt", d.directory / "server.key"
    old = _serial(cert)
    new_cert, new_key = _renewed(dashboard_certs, tmp_path)
    (d.directory / "server.crt.new").write_bytes(new_cert)  # whole at once: one failure
    os.replace(d.directory / "server.crt.new", cert)
    assert _eventually(lambda: "still serving the previous certificate" in d.log()), d.log()
    before = key.stat()
    with open(key, "r+b") as f:  # as a restore from a backup or `cp --preserve` may
        f.write(new_key)
        f.truncate()
    os.utime(key, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = key.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert _eventually(lambda: _served_serial(d) == _serial(cert) != old), d.log()
    assert d.log().count("still serving the previous certificate") == 1


# -- start-up errors ---------------------------------------------------------------------

def _start(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_m("dashboard", *args), cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=60)


def test_missing_or_bad_files_stop_it_with_one_clear_line(
        dashboard_certs: Path, history_db: tuple[Path, Sample], tmp_path: Path) -> None:
    """A missing certificate, key, password hash or database, an empty hash file or a
    key that does not fit: exit 2 and one line on stderr naming the file and the fix."""
    good = dashboard_certs / "dashboard"
    base = ["--history", str(history_db[0]), "--port", str(free_port()), "--bind",
            "127.0.0.1"]
    for missing in ("server.crt", "server.key", "password.hash"):
        directory = tmp_path / f"without-{missing}"
        shutil.copytree(good, directory)
        (directory / missing).unlink()
        r = _start(["--dashboard-dir", str(directory), *base], tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and str(directory / missing) in r.stderr, r.stderr
        assert "make up" in r.stderr
    r = _start(["--dashboard-dir", str(good), *base, "--history", str(tmp_path / "no.db")],
               tmp_path)
    assert r.returncode == 2 and r.stderr == (
        f"dashboard: error: history database not found: {tmp_path / 'no.db'} (start the "
        "subscriber first (it makes the database), or set --history)\n")
    empty = tmp_path / "empty"
    shutil.copytree(good, empty)
    (empty / "password.hash").write_text("\n")
    r = _start(["--dashboard-dir", str(empty), *base], tmp_path)
    assert r.returncode == 2 and r.stderr == (
        f"dashboard: error: password hash file {empty / 'password.hash'} is empty\n")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(good, mismatched)
    shutil.copy(dashboard_certs / "ca.key", mismatched / "server.key")
    r = _start(["--dashboard-dir", str(mismatched), *base], tmp_path)
    assert r.returncode == 2 and "TLS certificate" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_a_taken_port_is_exit_1_with_one_line(dashboard: DashboardProcess,
                                              tmp_path: Path) -> None:
    """Another program on the port: exit 1, one line naming the address."""
    r = _start(["--dashboard-dir", str(dashboard.directory), "--history",
                str(dashboard.history), "--bind", dashboard.bind, "--port",
                str(dashboard.port)], tmp_path)
    assert r.returncode == 1
    assert r.stderr == (f"dashboard: error: cannot listen on {dashboard.bind}:"
                        f"{dashboard.port}: Address already in use\n"), r.stderr


def test_settings_come_from_defaults_env_and_cli_and_hold_no_secret(
        dashboard_certs: Path, tmp_path: Path) -> None:
    """--show-settings: defaults (0.0.0.0:8443, certs/dashboard, the subscriber's
    history.db), HOMEWATCH_* env over them, options over env; paths only."""
    env = clean_env({"HOMEWATCH_PORT": "9443", "HOMEWATCH_BIND": "127.0.0.1",
                     "HOMEWATCH_DASHBOARD_DIR": str(dashboard_certs / "dashboard")})
    r = subprocess.run(python_m("dashboard", "--show-settings", "--port", "10443"),
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    settings = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert settings["port"] == "10443" and settings["bind"] == "127.0.0.1"
    assert settings["password_hash"] == str(dashboard_certs / "dashboard" / "password.hash")
    password = (dashboard_certs / "dashboard" / "password").read_text().strip()
    assert password not in r.stdout
    r = subprocess.run(python_m("dashboard", "--show-settings"), cwd=tmp_path,
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    defaults = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert (defaults["bind"], defaults["port"]) == ("0.0.0.0", "8443")
    assert defaults["tls_cert"] == "certs/dashboard/server.crt"
    assert defaults["history"].endswith("/homewatch/subscriber/history.db")
    r = subprocess.run(python_m("dashboard", "--port", "http"), cwd=tmp_path,
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("dashboard: error: --port:")



def test_server_timing_is_said_to_a_logged_in_user_only(dashboard: DashboardProcess,
                                                        user: WebClient) -> None:
    """A logged-in request carries `Server-Timing: app;dur=<ms>` (what the bench reads);
    an anonymous one does not (it learns nothing about the server's work)."""
    timing = user.get("/api/now").headers["Server-Timing"]
    assert re.fullmatch(r"app;dur=[0-9]+\.[0-9]{2}", timing), timing
    assert "Server-Timing" not in dashboard.client().get("/api/now").headers


def test_a_password_sent_with_its_files_line_end_logs_in(dashboard: DashboardProcess) -> None:
    """The password as `curl --data-urlencode password@certs/dashboard/password` sends it
    (with the file's line end) logs in: stored passwords never end in one (only line ends
    are dropped: homewatch.dashboard_access strips the same when it stores one)."""
    client = dashboard.client()
    assert client.login(dashboard.password + "\n").status == 303
    assert client.get("/api/now").status == 200


def test_the_readmes_curl_login_works(dashboard: DashboardProcess, dashboard_certs: Path,
                                      tmp_path: Path) -> None:
    """The README's curl lines (login form, post, API) give /api/now's JSON."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("keep\nthe session cookie", 1)[1].split("```sh\n", 1)[1]
    block = block.split("```", 1)[0]
    (tmp_path / "certs").symlink_to(dashboard_certs)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60,
                       env=clean_env({"CA": "certs/dashboard-ca.crt", "URL": dashboard.base}))
    assert r.returncode == 0, r.stderr
    assert {"at", "people", "pis"} <= set(json.loads(r.stdout))


def test_the_apis_records_are_what_dataclasses_asdict_makes_of_them() -> None:
    """The API's quick record-to-dict (no deep copy) gives exactly what
    ``dataclasses.asdict`` gives for every record the API serves: a record that ever
    holds another dataclass makes this fail rather than the API's JSON."""
    import dataclasses

    from dashboard import api
    from homewatch.history import AlertRecord, Bucket, Interval, PersonNow, PiNow
    records = [
        PiNow(name="pi-a", online=True, status_since=1.0, temperature=20.5,
              temperature_at=2.0, last_reading_at=3.0, scanner_state="ok",
              scanner_detail="", simulated="demo", room="Kitchen"),
        PersonNow(name="Anna", state="home", home=True, since=1.0, seen_by=("pi-a",),
                  last_seen=2.0, unconfirmed_by=(), simulated=None, room="Kitchen",
                  room_since=1.0),
        AlertRecord(id=1, at=1.0, rule="r", kind="arrives", message="m", subject="Anna",
                    delivery="delivered", delivered_at=2.0, simulated=None),
        Bucket(start=0.0, end=300.0, min=20.0, max=21.0, mean=20.5, count=30),
        Interval(start=0.0, end=None, state="home", seen_by=("pi-a", "pi-b")),
    ]
    for record in records:
        for field in dataclasses.fields(record):
            assert not dataclasses.is_dataclass(getattr(record, field.name)), field
        assert api.asdict(record) == dataclasses.asdict(record)
        assert json.dumps(api.asdict(record)) == json.dumps(dataclasses.asdict(record))
