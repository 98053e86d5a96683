"""A scanner that never silently stalls: when to restart discovery or power-cycle.

Pi owners know Bluetooth scanning that stops without an error until a reboot. A stall
looks like this: every scan window succeeds (BlueZ runs, the adapter is powered and
"discovering") but hears nothing at all, not even a stranger. ``StallWatch`` counts such
windows; after ``cycles`` of them in a row it asks for a recovery step:

1. restart discovery (cheap and harmless), and again after every further ``cycles``
   silent windows;
2. if that fails, or ``cycles`` more windows stay silent after it, power-cycle the
   adapter. At most once per ``power_cycle_every`` (an hour), and the wait doubles after
   each power cycle that brought nothing back, up to a day.

The trade: a place where truly nothing advertises (no phone, no neighbour, no TV) looks
exactly like a stall. There the publisher restarts discovery every ``cycles`` windows
and power-cycles the adapter after an hour, then 2, 4, 8, 16 hours, then daily, and says
so in its ``scanner`` status; ``--stall-cycles 0`` turns the watch off. A single
advertisement, from anyone, ends the stall and resets the waits (but not the last power
cycle's time: never two within the hour).

Pure and clock-injected; :mod:`publisher.app` runs the steps and publishes the status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

RESTART = "restarted discovery"
POWER_CYCLE = "power-cycled the adapter"
POWER_CYCLE_EVERY = 3600.0  # seconds: at most one power cycle per hour
POWER_CYCLE_MAX_WAIT = 86400.0  # the doubling wait's ceiling: a day


@runtime_checkable
class Recoverable(Protocol):
    """A scanner that can restart discovery and power-cycle its adapter."""

    async def restart_discovery(self) -> None: ...

    async def power_cycle(self) -> None: ...

    async def power_on(self) -> str | None: ...


class StallWatch:
    """Silent scan windows in a row -> the recovery step due now."""

    def __init__(self, cycles: int, *, power_cycle_every: float = POWER_CYCLE_EVERY,
                 max_wait: float = POWER_CYCLE_MAX_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if cycles < 1:
            raise ValueError("cycles must be at least 1")
        self.cycles = cycles
        self._every = power_cycle_every
        self._max_wait = max_wait
        self._clock = clock
        self._silent = 0
        self._restarted = False  # discovery restarted in this stall, nothing heard since
        self._wait = power_cycle_every
        self._next_power_cycle = float("-inf")
        self.stalled = False

    def heard(self, count: int) -> str | None:
        """One scan window that worked and heard ``count`` advertisements (strangers
        included): RESTART or POWER_CYCLE when a step is due now, else None."""
        if count > 0:
            self._silent = 0
            self._restarted = False
            self._wait = self._every
            self.stalled = False
            return None
        self._silent += 1
        if self._silent < self.cycles:
            return None
        self._silent = 0
        self.stalled = True
        if self._restarted and self.may_power_cycle():
            return POWER_CYCLE
        return RESTART

    def may_power_cycle(self) -> bool:
        return self._clock() >= self._next_power_cycle

    def failed(self, step: str) -> str | None:
        """``step`` failed: the step to try instead now (a power cycle for a failed
        restart, when one is allowed), else None."""
        if step == RESTART and self.may_power_cycle():
            return POWER_CYCLE
        return None

    def done(self, step: str) -> None:
        """``step`` was taken (a power cycle also when it failed: tried is tried)."""
        if step == RESTART:
            self._restarted = True
        elif step == POWER_CYCLE:
            self._restarted = False
            self._next_power_cycle = self._clock() + self._wait
            self._wait = min(self._wait * 2, self._max_wait)

    @property
    def next_power_cycle_in(self) -> float:
        """Seconds until a power cycle is allowed again (0: now)."""
        return max(0.0, self._next_power_cycle - self._clock())
