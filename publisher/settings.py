"""The publisher's settings: one frozen object, built defaults < HOMEWATCH_* env < CLI."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homewatch import config
from homewatch.config import Option
from homewatch.errors import ConfigError, ProvisionError
from homewatch.fernet import KeyRing
from homewatch.mqtt import ConnectionSettings
from homewatch.provision import validate_name
from homewatch.secrets import Secret, parse_keyring, read_secret_file
from publisher import presence, sensors

BUNDLE_ENV = "homewatch.env"  # in a device bundle: the broker URL and the device name
BUNDLE_KEYS = ("HOMEWATCH_URL", "HOMEWATCH_DEVICE")  # nothing else is taken from it

DESCRIPTION = """Publish temperature and presence to a Homewatch broker, encrypted end to end.

  python -m publisher mqtts://HOST:8883/home

Secrets are never command-line values: the MQTT password comes from --password-file
(or HOMEWATCH_PASSWORD), the payload key ring from --key-file (or HOMEWATCH_KEY).
Defaults follow the provisioning layout: certs/clients/<device>/{password,fernet.key}.
With --credentials DIR (an unpacked device bundle) the broker URL and device name come
from its homewatch.env, so `publisher --credentials DIR` is enough."""

OPTIONS: tuple[Option, ...] = (
    config.URL_OPTION,
    Option("device", "device identity = MQTT user name (default: the --credentials "
           "directory's name, else this host's name)", metavar="NAME"),
    Option("room", "the room this Pi stands in, shown with its temperature and as the room "
           "of the people it hears best (1-64 printable characters; default: the device "
           "name)", metavar="NAME"),
    Option("credentials", "a device bundle directory holding ca.crt, password and "
           "fernet.key (made by `homewatch device add --bundle`)", convert=config.path,
           metavar="DIR"),
    Option("ca", "CA certificate that signed the broker's (default certs/ca.crt, or "
           "ca.crt in --credentials)", convert=config.path, metavar="FILE"),
    Option("password-file", "file holding the MQTT password "
           "(default certs/clients/<device>/password)", convert=config.path, metavar="FILE"),
    Option("key-file", "payload key ring file, newest key first "
           "(default certs/clients/<device>/fernet.key)", convert=config.path, metavar="FILE"),
    *config.CLIENT_CERT_OPTIONS,
    Option("interval", "seconds between readings", default=10.0,
           convert=config.positive_float, metavar="SECONDS"),
    Option("temperature", "temperature source: auto finds a sensor or stops with an error; "
           "simulated invents values, marked as such; none publishes no temperature",
           default="auto", choices=sensors.KINDS),
    Option("sysfs", "root of the sysfs tree to read sensors from", default=Path("/sys"),
           convert=config.path, metavar="DIR"),
    Option("scanner", "presence scanner: auto (= bleak; a missing adapter is reported as a "
           "scanner error), simulated (invented, marked as such) or none", default="auto",
           choices=presence.KINDS),
    Option("demo", "demo mode: simulated temperature and presence, marked 'demo' wherever "
           "they appear", default=False, flag=True),
    Option("known-devices", "file mapping MAC addresses (or irk:KEY) to names (default: "
           "known-devices in --credentials, when there)", convert=config.path,
           metavar="FILE"),
    Option("scan-duration", "seconds of each BLE scan window, at most --interval (as long "
           "as it: continuous scanning)", default=5.0,
           convert=config.positive_float, metavar="SECONDS"),
    Option("scan-mode", "active (asks devices for a scan response) or passive (only "
           "listens; needs BlueZ 5.56+ with --experimental)", default="active",
           choices=presence.SCAN_MODES),
    Option("adapter", "Bluetooth adapter (e.g. hci0)", metavar="NAME"),
    Option("stall-cycles", "scan windows in a row without any advertisement (strangers "
           "count) after which the scanner counts as stalled: discovery is restarted, then "
           "the adapter power-cycled (at most once an hour); 0: never", default=6,
           convert=int, metavar="N"),
    Option("hash-strangers", "also publish unknown devices, as a count and a keyed hash of "
           "each address (the key stays on this device); off: strangers are only counted "
           "here", default=False, flag=True),
    Option("rssi-threshold", "weakest signal (dBm) that counts as home", default=-90,
           convert=int, metavar="DBM"),
    Option("away-after", "seconds unseen before a device counts as away", default=180.0,
           convert=config.positive_float, metavar="SECONDS"),
    Option("state-dir", "where the outbox (and sequence counter) is kept "
           "(default $XDG_STATE_HOME/homewatch/publisher)", convert=config.path, metavar="DIR"),
    Option("journal-dir", "a directory on a tmpfs for the RAM journal in front of the "
           "outbox: readings the broker acknowledges promptly never reach the disk "
           "(default $RUNTIME_DIRECTORY, which systemd's RuntimeDirectory= sets, else "
           "$XDG_RUNTIME_DIR/homewatch; 'none': no journal, every reading synced to disk)",
           metavar="DIR"),
    Option("spill-after", "seconds a reading waits in the RAM journal for the broker's "
           "acknowledgement before it is moved to the disk outbox; what a power cut can "
           "lose (0: no journal, every reading synced to disk)", default=5.0,
           convert=config.nonneg_float, metavar="SECONDS"),
    Option("outbox-limit", "most readings kept while the broker is unreachable; beyond it "
           "the oldest are dropped (counted)", default=100_000, convert=int, metavar="N"),
    Option("count", "stop after this many readings (0: run until stopped)", default=0,
           convert=int, metavar="N"),
    *config.COMMON_OPTIONS,
)


@dataclass(frozen=True, kw_only=True)
class PublisherSettings:
    connection: ConnectionSettings
    device: str
    room: str
    keyring: Secret
    key_file: Path | None
    interval: float
    temperature: str
    sysfs: Path
    scanner: str
    demo: bool
    known_devices: Path | None
    scan_duration: float
    scan_mode: str
    adapter: str | None
    stall_cycles: int
    hash_strangers: bool
    rssi_threshold: int
    away_after: float
    state_dir: Path
    journal_dir: Path | None
    spill_after: float
    outbox_limit: int
    count: int
    health_file: Path | None
    show_settings: bool
    log_level: str

    def ring(self) -> KeyRing:
        return parse_keyring(self.keyring.reveal(), "payload key ring")


def parser() -> argparse.ArgumentParser:
    return config.program_parser("publisher", DESCRIPTION, OPTIONS)


def _scan_duration(v: Mapping[str, Any], args: argparse.Namespace,
                   environ: Mapping[str, str]) -> float:
    """One scan window: at most the interval (as long as it: continuous scanning). The
    default shrinks to a shorter interval; a longer window asked for is refused."""
    duration: float = v["scan-duration"]
    interval: float = v["interval"]
    asked = getattr(args, "scan-duration", None) is not None or \
        "HOMEWATCH_SCAN_DURATION" in environ
    if not asked:
        return min(duration, interval)
    if duration > interval and v["scanner"] != "simulated":
        raise ConfigError(f"--scan-duration ({duration:g} s) must not be longer than "
                          f"--interval ({interval:g} s); as long as it scans continuously")
    return duration


def journal_dir(asked: str | None, environ: Mapping[str, str]) -> Path | None:
    """The RAM journal's directory: as asked ('none': none), else systemd's
    RuntimeDirectory, else the user's runtime directory (both tmpfs), else none."""
    if asked is not None:
        return None if asked.strip().lower() in {"none", ""} else Path(asked)
    if environ.get("RUNTIME_DIRECTORY"):
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "homewatch"
    return None


MAX_ROOM = 64


def validate_room(room: str) -> str:
    """A room name: 1-64 printable characters (spaces inside allowed), trimmed."""
    trimmed = room.strip()
    if not trimmed or len(trimmed) > MAX_ROOM or not trimmed.isprintable():
        raise ConfigError(f"--room: {room!r} is not a room name (1-{MAX_ROOM} printable "
                          "characters, e.g. Kitchen)")
    return trimmed


def build(argv: Sequence[str] | None, environ: Mapping[str, str]) -> PublisherSettings:
    args = parser().parse_args(argv)
    v = config.resolve(OPTIONS, args, environ)
    creds = config.credentials_dir(v)
    if creds is not None and (creds / BUNDLE_ENV).is_file():
        # The bundle's broker URL and device name, below the real environment and the CLI.
        bundle = config.read_env_file(creds / BUNDLE_ENV)
        environ = {**{k: bundle[k] for k in BUNDLE_KEYS if k in bundle}, **environ}
        v = config.resolve(OPTIONS, args, environ)
    url = config.broker_url(v, "publisher")
    device = v["device"] or (creds.name if creds is not None else config.default_identity())
    try:
        validate_name(device)
    except ProvisionError as exc:
        raise ConfigError(f"device: {exc}") from None
    room = validate_room(v["room"]) if v["room"] is not None else device
    if v["demo"]:
        if {v["temperature"], v["scanner"]} - {"auto", "simulated"}:
            raise ConfigError("--demo invents every reading: leave --temperature and "
                              "--scanner unset")
        v = {**v, "temperature": "simulated", "scanner": "simulated"}
    if v["temperature"] == v["scanner"] == "none":
        raise ConfigError("--temperature none and --scanner none: nothing to publish")

    if v["count"] < 0:
        raise ConfigError("--count: must be 0 or more")
    if v["stall-cycles"] < 0:
        raise ConfigError("--stall-cycles: must be 0 (off) or more")
    if v["outbox-limit"] < 1:
        raise ConfigError("--outbox-limit: must be at least 1")
    scan_duration = _scan_duration(v, args, environ)
    client_dir = creds if creds is not None else Path("certs/clients") / device
    ca = v["ca"] or (creds / "ca.crt" if creds is not None else Path("certs/ca.crt"))
    password_file = v["password-file"] or client_dir / "password"
    key_file: Path | None = None
    if "HOMEWATCH_KEY" in environ:
        keyring = Secret(environ["HOMEWATCH_KEY"].replace(",", "\n"))
    else:
        key_file = v["key-file"] or client_dir / "fernet.key"
        keyring = Secret(read_secret_file(key_file, "key ring"))
    parse_keyring(keyring.reveal(), "payload key ring")  # validate now, fail early
    client_cert, client_key = config.client_certificate(v["client-cert"], v["client-key"],
                                                        client_dir)
    connection = ConnectionSettings(
        url=url,
        username=device,
        client_id=f"homewatch-pub-{device}",
        ca_file=ca if url.tls else None,
        password=config.load_password(password_file, environ),
        client_cert=client_cert,
        client_key=client_key,
    )
    return PublisherSettings(
        connection=connection,
        device=device,
        room=room,
        keyring=keyring,
        key_file=key_file,
        interval=v["interval"],
        temperature=v["temperature"],
        sysfs=v["sysfs"],
        scanner=v["scanner"],
        demo=v["demo"],
        known_devices=v["known-devices"] or (
            creds / "known-devices" if creds is not None
            and (creds / "known-devices").is_file() else None),
        scan_duration=scan_duration,
        scan_mode=v["scan-mode"],
        adapter=v["adapter"],
        stall_cycles=v["stall-cycles"],
        hash_strangers=v["hash-strangers"],
        rssi_threshold=v["rssi-threshold"],
        away_after=v["away-after"],
        state_dir=v["state-dir"] or config.default_state_dir("publisher"),
        journal_dir=journal_dir(v["journal-dir"], environ),
        spill_after=v["spill-after"],
        outbox_limit=v["outbox-limit"],
        count=v["count"],
        health_file=v["health-file"],
        show_settings=v["show-settings"],
        log_level=v["log-level"],
    )
