"""The subscriber's settings: one frozen object, built defaults < HOMEWATCH_* env < CLI."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from homewatch import config
from homewatch.config import Option
from homewatch.envelope import MAX_LATE
from homewatch.errors import ConfigError, ProvisionError
from homewatch.history import DEFAULT_RETENTION_DAYS
from homewatch.mqtt import ConnectionSettings
from homewatch.provision import (
    BRIDGE_PREFIX,
    DISCOVERY_PREFIX,
    SUBSCRIBER,
    overlaps,
    validate_name,
)
from homewatch.url import validate_base
from subscriber.alert_rules import AlertsConfig, load_alerts
from subscriber.rooms import DEFAULT_DWELL, DEFAULT_HYSTERESIS

DESCRIPTION = """Subscribe to every device's readings, verify and decrypt them, print them.

  python -m subscriber mqtts://HOST:8883/home

Prints `Topic:<topic>,Payload:<json>` per reading (--json: JSON lines) and keeps every
reading in a history database (--history) for the dashboard. Rejected messages
are logged (one line each) and counted; the program keeps running. The password comes
from --password-file (or HOMEWATCH_PASSWORD); device key rings from --keys-dir."""

OPTIONS: tuple[Option, ...] = (
    config.URL_OPTION,
    Option("username", "MQTT user name", default=SUBSCRIBER, metavar="NAME"),
    Option("credentials", "identity directory holding password, keys/ and (mutual TLS) "
           "client.crt + client.key (default certs/clients/<username>)", convert=config.path,
           metavar="DIR"),
    Option("ca", "CA certificate that signed the broker's", default=Path("certs/ca.crt"),
           convert=config.path, metavar="FILE"),
    Option("password-file", "file holding the MQTT password "
           "(default certs/clients/<username>/password)", convert=config.path, metavar="FILE"),
    Option("keys-dir", "directory of device key rings <device>.key "
           "(default certs/clients/<username>/keys)", convert=config.path, metavar="DIR"),
    *config.CLIENT_CERT_OPTIONS,
    Option("client-id", "MQTT client id of the persistent session "
           "(default homewatch-sub-<username>)", metavar="ID"),
    Option("ttl", "a reading sent longer ago than this is late: accepted only if it "
           "continues its device's stream (one the broker kept while the subscriber was away)",
           default=300.0, convert=config.positive_float, metavar="SECONDS"),
    Option("max-late", "refuse late readings sent longer ago than this (default 14 days, "
           "as long as the broker keeps a session)", default=MAX_LATE,
           convert=config.positive_float, metavar="SECONDS"),
    Option("clock-skew", "tolerated clock difference between devices and this host",
           default=60.0, convert=config.nonneg_float, metavar="SECONDS"),
    Option("json", "print JSON lines instead of the tutorial's format", default=False,
           flag=True),
    Option("state-dir", "where replay protection state is kept "
           "(default $XDG_STATE_HOME/homewatch/subscriber)", convert=config.path,
           metavar="DIR"),
    Option("history", "the history database the dashboard reads (default "
           "<state-dir>/history.db)", convert=config.path, metavar="FILE"),
    Option("no-history", "keep no history (the console lines only)", default=False,
           flag=True),
    Option("history-retention", "keep each raw reading (and its 5-minute rollup) this many "
           "days; hourly and daily rollups are kept for good",
           default=DEFAULT_RETENTION_DAYS, convert=config.positive_float, metavar="DAYS"),
    Option("room-hysteresis", "a person moves to another room only when a Pi there hears "
           "them better by at least this much (smoothed signal)", default=DEFAULT_HYSTERESIS,
           convert=config.nonneg_float, metavar="DB"),
    Option("room-dwell", "... and has heard them better for at least this long (by "
           "that Pi's own reading times)", default=DEFAULT_DWELL, convert=config.nonneg_float,
           metavar="SECONDS"),
    Option("alerts", "the alerts file: rules and webhook (default: alerts.toml in the "
           "identity directory, used when it exists; see the README's Alerts)",
           convert=config.path, metavar="FILE"),
    Option("homeassistant", "Home Assistant bridge: publish discovery configs and the "
           "decrypted states, in plain text, for Home Assistant's MQTT integration (README: "
           "Home Assistant)", default=False, flag=True),
    Option("discovery-prefix", "Home Assistant's discovery prefix (the stack's ACL lets "
           "only the subscriber write it)", default=DISCOVERY_PREFIX, metavar="TOPIC"),
    Option("bridge-prefix", "where the bridge publishes its plaintext states (the stack's "
           "ACL lets only the subscriber write it)", default=BRIDGE_PREFIX, metavar="TOPIC"),
    Option("count", "exit after this many accepted readings (0: run until stopped)",
           default=0, convert=int, metavar="N"),
    *config.COMMON_OPTIONS,
)


@dataclass(frozen=True, kw_only=True)
class SubscriberSettings:
    connection: ConnectionSettings
    keys_dir: Path
    ttl: float
    max_late: float
    clock_skew: float
    json: bool
    state_dir: Path
    history: Path | None  # None: --no-history
    history_retention_days: float
    room_hysteresis: float
    room_dwell: float
    alerts: AlertsConfig | None  # None: no alerts file
    count: int
    homeassistant: bool
    discovery_prefix: str
    bridge_prefix: str
    health_file: Path | None
    show_settings: bool
    log_level: str


def parser() -> argparse.ArgumentParser:
    return config.program_parser("subscriber", DESCRIPTION, OPTIONS)


def build(argv: Sequence[str] | None, environ: Mapping[str, str]) -> SubscriberSettings:
    args = parser().parse_args(argv)
    v = config.resolve(OPTIONS, args, environ)
    url = config.broker_url(v, "subscriber")
    username = v["username"]
    try:
        validate_name(username)
    except ProvisionError as exc:
        raise ConfigError(f"username: {exc}") from None
    if v["count"] < 0:
        raise ConfigError("--count: must be 0 or more")
    creds = config.credentials_dir(v)
    client_dir = creds if creds is not None else Path("certs/clients") / username
    client_cert, client_key = config.client_certificate(v["client-cert"], v["client-key"],
                                                        client_dir)
    keys_dir = v["keys-dir"] or client_dir / "keys"
    if not keys_dir.is_dir():
        raise ConfigError(f"keys directory not found: {keys_dir} (provision a device with "
                          "`homewatch device add NAME`, or set --keys-dir)")
    connection = ConnectionSettings(
        url=url,
        username=username,
        client_id=v["client-id"] or f"homewatch-sub-{username}",
        ca_file=v["ca"] if url.tls else None,
        password=config.load_password(v["password-file"] or client_dir / "password", environ),
        client_cert=client_cert,
        client_key=client_key,
        clean_session=False,
    )
    state_dir = v["state-dir"] or config.default_state_dir("subscriber")
    _check_prefixes(url.base, v["discovery-prefix"], v["bridge-prefix"])
    return SubscriberSettings(
        connection=connection,
        keys_dir=keys_dir,
        ttl=v["ttl"],
        max_late=v["max-late"],
        clock_skew=v["clock-skew"],
        json=v["json"],
        state_dir=state_dir,
        history=None if v["no-history"] else v["history"] or state_dir / "history.db",
        history_retention_days=v["history-retention"],
        room_hysteresis=v["room-hysteresis"],
        room_dwell=v["room-dwell"],
        alerts=_alerts(v["alerts"], client_dir),
        count=v["count"],
        homeassistant=v["homeassistant"],
        discovery_prefix=v["discovery-prefix"],
        bridge_prefix=v["bridge-prefix"],
        health_file=v["health-file"],
        show_settings=v["show-settings"],
        log_level=v["log-level"],
    )


def _alerts(given: Path | None, client_dir: Path) -> AlertsConfig | None:
    """The alerts file named (it must exist), else the identity directory's
    ``alerts.toml`` when there (none: no alerts). A bad file is a ConfigError (exit 2)."""
    path = given or client_dir / "alerts.toml"
    if given is None and not path.exists():
        return None
    if not path.is_file():
        raise ConfigError(f"alerts file not found: {path}")
    return load_alerts(path)


def _check_prefixes(base: str, discovery: str, bridge: str) -> None:
    """Plain topics (no wildcard, no ``$``), and none inside another: the readings' base,
    the discovery prefix and the bridge's prefix are three separate trees, so that the
    ACL can keep devices out of the two the bridge writes."""
    for option, prefix in (("--discovery-prefix", discovery), ("--bridge-prefix", bridge)):
        try:
            validate_base(prefix)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None
        if overlaps(prefix, base):
            raise ConfigError(f"{option} {prefix!r} overlaps the base topic {base!r}: devices "
                              "write under the base; choose separate trees")
    if overlaps(discovery, bridge):
        raise ConfigError(f"--discovery-prefix {discovery!r} and --bridge-prefix {bridge!r} "
                          "overlap; choose separate trees")
