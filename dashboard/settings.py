"""The dashboard's settings: one frozen object, built defaults < HOMEWATCH_* env < CLI.

Built with :mod:`homewatch.options`, which loads no key: the dashboard holds no MQTT
credential and no payload key. It does not even hold the household password: only its
salted hash (``password.hash``), read by :mod:`dashboard.auth`.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from homewatch import options
from homewatch.errors import ConfigError
from homewatch.options import Option

DEFAULT_DIR = Path("certs/dashboard")  # made by `make up` (homewatch server init)
HISTORY_FILE = "history.db"  # in the subscriber's state directory, as it writes it

DESCRIPTION = """The Homewatch dashboard: who is home and how warm it is, over HTTPS.

  python -m dashboard            # or: homewatch-dashboard

Reads the history database the subscriber writes (read-only) and serves the Now,
History and Devices pages and a JSON API on https://BIND:PORT/, behind one household
password. Its directory (--dashboard-dir, made by `make up`) holds server.crt and
server.key (a certificate from the dashboard's own CA, certs/dashboard-ca.crt, which
browsers import and Pis never trust), password.hash (the household password's scrypt
hash: `make dashboard-password` changes it and every session ends, no restart needed)
and certificates.json (certificate expiry for the Devices page)."""


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {text}")
    return value


def _address(text: str) -> str:
    return str(ipaddress.ip_address(text.strip("[]")))


OPTIONS: tuple[Option, ...] = (
    Option("history", "the history database (SQLite; opened read-only) "
           f"(default $XDG_STATE_HOME/homewatch/subscriber/{HISTORY_FILE})",
           convert=options.path, metavar="FILE"),
    Option("dashboard-dir", "directory holding server.crt, server.key, password.hash and "
           "certificates.json", default=DEFAULT_DIR, convert=options.path, metavar="DIR"),
    Option("tls-cert", "the HTTPS certificate (default server.crt in --dashboard-dir)",
           convert=options.path, metavar="FILE"),
    Option("tls-key", "its private key (default server.key in --dashboard-dir)",
           convert=options.path, metavar="FILE"),
    Option("password-hash", "the household password's hash (default password.hash in "
           "--dashboard-dir); re-read when it changes", convert=options.path,
           metavar="FILE"),
    Option("bind", "address to listen on", default="0.0.0.0", convert=_address,  # noqa: S104
           metavar="ADDRESS"),
    Option("port", "HTTPS port", default=8443, convert=_port, metavar="PORT"),
    Option("certificates", "certificates.json: when the CA's, the broker's, the "
           "dashboard's and each device's certificate expire, for the Devices page "
           "(default certificates.json in --dashboard-dir; optional; re-read when it "
           "changes)", convert=options.path, metavar="FILE"),
    Option("metrics-token-file", "a bearer token that also opens /metrics, for Prometheus "
           "(optional; /metrics always accepts a logged-in session)", convert=options.path,
           metavar="FILE"),
    Option("session-hours", "a session ends this long after its last request",
           default=24.0, convert=options.positive_float, metavar="HOURS"),
    options.HEALTH_FILE_OPTION,
    options.SHOW_SETTINGS_OPTION,
    options.LOG_LEVEL_OPTION,
)


@dataclass(frozen=True, kw_only=True)
class DashboardSettings:
    history: Path
    tls_cert: Path
    tls_key: Path
    password_hash: Path
    bind: str
    port: int
    certificates: Path
    metrics_token_file: Path | None
    session_seconds: float
    health_file: Path | None
    show_settings: bool
    log_level: str

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"https://{host}:{self.port}/"


def parser() -> argparse.ArgumentParser:
    return options.build_parser("dashboard", DESCRIPTION, OPTIONS)


def build(argv: Sequence[str] | None, environ: Mapping[str, str]) -> DashboardSettings:
    args = parser().parse_args(argv)
    v = options.resolve(OPTIONS, args, environ)
    directory: Path = v["dashboard-dir"]
    return DashboardSettings(
        history=v["history"] or options.default_state_dir("subscriber") / HISTORY_FILE,
        tls_cert=v["tls-cert"] or directory / "server.crt",
        tls_key=v["tls-key"] or directory / "server.key",
        password_hash=v["password-hash"] or directory / "password.hash",
        bind=v["bind"],
        port=v["port"],
        certificates=v["certificates"] or directory / "certificates.json",
        metrics_token_file=v["metrics-token-file"],
        session_seconds=v["session-hours"] * 3600.0,
        health_file=v["health-file"],
        show_settings=v["show-settings"],
        log_level=v["log-level"],
    )


def check_files(settings: DashboardSettings) -> None:
    """Fail at start, in one line naming the fix, when a file the dashboard needs is
    missing (the TLS key and the password are read later, by whom needs them)."""
    for what, path, fix in (
        ("TLS certificate", settings.tls_cert, "run `make up` (its init makes it)"),
        ("TLS key", settings.tls_key, "run `make up` (its init makes it)"),
        ("password hash", settings.password_hash, "run `make up` or "
         "`make dashboard-password`"),
        ("history database", settings.history, "start the subscriber first (it makes "
         "the database), or set --history"),
    ):
        if not path.is_file():
            raise ConfigError(f"{what} not found: {path} ({fix})")
