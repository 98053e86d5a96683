"""The rooms fusion (subscriber/rooms.py), pure: several Pis' reports in, one state and one
room per person out, judged by the reports' own times."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from homewatch.envelope import Opener, Reading, seal
from homewatch.secrets import KeyStore, load_keyring
from subscriber import app as subscriber_app
from subscriber.app import Subscriber
from subscriber.rooms import Person, Rooms, room_of_reading

T0 = 1_800_000_000.0


def seen(name: str, rssi: int | None = None, state: str = "home",
         room: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "mac": "88:29:9C:00:61:A9", "state": state}
    if rssi is not None:
        entry["rssi"] = rssi
    if room is not None:
        entry["room"] = room
    return entry


def rooms_with_two_pis(**kwargs: float) -> Rooms:
    rooms = Rooms(**kwargs)
    rooms.set_room("pi-kitchen", "Kitchen")
    rooms.set_room("pi-garage", "Garage")
    return rooms


def room(rooms: Rooms, name: str = "Anna") -> str | None:
    return rooms.people[name].room


def test_the_room_is_the_pi_that_hears_them_best() -> None:
    """A person heard by two Pis is in the room of the one with the stronger signal."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=0)
    rooms.report("pi-kitchen", T0, [seen("Anna", -70)])
    assert rooms.people["Anna"] == Person("Anna", "home", "Kitchen", "pi-kitchen", T0)
    rooms.report("pi-garage", T0, [seen("Anna", -50)])
    assert rooms.people["Anna"] == Person("Anna", "home", "Garage", "pi-garage", T0)


def test_the_room_follows_the_stronger_signal_after_the_dwell() -> None:
    """When another Pi hears them clearly better for the dwell time, the room follows it,
    and the change is handed out once."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30)
    rooms.report("pi-kitchen", T0, [seen("Anna", -50)])
    rooms.report("pi-garage", T0, [seen("Anna", -80)])
    assert room(rooms) == "Kitchen"
    changes: list[Person] = []
    for i in range(1, 20):  # she walks into the garage: every 10 s, both Pis report
        t = T0 + 10 * i
        changes += rooms.report("pi-kitchen", t, [seen("Anna", -80)])
        changes += rooms.report("pi-garage", t, [seen("Anna", -50)])
    assert room(rooms) == "Garage"
    assert [(p.room, p.pi) for p in changes] == [("Garage", "pi-garage")]


def test_a_pi_that_no_longer_hears_them_does_not_keep_them_in_its_room() -> None:
    """Anna walks from the kitchen to the bedroom: pi-kitchen still has her home (until its
    away timeout) but no longer hears her (no rssi), pi-bed hears her at -62: after the
    dwell she is in the Bedroom, long before pi-kitchen's away timeout."""
    rooms = Rooms(hysteresis=5, dwell=30)
    rooms.set_room("pi-kitchen", "Kitchen")
    rooms.set_room("pi-bed", "Bedroom")
    rooms.report("pi-kitchen", T0, [seen("Anna", -50)])
    assert room(rooms) == "Kitchen"
    moved_at = None
    for i in range(1, 18):  # every 10 s for 170 s, less than the away timeout (180 s)
        t = T0 + 10 * i
        rooms.report("pi-kitchen", t, [seen("Anna")])  # home, not heard this window
        rooms.report("pi-bed", t, [seen("Anna", -62)])
        if moved_at is None and room(rooms) == "Bedroom":
            moved_at = t
    assert rooms.people["Anna"].state == "home" and room(rooms) == "Bedroom"
    assert moved_at == T0 + 40  # pi-bed first louder at T0+10, plus the 30 s dwell


def test_a_missed_scan_window_does_not_make_the_room_flap() -> None:
    """Both Pis hear her, the kitchen better; now and then the kitchen's scan window
    misses her (no rssi), never for the dwell: she stays in the Kitchen throughout."""
    rooms = Rooms(hysteresis=5, dwell=30)
    rooms.set_room("pi-kitchen", "Kitchen")
    rooms.set_room("pi-bed", "Bedroom")
    rooms.report("pi-kitchen", T0, [seen("Anna", -55)])
    rooms.report("pi-bed", T0, [seen("Anna", -70)])
    rooms_seen = set()
    for i in range(1, 40):
        t = T0 + 10 * i
        rooms.report("pi-kitchen", t, [seen("Anna", None if i % 3 == 0 else -55)])
        rooms.report("pi-bed", t, [seen("Anna", -70)])
        rooms_seen.add(room(rooms))
    assert rooms_seen == {"Kitchen"}


def test_a_pi_whose_clock_is_ahead_does_not_cut_the_dwell_short() -> None:
    """pi-bed's clock is 60 s ahead of pi-kitchen's; the kitchen's weaker report makes the
    Bedroom lead: the dwell is timed on pi-bed's own report times, so pi-bed's next report
    (60 s "later" than the kitchen's) moves nobody; she moves once pi-bed has reported her
    louder for the dwell on its own clock."""
    rooms = Rooms(hysteresis=5, dwell=30)
    rooms.set_room("pi-kitchen", "Kitchen")
    rooms.set_room("pi-bed", "Bedroom")
    rooms.report("pi-kitchen", T0, [seen("Anna", -45)])
    rooms.report("pi-bed", T0 + 60, [seen("Anna", -50)])
    assert room(rooms) == "Kitchen"
    moved_after = None
    for i in range(1, 10):  # every 10 s; pi-bed's taken_at is 60 s ahead
        rooms.report("pi-kitchen", T0 + 10 * i, [seen("Anna", -80)])
        rooms.report("pi-bed", T0 + 60 + 10 * i, [seen("Anna", -50)])
        if moved_after is None and room(rooms) == "Bedroom":
            moved_after = 10 * i
    assert moved_after == 40  # first louder at 10 s, plus the 30 s dwell


def test_a_switch_waits_for_the_dwell() -> None:
    """A room that is clearly better becomes theirs only once it has been better for the
    dwell time of the readings' own times, not at the first report."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30, smoothing=1.0)
    rooms.report("pi-kitchen", T0, [seen("Anna", -50)])
    rooms.report("pi-garage", T0, [seen("Anna", -90)])
    rooms.report("pi-kitchen", T0 + 10, [seen("Anna", -85)])
    rooms.report("pi-garage", T0 + 10, [seen("Anna", -55)])  # better by 30 dB: candidate
    for t in (T0 + 20, T0 + 30, T0 + 39.9):
        rooms.report("pi-garage", t, [seen("Anna", -55)])
        assert room(rooms) == "Kitchen", t
    rooms.report("pi-garage", T0 + 40, [seen("Anna", -55)])
    assert room(rooms) == "Garage"
    assert rooms.people["Anna"].at == T0 + 40


def test_a_candidate_that_falls_back_starts_its_dwell_again() -> None:
    """A room that is better, then not, then better again must wait a whole dwell from
    the second time."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30, smoothing=1.0)
    rooms.report("pi-kitchen", T0, [seen("Anna", -60)])
    rooms.report("pi-garage", T0 + 1, [seen("Anna", -50)])  # better by 10: candidate
    rooms.report("pi-garage", T0 + 20, [seen("Anna", -58)])  # by 2 only: not a candidate
    rooms.report("pi-garage", T0 + 25, [seen("Anna", -50)])  # candidate again
    rooms.report("pi-garage", T0 + 50, [seen("Anna", -50)])
    assert room(rooms) == "Kitchen"
    rooms.report("pi-garage", T0 + 55, [seen("Anna", -50)])
    assert room(rooms) == "Garage"


def test_alternating_similar_strengths_never_flap() -> None:
    """Two Pis taking turns at being a few dB louder (within the hysteresis) for an hour
    never move the person."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30)
    changes: list[Person] = []
    for i in range(360):
        t = T0 + 10 * i
        louder, softer = (-60, -64) if i % 2 else (-64, -60)
        changes += rooms.report("pi-kitchen", t, [seen("Anna", louder)])
        changes += rooms.report("pi-garage", t, [seen("Anna", softer)])
    assert len(changes) == 1 and changes[0].state == "home"


def test_short_bursts_of_a_much_stronger_signal_never_move_them() -> None:
    """A Pi that now and then hears them far better, but never for the dwell time (a
    phone carried past a doorway), does not move them: no flapping either way."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30, smoothing=1.0)
    changes: list[Person] = []
    for i in range(120):
        t = T0 + 10 * i
        changes += rooms.report("pi-kitchen", t, [seen("Anna", -60)])
        changes += rooms.report("pi-garage", t, [seen("Anna", -40 if i % 3 == 0 else -75)])
    assert [p.room for p in changes] == ["Kitchen"]


def test_one_odd_reading_is_smoothed_away() -> None:
    """With the default smoothing, a single loud reading does not lift a room's signal
    past the hysteresis."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=0)
    for i in range(10):
        rooms.report("pi-kitchen", T0 + i, [seen("Anna", -60)])
        rooms.report("pi-garage", T0 + i, [seen("Anna", -70)])
    rooms.report("pi-garage", T0 + 10, [seen("Anna", -50)])  # one spike, 10 dB louder
    assert room(rooms) == "Kitchen"


def test_leaving_one_room_for_another() -> None:
    """When the room's Pi says they are away, the other Pi that has them home gives the
    room at once (no dwell: the old room is no longer theirs)."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30)
    rooms.report("pi-kitchen", T0, [seen("Anna", -50)])
    rooms.report("pi-garage", T0, [seen("Anna", -88)])
    changes = rooms.report("pi-kitchen", T0 + 180, [seen("Anna", state="away")])
    assert changes == [Person("Anna", "home", "Garage", "pi-garage", T0 + 180)]


def test_away_only_when_every_pi_says_away() -> None:
    """A person is home while any Pi has them home; away once the last one says away."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0, [seen("Anna", -50)])
    rooms.report("pi-garage", T0, [seen("Anna", -70)])
    rooms.report("pi-garage", T0 + 100, [seen("Anna", state="away")])
    assert rooms.people["Anna"].state == "home"
    changes = rooms.report("pi-kitchen", T0 + 200, [seen("Anna", state="away")])
    assert changes == [Person("Anna", "away", None, None, T0 + 200)]


def test_an_offline_pi_stops_vouching() -> None:
    """A Pi that goes offline no longer keeps anyone home: a person only it had home is
    unknown (not seen, nobody saw them leave: the dashboard's "not seen"); one another
    Pi has home moves to that Pi's room at once; the Pi vouches again from its next
    report, not from coming back online (and moving back waits for the dwell)."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0, [seen("Anna", -50), seen("Bob", -50)])
    rooms.report("pi-garage", T0, [seen("Anna", -80), seen("Bob", state="away")])
    changes = rooms.status("pi-kitchen", False, T0 + 5)
    assert changes == [Person("Anna", "home", "Garage", "pi-garage", T0 + 5),
                       Person("Bob", "unknown", None, None, T0 + 5)]
    assert rooms.status("pi-kitchen", True, T0 + 6) == []  # back, not reported yet
    assert rooms.people["Bob"].state == "unknown"
    changes = rooms.report("pi-kitchen", T0 + 10, [seen("Anna", -50), seen("Bob", -50)])
    assert [(p.name, p.state, p.room) for p in changes] == [("Bob", "home", "Kitchen")]
    changes = rooms.report("pi-garage", T0 + 39, [seen("Anna", -80)])
    changes += rooms.report("pi-kitchen", T0 + 40, [seen("Anna", -50), seen("Bob", -50)])
    assert [(p.name, p.state, p.room) for p in changes] == [("Anna", "home", "Kitchen")]


def test_a_person_the_offline_pi_had_away_stays_away() -> None:
    """Only a Pi's "home" can turn unknown when it goes offline: a person every Pi had
    away stays away."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0, [seen("Anna", state="away")])
    assert rooms.status("pi-kitchen", False, T0 + 1) == []
    assert rooms.people["Anna"].state == "away"


def test_a_status_is_never_dated_before_the_reports_it_changes() -> None:
    """A Pi's clock ahead of the subscriber's: the change an offline status makes is dated
    no earlier than the latest report of the person (so the history, which ignores an
    older change, keeps it)."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0 + 30, [seen("Anna", -60)])
    assert rooms.status("pi-kitchen", False, T0) == [
        Person("Anna", "unknown", None, None, T0 + 30)]


def test_a_status_never_completes_a_dwell() -> None:
    """The dwell counts reports' times only: a status arriving later (on the wall clock)
    does not move anybody."""
    rooms = rooms_with_two_pis(hysteresis=5, dwell=30, smoothing=1.0)
    rooms.report("pi-kitchen", T0, [seen("Anna", -60)])
    rooms.report("pi-garage", T0 + 1, [seen("Anna", -40)])
    rooms.status("pi-garage", True, T0 + 1000)
    assert room(rooms) == "Kitchen"


def test_a_report_older_than_the_pis_last_is_superseded() -> None:
    """A Pi's report taken before the last one it sent (a late copy) changes nothing."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0 + 10, [seen("Anna", -60)])
    assert rooms.report("pi-kitchen", T0, [seen("Anna", state="away")]) == []
    assert rooms.people["Anna"].state == "home"


def test_what_a_pi_may_make_the_fusion_keep_is_bounded() -> None:
    """A report of more than 64 entries is ignored, as is a name longer than 64
    characters, and at most 256 people are ever kept (a Pi inventing names cannot grow
    the fusion without end), as in the history."""
    rooms = Rooms()
    assert rooms.report("pi-a", T0, [seen(f"p{i}", -60) for i in range(65)]) == []
    assert rooms.report("pi-a", T0, [seen("x" * 65, -60)]) == []
    for start in range(0, 320, 64):
        rooms.report("pi-a", T0 + start, [seen(f"p{i}", -60) for i in range(start, start + 64)])
    assert len(rooms.people) == 256


def test_a_person_a_pi_no_longer_lists_is_away_there() -> None:
    """A Pi that restarted lists only whom it has seen since: a person it had home and no
    longer lists is away there (as in the history)."""
    rooms = rooms_with_two_pis()
    rooms.report("pi-kitchen", T0, [seen("Anna", -60), seen("Bob", -60)])
    changes = rooms.report("pi-kitchen", T0 + 10, [seen("Bob", -60)])
    assert changes == [Person("Anna", "away", None, None, T0 + 10)]


def test_a_person_listed_twice_in_one_report_is_home_if_any_entry_says_so() -> None:
    """Two entries of one name (two of their devices) in one report: home if either is,
    as in the history."""
    for entries in ([seen("Anna", -60), seen("Anna", state="away")],
                    [seen("Anna", state="away"), seen("Anna", -60)]):
        rooms = Rooms()
        rooms.report("pi-a", T0, entries)
        assert rooms.people["Anna"].state == "home", entries


def test_two_pis_in_one_room_are_one_room() -> None:
    """Two Pis that say they stand in the same room never move the person between
    rooms, whichever of them hears them better."""
    rooms = Rooms(hysteresis=5, dwell=0, smoothing=1.0)
    rooms.set_room("pi-a", "Living room")
    rooms.set_room("pi-b", "Living room")
    changes: list[Person] = []
    for i in range(10):
        changes += rooms.report("pi-a", T0 + i, [seen("Anna", -50 if i % 2 else -80)])
        changes += rooms.report("pi-b", T0 + i, [seen("Anna", -80 if i % 2 else -50)])
    assert [p.room for p in changes] == ["Living room"]


def test_a_pi_that_names_no_room_is_in_the_room_named_after_it() -> None:
    """Without a room in its readings, a Pi's room is its device name; without rssi, a
    Pi still has them home (its signal counts as the weakest)."""
    rooms = Rooms()
    rooms.report("pi-hall", T0, [seen("Anna")])
    assert rooms.people["Anna"] == Person("Anna", "home", "pi-hall", "pi-hall", T0)


def test_room_of_reading_takes_a_room_from_either_kind_of_reading() -> None:
    """The room comes from a temperature reading's data or a devices entry; anything
    else (too long, empty, control characters, not a string) names no room."""
    assert room_of_reading({"temperature": 20.0, "room": " Kitchen "}) == "Kitchen"
    assert room_of_reading([seen("Anna", room="Garage")]) == "Garage"
    for bad in ({"room": ""}, {"room": "x" * 65}, {"room": 3}, {"room": "a\x1b[2Jb"},
                {"room": "a\nb"}, [], "Kitchen", None):
        assert room_of_reading(bad) is None, bad


def test_bad_settings_are_refused() -> None:
    """A negative hysteresis or dwell, or a smoothing weight outside (0, 1], is an error."""
    for kwargs in ({"hysteresis": -1.0}, {"dwell": -1.0}, {"smoothing": 0.0},
                   {"smoothing": 1.5}):
        with pytest.raises(ValueError):
            Rooms(**kwargs)


class People:
    """A sink that keeps the fused changes it is handed."""

    def __init__(self) -> None:
        self.people: list[Person] = []

    def reading(self, reading: Reading) -> None: ...
    def status(self, topic: str, device: str, status: str) -> None: ...
    def rejected(self, topic: str, device: str | None, reason: str) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def person(self, person: Person) -> None:
        self.people.append(person)


def test_the_subscriber_hands_statuses_and_removed_pis_to_the_fusion(
        certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real subscriber (verify, decrypt) feeds the fusion: a devices report puts Anna
    in the room its Pi names; that Pi's `offline` status hands every sink Anna unknown;
    back and reporting, she is home; once its key ring is deleted (a removed Pi), she is
    unknown again."""
    keys = tmp_path / "keys"
    shutil.copytree(certs / "clients" / "subscriber" / "keys", keys)
    ring = load_keyring(certs / "clients" / "pi-kitchen" / "fernet.key")
    sink = People()
    sub = Subscriber(Opener(KeyStore(keys, recheck_seconds=0), base="home"), [sink])
    seq = int(time.time() * 1000)

    def report(n: int) -> None:
        topic = "home/pi-kitchen/devices"
        assert sub.handle(topic, seal(ring, topic=topic, device="pi-kitchen", seq=seq + n,
                                      taken=time.time(),
                                      data=[seen("Anna", -60, room="Kitchen")]))

    report(1)
    assert [(p.state, p.room) for p in sink.people] == [("home", "Kitchen")]
    assert sub.handle("home/pi-kitchen/status", b"offline")
    assert [(p.state, p.room) for p in sink.people][1:] == [("unknown", None)]
    assert sub.handle("home/pi-kitchen/status", b"online")
    report(2)
    assert [(p.state, p.room) for p in sink.people][2:] == [("home", "Kitchen")]
    monkeypatch.setattr(subscriber_app, "REMOVED_RECHECK", 0.0)
    sub._check_removed()
    assert len(sink.people) == 3  # its key ring is still there
    (keys / "pi-kitchen.key").unlink()
    sub._check_removed()
    assert [(p.state, p.room) for p in sink.people][3:] == [("unknown", None)]
