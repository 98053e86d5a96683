"""``certificates.json``: the public facts the admin side writes for the Devices page.

``homewatch server init`` and every ``homewatch device ...`` command rewrite it (no key
and no secret in it, only dates)::

    {"ca": {"not_after": "2035-01-01T00:00:00Z"},
     "broker": {"not_after": "..."}, "dashboard": {"not_after": "..."},
     "devices": {"pi-kitchen": {"role": "device", "not_after": "...",
                                "key_created": "2026-10-15T16:04:01Z"},
                 "subscriber": {"role": "subscriber", ...}}}

The dashboard shows what it finds and says "unknown" for the rest: a missing, unreadable
or malformed file is logged once and treated as empty. Identities other than devices
(the subscriber, the health check) are not Pis and are left out. It is re-read when it
changes.
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
class DeviceFacts:
    not_after: float | None  # when its client certificate expires (Unix seconds)
    key_created: float | None  # when its newest payload key was made


@dataclass(frozen=True)
class Certificates:
    """Expiry times (Unix seconds) of the server certificates, and each device's facts."""

    ca: float | None = None
    broker: float | None = None
    dashboard: float | None = None
    devices: Mapping[str, DeviceFacts] = field(default_factory=dict)


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _not_after(entry: Any) -> float | None:
    return _time(entry.get("not_after")) if isinstance(entry, dict) else None


def parse(text: str) -> Certificates:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    devices = data.get("devices")
    found = {}
    if isinstance(devices, dict):
        for name, entry in devices.items():
            if isinstance(entry, dict) and entry.get("role", "device") == "device":
                found[str(name)] = DeviceFacts(not_after=_not_after(entry),
                                               key_created=_time(entry.get("key_created")))
    return Certificates(ca=_not_after(data.get("ca")), broker=_not_after(data.get("broker")),
                        dashboard=_not_after(data.get("dashboard")), devices=found)


class Inventory:
    """The inventory file, re-read when its inode, size, mtime or ctime changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._key: tuple[int, ...] | None = None
        self._facts = Certificates()
        self._problem: str | None = None

    def certificates(self) -> Certificates:
        if self.path is None:
            return self._facts
        try:
            st = self.path.stat()
        except OSError as exc:
            self._report(exc.strerror or str(exc), None)
            return self._facts
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key != self._key:
            try:
                self._facts = parse(self.path.read_text(encoding="utf-8"))
                self._report(None, key)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._report(str(getattr(exc, "strerror", None) or exc), key)
        return self._facts

    def _report(self, problem: str | None, key: tuple[int, ...] | None) -> None:
        self._key = key
        if problem is None:
            self._problem = None
            return
        self._facts = Certificates()
        if problem != self._problem:
            log.warning("certificate inventory %s: %s (certificate expiry shown as unknown)",
                        self.path, problem)
        self._problem = problem
