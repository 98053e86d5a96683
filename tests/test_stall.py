"""The stall watch's escalation, on its own clock: restart discovery after N silent scan
windows, power-cycle after N more, never two power cycles within the hour and the wait
doubling while nothing comes back (a place where truly nothing advertises), everything
reset by one advertisement. tests/test_ble.py runs it with the real publisher."""

from __future__ import annotations

from publisher.settings import OPTIONS
from publisher.stall import POWER_CYCLE, RESTART, StallWatch

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def silent(watch: StallWatch, windows: int) -> list[str | None]:
    """``windows`` scan windows that heard nothing; the steps asked for, taken."""
    steps = []
    for _ in range(windows):
        step = watch.heard(0)
        if step is not None:
            watch.done(step)
        steps.append(step)
    return steps


def test_silence_restarts_discovery_then_power_cycles_then_waits_an_hour() -> None:
    """N silent windows: restart; N more: power cycle; then only restarts (one per N
    windows) until an hour after the power cycle."""
    clock = Clock()
    watch = StallWatch(3, clock=clock)
    assert silent(watch, 6) == [None, None, RESTART, None, None, POWER_CYCLE]
    assert watch.stalled
    clock.now += HOUR - 1
    assert silent(watch, 9) == [None, None, RESTART] * 3
    clock.now += 1
    assert silent(watch, 3) == [None, None, POWER_CYCLE]


def test_an_empty_place_is_power_cycled_less_and_less_often() -> None:
    """Each power cycle that brought nothing back doubles the wait for the next one (1,
    2, 4 ... hours), up to a day."""
    clock = Clock()
    watch = StallWatch(1, clock=clock)
    assert silent(watch, 2) == [RESTART, POWER_CYCLE]
    waits = []
    for _ in range(7):
        waited = 0.0
        while (step := watch.heard(0)) != POWER_CYCLE:
            assert step == RESTART and waited < 25 * HOUR
            watch.done(step)
            clock.now += 60
            waited += 60
        watch.done(POWER_CYCLE)
        waits.append(waited / HOUR)
    assert waits == [1, 2, 4, 8, 16, 24, 24]


def test_one_advertisement_from_anyone_ends_the_stall() -> None:
    """A window that heard anything (a stranger too) resets the count and the doubling,
    but never allows a second power cycle within the hour."""
    clock = Clock()
    watch = StallWatch(2, clock=clock)
    assert silent(watch, 4) == [None, RESTART, None, POWER_CYCLE]
    assert watch.heard(1) is None and not watch.stalled
    assert silent(watch, 1) == [None]  # counting starts again
    clock.now += 10
    assert silent(watch, 3) == [RESTART, None, RESTART]  # power cycled 10 s ago: not yet
    clock.now += HOUR
    assert silent(watch, 2) == [None, POWER_CYCLE]
    watch.heard(5)
    clock.now += HOUR  # the wait went back to an hour, not two
    assert silent(watch, 4) == [None, RESTART, None, POWER_CYCLE]


def test_a_failed_restart_goes_straight_to_a_power_cycle_when_allowed() -> None:
    """Restarting discovery failed: a power cycle now, unless one was done within the
    hour (then nothing more this time)."""
    clock = Clock()
    watch = StallWatch(2, clock=clock)
    assert silent(watch, 1) == [None]
    assert watch.heard(0) == RESTART
    assert watch.failed(RESTART) == POWER_CYCLE
    watch.done(POWER_CYCLE)
    assert silent(watch, 1) == [None]
    assert watch.heard(0) == RESTART
    assert watch.failed(RESTART) is None
    assert watch.failed(POWER_CYCLE) is None
    assert 0 < watch.next_power_cycle_in <= HOUR


def test_with_the_defaults_both_steps_come_before_anyone_is_marked_away() -> None:
    """The README's promise: at the default interval, the discovery restart and the power
    cycle (after twice --stall-cycles silent windows) both come before --away-after."""
    default = {o.name: o.default for o in OPTIONS}
    assert default["stall-cycles"] == 6 and default["interval"] == 10
    assert 2 * default["stall-cycles"] * default["interval"] < default["away-after"] == 180
