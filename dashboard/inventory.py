"""``certificates.json``: the public inventory of certificate expiry dates.

The admin side writes it (no key in it, only dates)::

    {"ca": {"not_after": "2035-01-01T00:00:00Z"},
     "broker": {"not_after": "..."},
     "devices": {"pi-kitchen": {"not_after": "..."}}}

The dashboard shows what it finds and says "unknown" for the rest: a missing, unreadable
or malformed file is logged once and treated as empty. It is re-read when it changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expiry:
    """Certificate expiry times (Unix seconds) by what they belong to."""

    ca: float | None = None
    broker: float | None = None
    devices: Mapping[str, float] = field(default_factory=dict)


def _when(entry: Any) -> float | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("not_after"), str):
        return None
    try:
        t = datetime.fromisoformat(entry["not_after"].replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def parse(text: str) -> Expiry:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    devices = data.get("devices")
    found = {}
    if isinstance(devices, dict):
        for name, entry in devices.items():
            when = _when(entry)
            if when is not None:
                found[str(name)] = when
    return Expiry(ca=_when(data.get("ca")), broker=_when(data.get("broker")), devices=found)


class Inventory:
    """The inventory file, re-read when its size or mtime changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._key: tuple[int, int] | None = None
        self._expiry = Expiry()
        self._problem: str | None = None

    def expiry(self) -> Expiry:
        if self.path is None:
            return self._expiry
        try:
            st = self.path.stat()
        except OSError as exc:
            self._report(f"{exc.strerror}", None)
            return self._expiry
        key = (st.st_size, st.st_mtime_ns)
        if key != self._key:
            try:
                self._expiry = parse(self.path.read_text(encoding="utf-8"))
                self._report(None, key)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._report(str(getattr(exc, "strerror", None) or exc), key)
        return self._expiry

    def _report(self, problem: str | None, key: tuple[int, int] | None) -> None:
        self._key = key
        if problem is None:
            self._problem = None
            return
        self._expiry = Expiry()
        if problem != self._problem:
            log.warning("certificate inventory %s: %s (certificate expiry shown as unknown)",
                        self.path, problem)
        self._problem = problem
