"""Fusing several Pis' view of one person into home/away stretches (pure functions).

A person is home while any Pi's latest report has them home. Each Pi's changes for a
person are kept as they came; from them the store keeps one row per stretch of the fused
state, with the Pis that had the person home during it (``seen_by``) and the largest
simulated code of the reports that made it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


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


def encode_ids(ids: Iterable[int]) -> str:
    """Device ids as stored in ``person_change.seen_by``: ``"1,3"``."""
    return ",".join(str(i) for i in sorted(set(ids)))


def decode_ids(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part}
