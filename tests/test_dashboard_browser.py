"""The dashboard in a real browser (Debian's Chromium through Playwright) against the real
dashboard process: what a person sees, on a desktop and on a phone. Each test also
asserts that no request left the dashboard's origin, nothing went wrong in the console
and no dialog opened (a script from a Pi's name would show as one). Screenshots of each
page go to tests/artifacts/.

The README's picture of the Now page, docs/img/dashboard-now.png, is
tests/artifacts/readme-now.png from
test_the_readme_picture_of_now_shows_rooms_people_and_recent_alerts (a plain household,
tests/history_sample.py's write_household; the other tests' sample is full of hostile
names), copied there by hand after a change to the Now page:

    python -m pytest tests/test_dashboard_browser.py -k readme_picture
    cp tests/artifacts/readme-now.png docs/img/dashboard-now.png
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, expect

from dashboard.auth import BROWSER_COOKIE, BROWSER_LIFETIME, SESSION_COOKIE
from homewatch.history import RANGES
from tests import history_sample as hs
from tests.browser import ARTIFACTS, PHONE, Visit, chromium, visit
from tests.helpers import ROOT
from tests.history_sample import Sample
from tests.web import DashboardProcess, age_bounds

ZONE = "Asia/Kolkata"  # UTC+05:30: local times cannot pass for UTC by accident


@pytest.fixture(scope="module")
def browser(dashboard: DashboardProcess) -> Iterator[Browser]:
    with chromium(dashboard.directory / "server.crt") as b:
        yield b


@pytest.fixture(scope="module")
def household(dashboard: DashboardProcess,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    """A second dashboard (same certificate and password) over a plain household's
    history: the README's picture."""
    from homewatch.history.sqlite import SqliteHistory

    db = tmp_path_factory.mktemp("household") / "history.db"
    writer = SqliteHistory(db)
    try:
        hs.write_household(writer, time.time())
    finally:
        writer.close()
    process = DashboardProcess(directory=dashboard.directory, history=db, ca=dashboard.ca,
                               workdir=tmp_path_factory.mktemp("household-dashboard")).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def logged_in(browser: Browser, dashboard: DashboardProcess) -> Iterator[Visit]:
    """A fresh user, logged in, in India's time zone; clean when the test ends."""
    with visit(browser, dashboard.base, timezone_id=ZONE) as v:
        v.login(dashboard.password)
        yield v
        v.assert_clean()


def test_wrong_password_is_refused(browser: Browser, dashboard: DashboardProcess) -> None:
    """A wrong password keeps the user on the login page with a message, and the pages
    stay closed."""
    with visit(browser, dashboard.base) as v:
        v.page.goto(dashboard.base + "/devices")
        assert v.page.url.endswith("/login?next=/devices")
        v.page.fill("#password", "not the password")
        v.page.click("button[type=submit]")
        expect(v.page.locator("p.error")).to_have_text("Wrong password.")
        v.screenshot("login-refused")
        v.page.goto(dashboard.base + "/")
        assert v.page.url.endswith("/login")
        # Chromium reports the refused login's status (401) in the console: that one only.
        refused = [e for e in v.console_errors if "status of 401" in e and "/login'" in e]
        assert len(refused) == 1
        v.console_errors.remove(refused[0])
        v.assert_clean()


def test_now_page_shows_the_pis_temperature_and_the_people(
        logged_in: Visit, history_db: tuple[Path, Sample]) -> None:
    """Now: the kitchen Pi's temperature in °C, online, its scanner ok; every person
    home, away or not seen (its Pi offline) with names shown as text; the demo Pi and its
    person marked; times in the browser's own time zone."""
    page = logged_in.page
    kitchen = page.locator("li.pi", has=page.locator("h3 .name", has_text=hs.KITCHEN))
    expect(kitchen.locator(".temperature")).to_have_text("21.5 °C")
    expect(kitchen.locator(".badge")).to_have_text("online")
    evil = page.locator("li.pi", has=page.get_by_text(hs.EVIL_PI, exact=True))
    expect(evil.locator(".badge")).to_have_text("offline")
    expect(evil.locator(".scanner")).to_have_text("error")
    anna = page.locator("li.person", has=page.get_by_text(hs.ANNA, exact=True))
    expect(anna.locator(".badge")).to_have_text("home")
    expect(anna).to_contain_text("Seen by" + hs.KITCHEN)
    frank = page.locator("li.person", has=page.get_by_text(hs.FRANK, exact=True))
    expect(frank.locator(".badge")).to_have_text("away")
    expect(frank.locator(".sim")).to_have_text("demo")
    unseen = page.locator("li.person", has=page.get_by_text(hs.EVIL_PERSON, exact=True))
    expect(unseen.locator(".badge")).to_have_text("not seen")
    expect(unseen.locator(".unseen")).to_contain_text(hs.EVIL_PI + " offline")
    expect(page.locator(".demo-banner")).to_contain_text("demo-pi")
    as_of = page.locator(".as-of time")
    at = float(as_of.get_attribute("data-t") or 0)
    local = datetime.fromtimestamp(at, ZoneInfo(ZONE))
    expect(as_of).to_contain_text(local.strftime("%H:%M"))
    expect(anna).to_contain_text("2 h ago")
    last_reading = kitchen.locator("dt:text-is('Last reading') + dd")
    expect(last_reading).to_have_text(re.compile(r"\d+ (s|min|h) ago"))
    low, high = age_bounds(last_reading.inner_text())
    age = time.time() - (history_db[1].now - 30)  # the kitchen's latest reading
    assert low - 15 <= age < high + 15, (last_reading.inner_text(), age)
    logged_in.screenshot("now")


@pytest.mark.parametrize("range_name", list(RANGES))
def test_history_draws_every_chart_with_real_data(logged_in: Visit,
                                                  range_name: str) -> None:
    """History for each range: a temperature chart per Pi (min-max band, mean line with
    many points, °C on the axis, demo data marked) and the presence timeline; hovering
    shows a value."""
    logged_in.goto(f"/history?range={range_name}")
    states = logged_in.wait_for_charts()
    assert states == {hs.KITCHEN: "drawn", hs.EVIL_PI: "drawn", hs.DEMO_PI: "drawn",
                      "presence": "drawn"}
    page = logged_in.page
    chart = page.locator("figure.temperature", has=page.get_by_text(hs.KITCHEN, exact=True))
    means = [chart.locator("path.mean").nth(i).get_attribute("d") or ""
             for i in range(chart.locator("path.mean").count())]
    assert max(len(re.findall(r"[ML]", d)) for d in means) > 40, means
    assert chart.locator("path.band").count() >= 1
    expect(chart.locator(".grid text").first).to_contain_text("°C")
    for figure in page.locator("figure.temperature").all():  # evenly spaced lines read
        values = [float(t.split()[0]) for t in figure.locator(".grid text").all_text_contents()]
        assert len({round(abs(b - a), 6) for a, b in itertools.pairwise(values)}) == 1, values
    assert chart.locator(".axis text").count() >= 3
    demo = page.locator("figure.temperature", has=page.get_by_text(hs.DEMO_PI, exact=True))
    expect(demo.locator("text.sim-mark")).to_have_text("DEMO DATA (invented)")
    assert demo.locator("g.sim-data path.mean").count() >= 1
    presence = page.locator("figure.presence")
    expect(presence.locator("text.person", has_text=hs.ANNA)).to_have_count(1)
    assert presence.locator("rect.home").count() >= 1
    assert presence.locator("rect.notseen").count() >= 1  # seen only by a Pi now offline
    expect(presence.locator("figcaption")).to_contain_text("not seen (Pi offline)")
    chart.scroll_into_view_if_needed()
    box = chart.locator("svg").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2)
    tip = chart.locator(".tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(re.compile(r"mean -?\d+\.\d °C"))
    logged_in.screenshot(f"history-{range_name}")


def test_the_24_hour_charts_hours_are_the_browsers_local_hours(logged_in: Visit) -> None:
    """The 24 h chart's time axis in India's time zone (UTC+05:30, so no UTC hour can
    pass for a local one): every tick stands at a whole local hour, where the data's
    time range puts it, and is labelled with that hour (the weekday at midnight)."""
    page = logged_in.page
    with page.expect_response(lambda r: r.url.endswith(
            f"/api/temperature?device={hs.KITCHEN}&range=24h")) as answer:
        logged_in.goto("/history?range=24h")
    data = answer.value.json()
    assert logged_in.wait_for_charts()[hs.KITCHEN] == "drawn"
    chart = page.locator("figure.temperature", has=page.get_by_text(hs.KITCHEN, exact=True))
    grid = chart.locator(".grid line").first  # from the plot's left edge to its right
    left, right = (float(grid.get_attribute(a) or "nan") for a in ("x1", "x2"))
    ticks = chart.locator(".axis.x line")
    labels = chart.locator(".axis.x text").all_text_contents()
    assert ticks.count() == len(labels) >= 4, labels
    shown = []
    for i, label in enumerate(labels):
        px = float(ticks.nth(i).get_attribute("x1") or "nan")
        t = data["start"] + (px - left) / (right - left) * (data["end"] - data["start"])
        local = datetime.fromtimestamp(round(t / 60) * 60, ZoneInfo(ZONE))
        assert local.minute == 0, (label, local)
        shown.append((label, local.strftime("%a" if local.hour == 0 else "%H:%M")))
    assert [label for label, _ in shown] == [want for _, want in shown], shown
    assert all(re.fullmatch(r"\d\d:00|[A-Z][a-z]{2}", label) for label in labels), labels


def test_devices_page_shows_keys_certificates_and_rejections(
        logged_in: Visit, history_db: tuple[Path, Sample]) -> None:
    """Devices: the kitchen Pi's key age, when it was first and last seen (in the
    browser's own time zone, with how long ago) and rejected messages by reason; a Pi
    known only from the certificate inventory with its certificate's expiry, never seen;
    rejections from no known device; the server certificates' expiry."""
    logged_in.goto("/devices")
    page = logged_in.page
    kitchen = page.locator("li.device", has=page.get_by_text(hs.KITCHEN, exact=True))
    expect(kitchen).to_contain_text(f"Key age{hs.KEY_AGE_DAYS} d")
    sample_now = history_db[1].now
    for label, t in (("Last seen", sample_now - 30), ("First seen", sample_now - 366 * hs.DAY)):
        shown = kitchen.locator(f"dt:text-is('{label}') + dd time")
        local = datetime.fromtimestamp(t, ZoneInfo(ZONE))  # as Chromium's en-GB says it
        expect(shown).to_have_text(f"{local.day} {local:%b %Y}, {local:%H:%M}")
        assert float(shown.get_attribute("data-t") or 0) == pytest.approx(t, abs=0.01)
    ago = kitchen.locator("dt:text-is('Last seen') + dd .age")
    low, high = age_bounds(ago.inner_text())
    assert low - 15 <= time.time() - (sample_now - 30) < high + 15, ago.inner_text()
    expect(kitchen.locator(".reasons")).to_contain_text("decrypt 3")
    garage = page.locator("li.device", has=page.get_by_text("pi-garage", exact=True))
    expect(garage).to_contain_text("Last seennever")
    expect(garage.locator(".expiry.ok")).to_contain_text("(in 2 y)")
    expect(page.locator("#unknown + .reasons")).to_contain_text("unknown-device 7")
    expect(page.locator("p.certs .expiry.ok")).to_have_count(3)
    logged_in.screenshot("devices")


def test_on_a_phone_every_page_fits_and_charts_answer_a_tap(
        browser: Browser, dashboard: DashboardProcess) -> None:
    """At 375 px wide no page scrolls sideways; charts are drawn to the width and a tap
    shows a value."""
    with visit(browser, dashboard.base, viewport=PHONE, timezone_id=ZONE,
               has_touch=True) as v:
        v.login(dashboard.password)
        for path, name in (("/", "phone-now"), ("/history?range=24h", "phone-history"),
                           ("/history?range=1y", "phone-history-1y"),
                           ("/devices", "phone-devices")):
            v.goto(path)
            if "history" in path:
                assert set(v.wait_for_charts().values()) == {"drawn"}
            assert v.horizontal_overflow() == 0, path
            v.screenshot(name)
        v.goto("/history?range=7d")
        v.wait_for_charts()
        chart = v.page.locator("figure.temperature").first
        chart.scroll_into_view_if_needed()
        box = chart.locator("svg").bounding_box()
        assert box is not None and box["width"] <= PHONE["width"]
        v.page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(chart.locator(".tip")).to_contain_text("°C")
        v.assert_clean()


def test_chromium_keeps_the_known_browser_cookie_across_logout(
        browser: Browser, dashboard: DashboardProcess) -> None:
    """Chromium stores the __Host- known-browser cookie (Secure, HttpOnly, Strict, 90 days)."""
    with visit(browser, dashboard.base) as v:
        v.login(dashboard.password)
        with v.page.expect_navigation():
            v.page.click(".logout button")
        kept = [c for c in v.page.context.cookies() if c["name"] == BROWSER_COOKIE]
        assert len(kept) == 1, v.page.context.cookies()
        cookie = kept[0]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/" and cookie["domain"] == dashboard.bind
        assert cookie["expires"] == pytest.approx(time.time() + BROWSER_LIFETIME, abs=120)
        assert SESSION_COOKIE not in {c["name"] for c in v.page.context.cookies()}
        v.assert_clean()


def test_logout_closes_the_pages(browser: Browser, dashboard: DashboardProcess) -> None:
    """Log out: back on the login page, and the pages ask for the password again."""
    with visit(browser, dashboard.base) as v:
        v.login(dashboard.password)
        with v.page.expect_navigation():
            v.page.click(".logout button")
        assert v.page.url.endswith("/login")
        v.page.goto(dashboard.base + "/history")
        assert v.page.url.endswith("/login?next=/history")
        v.assert_clean()


def test_the_readme_picture_of_now_shows_rooms_people_and_recent_alerts(
        browser: Browser, household: DashboardProcess) -> None:
    """The README's picture of Now (a plain household): each Pi's card with its room and
    temperature, the people home with their rooms, the demo Pi and its person marked,
    the recent alerts newest first; it fits the desktop window without scrolling
    sideways. Kept as tests/artifacts/readme-now.png (see the module's docstring)."""
    with visit(browser, household.base) as v:
        v.login(household.password)
        page = v.page
        for pi, celsius in hs.HOUSEHOLD_NOW.items():
            card = page.locator("li.pi", has=page.locator("h3 .name", has_text=pi))
            expect(card.locator(".temperature")).to_have_text(f"{celsius:.1f} °C")
            expect(card.locator(".badge")).to_have_text("online")
            expect(card.locator("dd .room")).to_have_text(hs.HOUSEHOLD_PIS.get(pi, pi))
        for person, room in ((hs.ANNAS_WATCH, "Kitchen"), (hs.BENS_PHONE, "Bedroom")):
            card = page.locator("li.person", has=page.get_by_text(person, exact=True))
            expect(card.locator(".badge")).to_have_text("home")
            expect(card.locator("h3 .room")).to_have_text(f"· {room}")
        frank = page.locator("li.person", has=page.get_by_text(hs.FRANK, exact=True))
        expect(frank.locator(".sim")).to_have_text("demo")
        expect(page.locator("ul.alerts .rule")).to_have_text(
            [f"{hs.ANNAS_WATCH} arrives", "demo warm", "Bedroom below 17 °C"])
        expect(page.locator("ul.alerts .delivery")).to_have_text(["sent", "no webhook", "sent"])
        assert v.horizontal_overflow() <= 0
        path = v.screenshot("readme-now")
        assert path == ARTIFACTS / "readme-now.png"
        assert (ROOT / "docs" / "img" / "dashboard-now.png").is_file()  # the README's copy
        v.assert_clean()
