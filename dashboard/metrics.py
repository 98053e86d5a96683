"""``/metrics``: what the pages show, in Prometheus' text exposition format (0.0.4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dashboard.inventory import Certificates
from homewatch.history import DeviceReport, Now

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[Mapping[str, str], float]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{text}}} {value!r}" if text else f"{name} {value!r}")
    return lines


def render(now: Now, reports: list[DeviceReport],
           rejections: Mapping[tuple[str | None, str], int], certs: Certificates, *,
           sessions: int, login_failures: int, login_refused: int) -> str:
    pis = now.pis
    expiry: list[Sample] = [({"kind": k, "name": k}, t) for k, t in
                            (("ca", certs.ca), ("broker", certs.broker),
                             ("dashboard", certs.dashboard)) if t is not None]
    expiry += [({"kind": "device", "name": n}, f.not_after)
               for n, f in sorted(certs.devices.items()) if f.not_after is not None]
    families = [
        _family("homewatch_temperature_celsius", "gauge",
                "Latest temperature of each Pi (simulated: demo or simulated readings).",
                (({"device": p.name, "simulated": p.simulated or ""}, p.temperature)
                 for p in pis if p.temperature is not None)),
        _family("homewatch_temperature_timestamp_seconds", "gauge",
                "When each Pi's latest temperature was taken.",
                (({"device": p.name}, p.temperature_at)
                 for p in pis if p.temperature_at is not None)),
        _family("homewatch_device_online", "gauge",
                "1 while the broker reports the Pi online, 0 offline.",
                (({"device": p.name}, float(p.online)) for p in pis if p.online is not None)),
        _family("homewatch_device_last_reading_timestamp_seconds", "gauge",
                "When the latest reading of each Pi was received.",
                (({"device": p.name}, p.last_reading_at)
                 for p in pis if p.last_reading_at is not None)),
        _family("homewatch_device_scanner_ok", "gauge",
                "1 while a Pi's Bluetooth scanner reports ok.",
                (({"device": p.name}, float(p.scanner_state == "ok"))
                 for p in pis if p.scanner_state is not None)),
        _family("homewatch_device_readings_total", "counter",
                "Readings recorded per Pi since the history began.",
                (({"device": r.name}, float(r.readings)) for r in reports)),
        _family("homewatch_rejected_messages_total", "counter",
                "Messages the subscriber rejected, per device (empty: not a known device) "
                "and reason.",
                (({"device": d or "", "reason": reason}, float(n)) for (d, reason), n in
                 sorted(rejections.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])))),
        _family("homewatch_person_home", "gauge",
                "1 while a known person is home (an online Pi sees them), 0 away; no "
                "sample while not seen because the Pis that had them home are offline.",
                (({"person": p.name, "simulated": p.simulated or ""}, float(p.home))
                 for p in now.people if p.state != "unknown")),
        _family("homewatch_certificate_not_after_timestamp_seconds", "gauge",
                "When each certificate expires (from certificates.json).", expiry),
        _family("homewatch_dashboard_sessions", "gauge", "Dashboard sessions open.",
                [({}, float(sessions))]),
        _family("homewatch_dashboard_login_failures_total", "counter",
                "Logins refused for a wrong password.", [({}, float(login_failures))]),
        _family("homewatch_dashboard_login_rate_limited_total", "counter",
                "Logins refused by the rate limit.", [({}, float(login_refused))]),
    ]
    return "\n".join(line for family in families for line in family) + "\n"
