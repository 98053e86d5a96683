"""What the pages show, as plain JSON-ready dicts: the JSON API returns them as they are
and the templates render the same dicts (every page has a JSON twin).

Times are Unix seconds (UTC); the browser turns them into its own local time.
Temperatures are degrees Celsius. Names come from Pis: the API returns them as they
are (JSON-encoded), the templates escape them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from dashboard.inventory import Certificates
from homewatch.history import (
    RANGES,
    AlertRecord,
    Bucket,
    DeviceReport,
    Interval,
    Now,
    Simulated,
)

DEFAULT_RANGE = "24h"
UNIT = "°C"

JSON = dict[str, Any]


class BadRequest(ValueError):
    """A query parameter is missing or wrong (HTTP 400, with this message)."""


def parse_range(value: str | None) -> str:
    name = value or DEFAULT_RANGE
    if name not in RANGES:
        raise BadRequest(f"range must be one of {', '.join(RANGES)}")
    return name


def window(range_name: str, at: float) -> tuple[float, float]:
    return at - RANGES[range_name], at


def mark_of(marks: Iterable[Simulated]) -> Simulated:
    """"demo" if any mark is, else "simulated" if any is, else None."""
    seen = set(marks)
    if "demo" in seen:
        return "demo"
    return "simulated" if "simulated" in seen else None


def now_view(now: Now) -> JSON:
    pis = [asdict(p) for p in now.pis]
    people = [asdict(p) for p in now.people]
    invented = sorted(p.name for p in now.pis if p.simulated)  # Pis sending invented data
    return {"at": now.at, "people": people, "pis": pis, "invented": invented,
            "simulated": mark_of([*(p.simulated for p in now.pis),
                                  *(p.simulated for p in now.people)])}


_FIELDS: dict[type, tuple[str, ...]] = {}


def asdict(record: Any) -> JSON:
    """A flat record (no dataclass inside it) as a dict: what ``dataclasses.asdict``
    gives, without its deep copy, which cost the year's presence timeline most of its
    server time."""
    names = _FIELDS.get(type(record))
    if names is None:
        names = _FIELDS[type(record)] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


RECENT_ALERTS = 10  # on the Now page
API_ALERTS = 100  # /api/alerts


def alerts_view(at: float, alerts: list[AlertRecord]) -> JSON:
    """The latest alerts, newest first; ``simulated`` marks those invented data caused."""
    return {"at": at, "alerts": [asdict(a) for a in alerts],
            "simulated": mark_of(a.simulated for a in alerts)}


def temperature_view(device: str, range_name: str, start: float, end: float,
                     buckets: list[Bucket]) -> JSON:
    return {"device": device, "range": range_name, "start": start, "end": end, "unit": UNIT,
            "buckets": [asdict(b) for b in buckets],
            "simulated": mark_of(b.simulated for b in buckets)}


def presence_view(range_name: str, start: float, end: float,
                  people: Mapping[str, list[Interval]]) -> JSON:
    return {"range": range_name, "start": start, "end": end,
            "people": [{"name": name, "intervals": [asdict(i) for i in intervals],
                        "simulated": mark_of(i.simulated for i in intervals)}
                       for name, intervals in sorted(people.items())]}


def _latest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def devices_view(reports: list[DeviceReport],
                 rejections: Mapping[tuple[str | None, str], int], certs: Certificates,
                 now: Now) -> JSON:
    """Each Pi the history or the inventory knows. Its key age counts from the newer of
    the history's record of its key ring and the inventory's key creation time."""
    marks = {p.name: p.simulated for p in now.pis}
    by_name = {r.name: r for r in reports}
    rejected_by: dict[str | None, dict[str, int]] = {}
    for (device, reason), n in rejections.items():
        counts = rejected_by.setdefault(device, {})
        counts[reason] = counts.get(reason, 0) + n
    devices = []
    names = set(by_name) | set(certs.devices) | {d for d in rejected_by if d is not None}
    for name in sorted(names):
        r = by_name.get(name)
        facts = certs.devices.get(name)
        devices.append({
            "name": name,
            "first_seen": r.first_seen if r else None,
            "last_seen": r.last_seen if r else None,
            "key_updated_at": _latest(r.key_updated_at if r else None,
                                      facts.key_created if facts else None),
            "online": r.online if r else None,
            "readings": r.readings if r else 0,
            "rejected": dict(sorted((r.rejected if r else rejected_by.get(name, {})).items())),
            "certificate_not_after": facts.not_after if facts else None,
            "simulated": marks.get(name),
        })
    return {"at": now.at, "ca": {"not_after": certs.ca},
            "broker": {"not_after": certs.broker},
            "dashboard": {"not_after": certs.dashboard}, "devices": devices,
            "rejected_unknown": dict(sorted(rejected_by.get(None, {}).items()))}
