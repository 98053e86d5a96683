"""Rooms from several Pis: one fused state per person, home/away and the room they are in.

Each Pi reports the known devices it sees (``devices`` readings: name, state, last seen,
signal strength ``rssi`` in dBm) and says which room it stands in (``room`` in its
readings; a Pi that says nothing is in the room named after it). :class:`Rooms` fuses all
Pis' reports into one :class:`Person` per name, the way the history's reader does
(:mod:`homewatch.history.fusion`), so the dashboard, Home Assistant and alerts agree:

- A Pi *vouches* for what it last reported of a person while it is online (or no status
  of it was ever received) and has reported since it last went offline or was removed.
- ``home`` while a Pi that vouches has them home; ``away`` once every Pi that saw them
  says away (each Pi says away only after its own away timeout); ``unknown`` while only
  Pis that no longer vouch (offline, removed, back and not reported yet) last had them
  home: nobody sees them, but nobody saw them leave either (the dashboard's "not seen").
- Their room is the room of the Pi that hears them best, judged on each Pi's signal
  smoothed over its reports (an exponential moving average of ``rssi``, weight
  ``smoothing`` for the newest). A home entry without ``rssi`` (the Pi did not hear
  them in its last scan window) is no current signal from that Pi: the weakest of all,
  though the Pi still vouches for home. The room changes only when another room's smoothed
  signal is better by at least ``hysteresis`` dB, and has stayed so for at least
  ``dwell`` seconds of the reports' own times (``taken_at``): two rooms heard at similar
  strength never make the room flap, and one odd reading never moves anybody. The dwell
  is timed on one clock, the candidate Pi's (the best Pi of the room that leads): it
  starts at that Pi's first report since its room led and is complete at a later report
  of the same Pi at least ``dwell`` seconds newer (Pis' clocks may differ by minutes; a
  Pi whose clock is ahead must not cut the dwell short). When the
  room's Pi stops having them home (says away, goes offline), the best room left is
  taken at once.

Everything is judged by the readings' times, never the wall clock, so a replay of the
same reports gives the same rooms. The subscriber hands every accepted ``devices``
reading and every status to one Rooms, and each change it returns to every sink's
``person()`` (history, Home Assistant, alerts see the same fused states).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PersonState = Literal["home", "away", "unknown"]
MAX_ROOM = 64
# What one Pi's reports may make the fusion keep (a stolen or buggy Pi inventing names
# must not grow it without end); the history keeps the same bounds.
MAX_NAME = 64  # characters of a person's name
MAX_ENTRIES = 64  # entries of one report; a longer report is ignored
MAX_PEOPLE = 256  # people known; new names beyond it are ignored
DEFAULT_HYSTERESIS = 5.0  # dB
DEFAULT_DWELL = 30.0  # seconds
DEFAULT_SMOOTHING = 0.3  # weight of the newest signal in the moving average


@dataclass(frozen=True)
class Person:
    """A person's fused state across all Pis, as of ``at`` (the report's taken time, or
    when a status arrived)."""

    name: str
    state: PersonState
    room: str | None  # the room they are in; None unless home
    pi: str | None  # the Pi in that room that heard them best when chosen; None unless home
    at: float
    simulated: str | None = None  # "simulated"/"demo" when the report was invented


@dataclass
class _Sighting:
    """What one Pi last reported of one person."""

    home: bool
    signal: float | None  # smoothed rssi while home; None: away, or no rssi given
    at: float
    simulated: str | None
    fresh: bool = True  # reported since the Pi last went offline


@dataclass
class _Choice:
    """A person's room now, and the room that may replace it."""

    room: str | None = None
    pi: str | None = None
    candidate: str | None = None
    candidate_pi: str | None = None  # the candidate room's Pi whose clock times the dwell
    candidate_since: float | None = None  # that Pi's first report time as the candidate


@dataclass
class _Pi:
    room: str | None = None  # what it said; None: its device name
    online: bool | None = None  # None: no status received
    people: set[str] = field(default_factory=set)


def room_of_reading(data: Any) -> str | None:
    """The ``room`` a reading's data names (a temperature dict or a devices entry): 1 to
    64 printable characters, trimmed, as the publisher's ``--room`` takes; else None."""
    if isinstance(data, dict):
        room = data.get("room")
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        room = data[0].get("room")
    else:
        return None
    if isinstance(room, str) and 0 < len(room.strip()) <= MAX_ROOM and room.isprintable():
        return room.strip()
    return None


def _rssi(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -150 <= value <= 20:
        return value
    return None


class Rooms:
    """Fuses every Pi's sightings into one :class:`Person` per name."""

    def __init__(self, *, hysteresis: float = DEFAULT_HYSTERESIS,
                 dwell: float = DEFAULT_DWELL, smoothing: float = DEFAULT_SMOOTHING) -> None:
        if hysteresis < 0 or dwell < 0 or not 0 < smoothing <= 1:
            raise ValueError("hysteresis and dwell must be 0 or more, smoothing in (0, 1]")
        self.hysteresis = hysteresis
        self.dwell = dwell
        self.smoothing = smoothing
        self._pis: dict[str, _Pi] = {}
        self._seen: dict[str, dict[str, _Sighting]] = {}  # person -> Pi -> latest
        self._choice: dict[str, _Choice] = {}
        self._people: dict[str, Person] = {}

    def room_of(self, pi: str) -> str:
        """The room Pi ``pi`` stands in (its device name until it says)."""
        known = self._pis.get(pi)
        return known.room if known is not None and known.room else pi

    def set_room(self, pi: str, room: str | None) -> None:
        """Pi ``pi`` said it stands in ``room`` (None: said nothing, nothing changes)."""
        if room:
            self._pis.setdefault(pi, _Pi()).room = room

    @property
    def people(self) -> Mapping[str, Person]:
        return self._people

    @property
    def pis(self) -> list[str]:
        """The Pis that have reported or sent a status."""
        return sorted(self._pis)

    def online(self, pi: str) -> bool | None:
        """Pi ``pi``'s latest availability (None: no status received)."""
        known = self._pis.get(pi)
        return known.online if known is not None else None

    def report(self, pi: str, at: float, entries: Iterable[Mapping[str, Any]],
               simulated: str | None = None) -> list[Person]:
        """Pi ``pi``'s devices report (taken at ``at``); the people whose fused state or
        room changed."""
        entries = list(entries)
        if len(entries) > MAX_ENTRIES:
            return []
        known = self._pis.setdefault(pi, _Pi())
        names: list[str] = []
        for entry in entries:
            name = entry.get("name")
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or (
                    name not in self._seen and len(self._seen) >= MAX_PEOPLE):
                continue
            home = entry.get("state", "home") == "home"
            rssi = _rssi(entry.get("rssi")) if home else None
            old = self._seen.setdefault(name, {}).get(pi)
            if old is not None and at < old.at:
                continue  # older than what this Pi said last: superseded (as in the history)
            if name in names and (old is None or old.home or not home):
                continue  # listed twice in one report: home if any entry says so
            signal: float | None = None
            if rssi is not None:
                prev = old.signal if old is not None and old.home else None
                signal = rssi if prev is None else prev + self.smoothing * (rssi - prev)
            # No rssi: this Pi has them home but did not hear them this time (it is not
            # where they are now): no current signal, the weakest (it still vouches for
            # home); a later signal starts the average afresh.
            self._seen[name][pi] = _Sighting(home, signal, at, simulated)
            known.people.add(name)
            names.append(name)
        for name in sorted(known.people - set(names)):
            # A person the Pi no longer lists (it restarted) is away there, as in the history.
            old = self._seen[name][pi]
            if old.home and at >= old.at:
                self._seen[name][pi] = _Sighting(False, None, at, simulated)
                names.append(name)
        return self._refuse(names, at, by=pi)

    def status(self, pi: str, online: bool, at: float) -> list[Person]:
        """Pi ``pi``'s availability (``online``/``offline``; a removed Pi is offline for
        good): an offline Pi stops vouching, and vouches again from its next report."""
        known = self._pis.setdefault(pi, _Pi())
        known.online = online
        if not online:
            for name in known.people:
                self._seen[name][pi].fresh = False
        return self._refuse(sorted(known.people), at, moving=False)

    def _vouches(self, pi: str, sighting: _Sighting) -> bool:
        return self._pis[pi].online is not False and sighting.fresh

    def _refuse(self, names: Iterable[str], at: float, *, moving: bool = True,
                by: str | None = None) -> list[Person]:
        """Fuse ``names`` again; ``moving``: a report, whose time counts for the dwell (a
        status only takes away a room that is no longer theirs)."""
        changes: list[Person] = []
        for name in names:
            # A status comes at the subscriber's time; a Pi's clock may be ahead of it:
            # what a status changes is never dated before what the person's reports said.
            when = at if moving else max(at, *(s.at for s in self._seen[name].values()))
            person = self._fuse(name, when, moving, by)
            old = self._people.get(name)
            if old is None or (old.state, old.room, old.pi) != (person.state, person.room,
                                                                person.pi):
                self._people[name] = person
                changes.append(person)
        return changes

    def _fuse(self, name: str, at: float, moving: bool, by: str | None = None) -> Person:
        by_pi = self._seen[name]
        home = {pi: s for pi, s in by_pi.items() if s.home and self._vouches(pi, s)}
        choice = self._choice.setdefault(name, _Choice())
        if not home:
            choice.room = choice.pi = choice.candidate = None
            stale = [s for pi, s in by_pi.items() if s.home]
            state: PersonState = "unknown" if stale else "away"
            sims = [s.simulated for s in (stale or list(by_pi.values())) if s.simulated]
            return Person(name, state, None, None, at, max(sims) if sims else None)
        # Each room's signal: the best smoothed signal of its Pis that have them home.
        best_pi: dict[str, str] = {}
        for pi in sorted(home):
            room = self.room_of(pi)
            if room not in best_pi or _louder(home[pi], home[best_pi[room]]):
                best_pi[room] = pi
        score = {room: home[pi].signal for room, pi in best_pi.items()}
        leader = max(score, key=lambda r: (_level(score[r]), r))
        if choice.room not in best_pi:
            # First sighting, or their room's Pis no longer have them home: the best now.
            choice.room, choice.candidate = leader, None
        elif not moving:
            pass
        elif leader != choice.room and _level(score[leader]) >= (
                _level(score[choice.room]) + self.hysteresis):
            # The dwell is timed on one clock: the candidate Pi's own report times (Pis'
            # clocks may disagree by minutes): it starts at that Pi's first report since
            # its room led and is complete at a later report of that Pi.
            timer = choice.candidate_pi
            if choice.candidate != leader or timer is None or timer not in home:
                timer = best_pi[leader]
                choice.candidate, choice.candidate_pi = leader, timer
                choice.candidate_since = at if by == timer else None
            elif by == timer and choice.candidate_since is None:
                choice.candidate_since = at
            since = choice.candidate_since
            if by == timer and since is not None and at - since >= self.dwell:
                choice.room, choice.candidate = leader, None
        else:
            choice.candidate = None
        assert choice.room is not None
        if choice.pi is None or choice.pi not in home or (
                self.room_of(choice.pi) != choice.room):
            choice.pi = best_pi[choice.room]
        sims = [s.simulated for s in home.values() if s.simulated]
        return Person(name, "home", choice.room, choice.pi, at, max(sims) if sims else None)


def _level(signal: float | None) -> float:
    """A signal to compare: no rssi counts as the weakest of all."""
    return signal if signal is not None else -1000.0


def _louder(a: _Sighting, b: _Sighting) -> bool:
    return _level(a.signal) > _level(b.signal)
