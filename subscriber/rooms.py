"""Rooms from several Pis: one fused state per person, home/away and the room they are in.

Each Pi reports the known devices it sees (``devices`` readings: name, state, last seen,
signal strength ``rssi`` in dBm) and says which room it stands in (``room`` in its
readings; a Pi that says nothing is in the room named after it). :class:`Rooms` fuses all
Pis' reports into one :class:`Person` per name:

- home while any Pi that vouches for it has them home; away only once every Pi that saw
  them says away (each Pi says away only after its own away timeout);
- their room is the room of the Pi that hears them best.

The subscriber hands every accepted ``devices`` reading and every status to one Rooms,
and each change it returns to every sink's ``person()`` (history, Home Assistant,
alerts see the same fused states).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

PersonState = Literal["home", "away"]


@dataclass(frozen=True)
class Person:
    """A person's fused state across all Pis, as of ``at`` (the report's taken time)."""

    name: str
    state: PersonState
    room: str | None  # the room of the Pi that hears them best; None while away
    pi: str | None  # that Pi's device name; None while away
    at: float
    simulated: str | None = None  # "simulated"/"demo" when the report was invented


@dataclass
class _Sighting:
    home: bool
    rssi: int | None
    at: float
    simulated: str | None


def room_of_reading(data: Any) -> str | None:
    """The ``room`` a reading's data names (a temperature dict or a devices entry)."""
    if isinstance(data, dict):
        room = data.get("room")
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        room = data[0].get("room")
    else:
        return None
    if isinstance(room, str) and 0 < len(room.strip()) <= 64:
        return room.strip()
    return None


class Rooms:
    """Fuses every Pi's sightings into one :class:`Person` per name."""

    def __init__(self) -> None:
        self._rooms: dict[str, str] = {}  # Pi -> room it said it is in
        self._seen: dict[str, dict[str, _Sighting]] = {}  # person -> Pi -> latest
        self._people: dict[str, Person] = {}

    def room_of(self, pi: str) -> str:
        """The room Pi ``pi`` stands in (its device name until it says)."""
        return self._rooms.get(pi, pi)

    def set_room(self, pi: str, room: str | None) -> None:
        if room:
            self._rooms[pi] = room

    @property
    def people(self) -> Mapping[str, Person]:
        return self._people

    def report(self, pi: str, at: float, entries: Iterable[Mapping[str, Any]],
               simulated: str | None = None) -> list[Person]:
        """Pi ``pi``'s devices report (taken at ``at``); the people whose fused state or
        room changed."""
        for entry in entries:
            name = entry.get("name")
            if not isinstance(name, str):
                continue
            rssi = entry.get("rssi")
            self._seen.setdefault(name, {})[pi] = _Sighting(
                home=entry.get("state", "home") == "home",
                rssi=rssi if isinstance(rssi, int) and not isinstance(rssi, bool) else None,
                at=at, simulated=simulated)
        return self._refuse(at)

    def _refuse(self, at: float) -> list[Person]:
        changes: list[Person] = []
        for name, by_pi in self._seen.items():
            home = {pi: s for pi, s in by_pi.items() if s.home}
            if home:
                pi = max(home, key=lambda p: (home[p].rssi if home[p].rssi is not None
                                              else -999, p))
                person = Person(name, "home", self.room_of(pi), pi, at, home[pi].simulated)
            else:
                sims = [s.simulated for s in by_pi.values() if s.simulated]
                person = Person(name, "away", None, None, at, max(sims) if sims else None)
            old = self._people.get(name)
            if old is None or (old.state, old.room, old.pi) != (person.state, person.room,
                                                                person.pi):
                self._people[name] = person
                changes.append(person)
        return changes
