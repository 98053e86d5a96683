"""Rules -> alerts: each rule fires ONCE when its condition begins and re-arms when the
condition ends (no storm).

Pure and clock-free: every call says when it happens (a reading's taken time, a
status's or rejection's receive time, the timer's now), so the semantics are tested
with the readings' own times. Not thread-safe: :class:`subscriber.sinks.alerts.AlertsSink`
calls it under its lock, from paho's thread (events) and its own timer (``tick``).

What each kind's condition is:

- ``arrives`` / ``leaves``: the person's fused state (:class:`subscriber.rooms.Person`)
  changes away -> home / home -> away. The first state seen of a person after the
  subscriber starts is where it stands, not a change (no alerts at every restart).
- ``everyone-left``: nobody known is home any more, after someone was.
- ``temperature-above`` / ``-below``: a Pi's readings beyond ``celsius`` for ``for``
  seconds (from the first reading beyond it, by the readings' taken times; the timer
  counts on after the last reading for at most :data:`STALE` seconds). It ends at a
  reading back by more than ``hysteresis`` (0.5 °C) on the other side.
- ``offline``: a Pi's broker-kept status offline for ``for`` seconds; ends when online.
- ``scanner-error``: a ``scanner`` reading with state ``error``, or ``stalled`` (it works
  but has heard nothing for a while; the Pi restarts it); ends at state ``ok``.
- ``rejected-burst``: ``count`` rejected messages within ``within`` seconds; ends when
  fewer than that remain in the window.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from subscriber.alert_rules import Rule
from subscriber.rooms import Person

STALE = 120.0  # seconds a Pi's last temperature still counts without a newer reading
MAX_DETAIL = 200  # characters of a scanner detail quoted in an alert


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert. ``simulated`` ("demo"/"simulated") when invented data caused it."""

    rule: str
    kind: str
    message: str
    at: float
    device: str | None = None
    person: str | None = None
    room: str | None = None
    simulated: str | None = None

    @property
    def subject(self) -> str:
        return self.person or self.device or ""

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body (the README documents it)."""
        return {"source": "homewatch", "rule": self.rule, "kind": self.kind,
                "message": self.message, "at": self.at, "device": self.device,
                "person": self.person, "room": self.room,
                "demo": self.simulated is not None, "simulated": self.simulated}


def duration_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _invented(message: str, simulated: str | None) -> str:
    return f"{message} [{simulated} data, not measured]" if simulated else message


@dataclass
class _Held:
    """A condition per (rule, Pi): since when it holds, whether it fired."""

    since: float | None = None
    fired: bool = False
    last_at: float = float("-inf")
    value: float | None = None
    simulated: str | None = None


@dataclass
class _Burst:
    times: deque[float] = field(default_factory=deque)
    reasons: Counter[str] = field(default_factory=Counter)
    fired: bool = False


class Engine:
    """Evaluates the rules; each method returns the alerts it raised."""

    def __init__(self, rules: tuple[Rule, ...], *,
                 room_of: Callable[[str], str] = lambda pi: pi) -> None:
        self.rules = rules
        self.room_of = room_of
        self._people: dict[str, str] = {}  # name -> home/away
        self._anyone_home = False
        self._held: dict[tuple[str, str], _Held] = {}  # (rule, Pi)
        self._bursts: dict[str, _Burst] = {r.name: _Burst() for r in rules
                                           if r.kind == "rejected-burst"}
        self._sim: dict[str, str | None] = {}  # Pi -> mark of its latest reading

    def _rules(self, *kinds: str) -> list[Rule]:
        return [r for r in self.rules if r.kind in kinds]

    def _matches(self, rule: Rule, pi: str) -> bool:
        if rule.pi is not None:
            return rule.pi == pi
        if rule.room is not None:
            return self.room_of(pi) == rule.room
        return True

    # -- events ----------------------------------------------------------------------

    def person(self, p: Person) -> list[Alert]:
        if p.state == "unknown":
            # Only Pis that no longer vouch (offline, removed) had them home: nobody knows
            # they left, and their coming back into view is no arrival. The last known
            # state stands.
            return []
        old = self._people.get(p.name)
        self._people[p.name] = p.state
        if old is None:  # the first state seen since the start: where it stands
            self._anyone_home = any(s == "home" for s in self._people.values())
        if old is None or old == p.state:
            return []
        out: list[Alert] = []
        for rule in self._rules("arrives", "leaves"):
            if rule.person != p.name or (rule.kind == "arrives") != (p.state == "home"):
                continue
            where = f" ({p.room}, seen by {p.pi})" if p.room and p.pi else ""
            verb = "arrived" if p.state == "home" else "left"
            out.append(Alert(rule=rule.name, kind=rule.kind, at=p.at, person=p.name,
                             device=p.pi, room=p.room, simulated=p.simulated,
                             message=_invented(f"{p.name} {verb}{where}", p.simulated)))
        anyone = any(state == "home" for state in self._people.values())
        if self._anyone_home and not anyone:
            for rule in self._rules("everyone-left"):
                out.append(Alert(rule=rule.name, kind=rule.kind, at=p.at, person=p.name,
                                 simulated=p.simulated, message=_invented(
                                     f"Everyone left: nobody known is home (the last to "
                                     f"leave: {p.name})", p.simulated)))
        self._anyone_home = anyone
        return out

    def reading(self, device: str, kind: str, data: Any, at: float,
                simulated: str | None = None) -> list[Alert]:
        self._sim[device] = simulated
        if kind == "temperature" and isinstance(data, dict):
            value = data.get("temperature")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return self._temperature(device, float(value), at, simulated)
        if kind == "scanner" and isinstance(data, dict) and isinstance(data.get("state"), str):
            return self._scanner(device, data["state"], str(data.get("detail", "")), at,
                                 simulated)
        return []

    def _temperature(self, device: str, value: float, at: float,
                     simulated: str | None) -> list[Alert]:
        out: list[Alert] = []
        for rule in self._rules("temperature-above", "temperature-below"):
            if not self._matches(rule, device) or rule.celsius is None:
                continue
            held = self._held.setdefault((rule.name, device), _Held())
            if at < held.last_at:
                continue  # a late reading: the condition follows the newest
            held.last_at, held.value, held.simulated = at, value, simulated
            sign = 1 if rule.kind == "temperature-above" else -1
            if sign * (value - rule.celsius) > 0:
                if held.since is None:
                    held.since = at
            else:
                held.since = None
                if held.fired and sign * (rule.celsius - value) >= rule.hysteresis:
                    held.fired = False  # re-armed
            alert = self._temperature_due(rule, device, held, at)
            if alert is not None:
                out.append(alert)
        return out

    def _temperature_due(self, rule: Rule, device: str, held: _Held,
                         now: float) -> Alert | None:
        if held.fired or held.since is None or now - held.since < rule.duration:
            return None
        held.fired = True
        side = "above" if rule.kind == "temperature-above" else "below"
        room = self.room_of(device)
        where = room if room == device else f"{room} ({device})"
        lasting = f" for {duration_text(rule.duration)}" if rule.duration else ""
        return Alert(rule=rule.name, kind=rule.kind, at=held.since + rule.duration,
                     device=device, room=room, simulated=held.simulated,
                     message=_invented(f"{where}: {held.value:.1f} °C, {side} "
                                       f"{rule.celsius:g} °C{lasting}", held.simulated))

    def _scanner(self, device: str, state: str, detail: str, at: float,
                 simulated: str | None) -> list[Alert]:
        out: list[Alert] = []
        for rule in self._rules("scanner-error"):
            if not self._matches(rule, device):
                continue
            held = self._held.setdefault((rule.name, device), _Held())
            if at < held.last_at:
                continue
            held.last_at = at
            if state in ("error", "stalled") and not held.fired:
                held.fired = True
                text = f"{device}: Bluetooth scanner {state}" + (
                    f": {detail[:MAX_DETAIL]}" if detail else "")
                out.append(Alert(rule=rule.name, kind=rule.kind, at=at, device=device,
                                 room=self.room_of(device), simulated=simulated,
                                 message=_invented(text, simulated)))
            elif state == "ok":
                held.fired = False
        return out

    def status(self, device: str, online: bool, at: float) -> list[Alert]:
        out: list[Alert] = []
        for rule in self._rules("offline"):
            if not self._matches(rule, device):
                continue
            held = self._held.setdefault((rule.name, device), _Held())
            if online:
                held.since, held.fired = None, False
            elif held.since is None:
                held.since = at
                held.simulated = self._sim.get(device)
            alert = self._offline_due(rule, device, held, at)
            if alert is not None:
                out.append(alert)
        return out

    def _offline_due(self, rule: Rule, device: str, held: _Held, now: float) -> Alert | None:
        if held.fired or held.since is None or now - held.since < rule.duration:
            return None
        held.fired = True
        lasting = f" for {duration_text(rule.duration)}" if rule.duration else ""
        return Alert(rule=rule.name, kind=rule.kind, at=held.since + rule.duration,
                     device=device, room=self.room_of(device), simulated=held.simulated,
                     message=_invented(f"{device} offline{lasting}", held.simulated))

    def rejected(self, device: str | None, reason: str, at: float) -> list[Alert]:
        out: list[Alert] = []
        for rule in self._rules("rejected-burst"):
            burst = self._bursts[rule.name]
            burst.times.append(at)
            burst.reasons[f"{reason} from {device or 'an unknown sender'}"] += 1
            self._expire(rule, burst, at)
            if not burst.fired and len(burst.times) >= rule.count:
                burst.fired = True
                top = ", ".join(f"{n} {what}" for what, n in burst.reasons.most_common(3))
                out.append(Alert(rule=rule.name, kind=rule.kind, at=at, device=device,
                                 message=f"{len(burst.times)} messages rejected within "
                                 f"{duration_text(rule.within)}: a possible attack "
                                 f"({top})"))
        return out

    @staticmethod
    def _expire(rule: Rule, burst: _Burst, now: float) -> None:
        while burst.times and burst.times[0] <= now - rule.within:
            burst.times.popleft()
        while len(burst.times) > rule.count:
            burst.times.popleft()
        if not burst.times:
            burst.reasons.clear()
        if burst.fired and len(burst.times) < rule.count:
            burst.fired = False  # fewer than count in the window: re-armed

    # -- the timer -------------------------------------------------------------------

    def tick(self, now: float) -> list[Alert]:
        """What became due with time alone (no message): ``for`` durations, bursts
        that ended."""
        out: list[Alert] = []
        for rule in self.rules:
            if rule.kind in ("temperature-above", "temperature-below"):
                for (name, device), held in self._held.items():
                    if name == rule.name:
                        alert = self._temperature_due(rule, device, held,
                                                      min(now, held.last_at + STALE))
                        if alert is not None:
                            out.append(alert)
            elif rule.kind == "offline":
                for (name, device), held in self._held.items():
                    if name == rule.name:
                        alert = self._offline_due(rule, device, held, now)
                        if alert is not None:
                            out.append(alert)
            elif rule.kind == "rejected-burst":
                self._expire(rule, self._bursts[rule.name], now)
        return out
