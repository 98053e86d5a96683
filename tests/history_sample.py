"""A history that exercises every part of the dashboard, written through the real
history writer: a year of one Pi's temperatures, a Pi whose name is markup, a demo Pi,
people whose names are markup and quotes, comings and goings, scanner and availability
changes, rejected messages, a rotated key and two alerts (one caused by demo data).
Each reading is received when it was taken (:class:`Received`), so a Pi's first and
last seen are the sample's times, not the moments the test wrote them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from homewatch.history import HistoryWriter, Sighting

DAY = 86400.0
KITCHEN = "pi-kitchen"
EVIL_PI = "<script>alert(1)</script>"
DEMO_PI = "demo-pi"
ANNA = "Anna \"Annie\" <b>O'Brien</b>"
EVIL_PERSON = "<img src=x onerror=alert(2)>"
FRANK = "Franks Phone"
KITCHEN_NOW = 21.5  # the kitchen's latest temperature
SCANNER_ERROR = "<i>no adapter</i> & \"hci0\""
KITCHEN_ROOM = "Kitchen <em>&</em> \"dining\""  # a room name is markup too
EVIL_ROOM = "<script>alert(3)</script>"
KEY_AGE_DAYS = 41
EVIL_ALERT = "<b>kitchen</b> & \"hot\""  # an alert message quoting a Pi's room name
REJECTED = {(KITCHEN, "decrypt"): 3, (KITCHEN, "replay"): 1, (None, "unknown-device"): 7}


@dataclass
class Received:
    """The writer's receive clock (``SqliteHistory(clock=...)``): the time of the
    reading being written."""

    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass(frozen=True)
class Sample:
    now: float  # the sample's present: its latest readings are just before it

    def kitchen(self, t: float) -> float:
        """A daily and a yearly swing, in °C."""
        return round(20 + 2 * math.sin(t / DAY * 2 * math.pi)
                     + 4 * math.sin(t / (365 * DAY) * 2 * math.pi), 2)


def write(writer: HistoryWriter, now: float, received: Received) -> Sample:
    """Write the sample ending at ``now`` with ``writer``, whose clock is ``received``;
    commits once per simulated day."""
    sample = Sample(now)
    start = now - 366 * DAY
    t = start
    while t < now - 120:  # the kitchen: every 15 minutes for a year
        received.t = t
        writer.temperature(KITCHEN, t, sample.kitchen(t))
        if t >= now - 8 * DAY:
            writer.temperature(DEMO_PI, t, 24.0 + math.cos(t / DAY * 2 * math.pi),
                               simulated="demo")
        if t >= now - 2 * DAY:
            writer.temperature(EVIL_PI, t, 17.0)
        if int((t - start) // 900) % 96 == 95:
            writer.commit()
        t += 900
    received.t = now - 30
    writer.temperature(KITCHEN, now - 30, KITCHEN_NOW)
    writer.key_updated(KITCHEN, now - KEY_AGE_DAYS * DAY)
    writer.availability(KITCHEN, now - 3 * DAY, True)
    writer.availability(DEMO_PI, now - 8 * DAY, True)
    writer.availability(EVIL_PI, now - 2 * DAY, True)
    writer.availability(EVIL_PI, now - 3600, False)
    received.t = now - 3 * DAY
    writer.scanner(KITCHEN, now - 3 * DAY, "ok")
    received.t = now - 2 * DAY
    writer.scanner(EVIL_PI, now - 2 * DAY, "error", SCANNER_ERROR)
    for hours, home in ((72, True), (60, False), (48, True), (36, False), (2, True)):
        at = received.t = now - hours * 3600
        writer.presence(KITCHEN, at, [Sighting(name=ANNA, state="home" if home else "away",
                                               last_seen=at if home else at - 180)])
    writer.pi_room(KITCHEN, now - 3 * DAY, KITCHEN_ROOM)
    writer.pi_room(EVIL_PI, now - 2 * DAY, EVIL_ROOM)
    writer.person_room(ANNA, now - 2 * 3600, KITCHEN_ROOM, KITCHEN)
    writer.person_room(EVIL_PERSON, now - DAY, EVIL_ROOM, EVIL_PI)
    received.t = now - DAY
    writer.presence(EVIL_PI, now - DAY, [Sighting(name=EVIL_PERSON, state="home",
                                                  last_seen=now - DAY)])
    received.t = now - 3 * 3600
    writer.presence(DEMO_PI, now - 3 * 3600, [Sighting(name=FRANK, state="away",
                                                       last_seen=now - 3 * 3600 - 180)],
                    simulated="demo")
    for (device, reason), n in REJECTED.items():
        for _ in range(n):
            writer.rejected(device, reason, now - 600)
    writer.commit()
    alert = writer.alert(f"{ANNA} arrives", "arrives", f"{ANNA} arrived", now - 2 * 3600,
                         ANNA)
    writer.alert_delivery(alert, "delivered", now - 2 * 3600 + 1)
    writer.alert("hot", "temperature-above", f"{EVIL_ALERT}: 30.0 °C [demo data, not "
                 "measured]", now - 1800, DEMO_PI, delivery="none", simulated="demo")
    writer.commit()
    return sample


# -- a plain household, for the README's picture of the Now page ------------------------

HOUSEHOLD_PIS = {"pi-kitchen": "Kitchen", "pi-bedroom": "Bedroom"}  # each Pi's room
HOUSEHOLD_NOW = {"pi-kitchen": 21.4, "pi-bedroom": 18.6, DEMO_PI: 23.7}
ANNAS_WATCH = "Annas Watch"
BENS_PHONE = "Bens Phone"


def write_household(writer: HistoryWriter, now: float) -> None:
    """Two days of a home with two Pis in two rooms and the demo Pi: two people home,
    each in a room (one heard by both Pis), the demo's person away, and recent alerts
    (an arrival sent to the webhook, a cold bedroom, the demo's invented one). No
    hostile names: this is the README's picture (tests/test_dashboard_browser.py)."""
    start = now - 2 * DAY
    t = start
    while t < now - 60:
        for pi, latest in HOUSEHOLD_NOW.items():
            swing = math.sin((t - now) / DAY * 2 * math.pi)
            writer.temperature(pi, t, round(latest + 1.5 * swing, 2),
                               simulated="demo" if pi == DEMO_PI else None)
        t += 900
    for i, pi in enumerate(HOUSEHOLD_NOW):
        simulated = "demo" if pi == DEMO_PI else None
        writer.temperature(pi, now - 40 - 50 * i, HOUSEHOLD_NOW[pi], simulated=simulated)
        writer.availability(pi, start + 600 * i, True)
        writer.scanner(pi, start + 600 * i, "ok", simulated=simulated)
        writer.key_updated(pi, now - (90 - 20 * i) * DAY)
    for pi, room in HOUSEHOLD_PIS.items():
        writer.pi_room(pi, start, room)
    writer.pi_room(DEMO_PI, start, DEMO_PI)  # (the demo's room is its name)
    anna_home, ben_home = now - 40 * 60, now - 5 * 3600
    ben = Sighting(name=BENS_PHONE, state="home", last_seen=now - 90)
    writer.presence("pi-bedroom", ben_home, [ben])
    writer.person_room(BENS_PHONE, ben_home, "Bedroom", "pi-bedroom")
    writer.presence("pi-kitchen", anna_home,
                    [Sighting(name=ANNAS_WATCH, state="home", last_seen=now - 30)])
    writer.presence("pi-bedroom", anna_home,  # (heard through the wall)
                    [ben, Sighting(name=ANNAS_WATCH, state="home", last_seen=now - 200)])
    writer.person_room(ANNAS_WATCH, anna_home, "Kitchen", "pi-kitchen")
    writer.presence(DEMO_PI, now - 3 * 3600,
                    [Sighting(name=FRANK, state="away", last_seen=now - 3 * 3600 - 180)],
                    simulated="demo")
    writer.commit()
    cold = writer.alert("Bedroom below 17 °C", "temperature-below",
                        "Bedroom (pi-bedroom): 16.8 °C, below 17 °C for 30 min", now - 9 * 3600,
                        "pi-bedroom")
    writer.alert_delivery(cold, "delivered", now - 9 * 3600 + 1)
    writer.alert("demo warm", "temperature-above", "demo-pi: 24.9 °C, above 24 °C [demo data, "
                 "not measured]", now - 2 * 3600, DEMO_PI, delivery="none", simulated="demo")
    arrived = writer.alert(f"{ANNAS_WATCH} arrives", "arrives",
                           f"{ANNAS_WATCH} arrived (Kitchen, seen by pi-kitchen)", anna_home,
                           ANNAS_WATCH)
    writer.alert_delivery(arrived, "delivered", anna_home + 1)
    writer.commit()
