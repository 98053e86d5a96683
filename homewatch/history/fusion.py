"""Fusing several Pis' view of one person into stretches (pure functions).

Two fusions live here:

- :func:`sweep` (the writer's ``person_change`` rows): home while any Pi's latest report
  has the person home, whatever the Pis' availability.
- :class:`Views` and :func:`timeline` (what the reader shows): a Pi vouches for its
  latest report only while it is online (or no status of it was ever received) and has
  reported since it last went offline. A person is ``home`` while a vouching Pi has them
  home; else ``unknown`` while a Pi that does not vouch (offline, or back and not
  reported yet) last had them home: we do not know that they left; else ``away``.

Each stretch carries the Pis that had the person home during it (``seen_by``; for an
``unknown`` stretch, the Pis that last had them home: ``unconfirmed_by``) and the largest
simulated code of the reports that made it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

State = Literal["home", "away", "unknown"]


@dataclass(frozen=True)
class Change:
    """One Pi's report changed a person's state there."""

    ts: float
    device: int
    home: bool
    sim: int = 0


@dataclass
class Stretch:
    """A person's fused state from ``ts`` until the next stretch."""

    ts: float
    home: bool
    seen_by: set[int] = field(default_factory=set)
    sim: int = 0


def sweep(before: Mapping[int, bool], changes: Iterable[Change]) -> list[Stretch]:
    """The stretches from the first of ``changes`` on, given each Pi's state just before
    it (``before``, by device id). The first group of changes (one time) always opens a
    stretch; later ones open one when the fused state flips, otherwise they add the Pis
    that have the person home to the open stretch's ``seen_by``."""
    state = dict(before)
    out: list[Stretch] = []
    ordered = sorted(changes, key=lambda c: (c.ts, c.device))
    for ts, group in itertools.groupby(ordered, key=lambda c: c.ts):
        sim = 0
        for change in group:
            state[change.device] = change.home
            sim = max(sim, change.sim)
        home_at = {device for device, home in state.items() if home}
        if not out or out[-1].home != bool(home_at):
            out.append(Stretch(ts, bool(home_at), home_at, sim))
        else:
            out[-1].seen_by |= home_at
            out[-1].sim = max(out[-1].sim, sim)
    return out


@dataclass(frozen=True)
class Event:
    """At ``ts``, Pi ``device`` reported the person (``home``: ``value``) or its
    availability changed (``status``: online is ``value``)."""

    ts: float
    device: int
    kind: Literal["report", "status"]
    value: bool
    sim: int = 0


@dataclass
class PiView:
    """One Pi's view of one person at a moment."""

    home: bool | None = None  # its latest report; None: none yet
    online: bool | None = None  # its latest availability; None: never received
    fresh: bool = True  # it has reported since it last went offline
    sim: int = 0  # its latest report's simulated code

    @property
    def vouches(self) -> bool:
        return self.online is not False and self.fresh


@dataclass
class Span:
    """A person's state from ``ts`` until the next span (reader side)."""

    ts: float
    state: State
    seen_by: set[int] = field(default_factory=set)
    unconfirmed_by: set[int] = field(default_factory=set)
    sim: int = 0


class Views:
    """Each Pi's view of one person, fed events in time order."""

    def __init__(self, views: Mapping[int, PiView] | None = None) -> None:
        self.pis: dict[int, PiView] = dict(views or {})

    def feed(self, event: Event) -> None:
        view = self.pis.setdefault(event.device, PiView())
        if event.kind == "status":
            view.online = event.value
            if not event.value:
                view.fresh = False
        else:
            view.home, view.fresh, view.sim = event.value, True, event.sim

    def fused(self) -> Span | None:
        """The person's state now (``ts`` left 0), None while no Pi has reported them."""
        reported = {d: v for d, v in self.pis.items() if v.home is not None}
        if not reported:
            return None
        seen = {d for d, v in reported.items() if v.home and v.vouches}
        if seen:
            return Span(0.0, "home", seen, set(), max(reported[d].sim for d in seen))
        stale = {d for d, v in reported.items() if v.home}
        if stale:
            return Span(0.0, "unknown", set(), stale, max(reported[d].sim for d in stale))
        return Span(0.0, "away", set(), set(), max(v.sim for v in reported.values()))


def timeline(start: float, views: Views, events: Iterable[Event]) -> list[Span]:
    """The spans from ``start`` on, given each Pi's view at ``start`` and the events
    after it. Neighbours in the same state are merged (their Pis and marks joined);
    at one moment, status changes count before reports."""
    out: list[Span] = []
    _add(out, views, start)
    extend(out, views, events)
    return out


def extend(out: list[Span], views: Views, events: Iterable[Event]) -> None:
    """Continue the spans ``out`` with ``events`` (all after the last one fed to
    ``views``), feeding them to ``views``."""
    ordered = sorted(events, key=lambda e: (e.ts, e.kind == "report", e.device))
    for ts, group in itertools.groupby(ordered, key=lambda e: e.ts):
        for event in group:
            views.feed(event)
        _add(out, views, ts)


def _add(out: list[Span], views: Views, ts: float) -> None:
    span = views.fused()
    if span is None:
        return
    span.ts = ts
    if out and out[-1].state == span.state:
        last = out[-1]
        last.seen_by |= span.seen_by
        last.unconfirmed_by |= span.unconfirmed_by
        last.sim = max(last.sim, span.sim)
    else:
        out.append(span)


def encode_ids(ids: Iterable[int]) -> str:
    """Device ids as stored in ``person_change.seen_by``: ``"1,3"``."""
    return ",".join(str(i) for i in sorted(set(ids)))


def decode_ids(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part}
