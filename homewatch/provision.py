"""Identities: MQTT passwords, Fernet key rings, the broker's password and ACL files.

Layout under the certs directory (all generated, all gitignored)::

    certs/ca.crt                           the project CA (scripts/gen-certs.sh)
    certs/broker/{server.crt,server.key}   the broker's certificate (gen-certs.sh)
    certs/broker/ca.crt                    copy of the CA for the broker's mount
    certs/broker/passwd                    Mosquitto password file (PBKDF2-SHA512, $7$)
    certs/broker/acl                       Mosquitto ACL file, generated from passwd
    certs/clients/<name>/password          the identity's MQTT password (0600)
    certs/clients/<device>/fernet.key      a device's payload key ring (0600)
    certs/clients/subscriber/keys/<device>.key   the subscriber's copy of each key ring

The identity named ``subscriber`` may read ``BASE/#`` and write the Home Assistant
bridge's topics (``homewatch/#``, its plaintext states, and ``homeassistant/#``, the
discovery configs); the ``homeassistant`` identity may only read those two; every other
identity is a device that may only write ``BASE/<its name>/#``. Nothing else is allowed.
A base that overlaps either prefix is refused, so no device can write into them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from homewatch import pki
from homewatch.errors import ProvisionError
from homewatch.secrets import ensure_private_dir, new_key, write_private_file
from homewatch.url import DEFAULT_BASE, validate_base

log = logging.getLogger(__name__)

SUBSCRIBER = "subscriber"
HEALTHCHECK = "healthcheck"  # the broker container's own health probe
HOMEASSISTANT = "homeassistant"  # Home Assistant's MQTT integration: reads the bridge only
DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's discovery configs (its default)
BRIDGE_PREFIX = "homewatch"  # the bridge's plaintext states
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's own default for $7$ hashes
# Not device names: the stack's own identities, and the bridge's topic prefixes (a device
# named so could be mistaken for them in logs and ACLs).
RESERVED = frozenset({"broker", "clients", HEALTHCHECK, HOMEASSISTANT, BRIDGE_PREFIX})
INTERNAL = frozenset({HEALTHCHECK, HOMEASSISTANT})  # made by the stack, never as devices


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ProvisionError(
            f"invalid identity name {name!r}: use lower-case letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters ('/', '+' and '#' "
            "would break the ACL patterns)")
    if name in RESERVED:
        raise ProvisionError(f"identity name {name!r} is reserved")
    return name


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2.0 ``$7$`` password hash (PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt=salt,
                                                iterations=int(parts[2])), encoded)


@dataclass(frozen=True)
class Layout:
    """Where each generated file lives under a certs directory."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def passwd(self) -> Path:
        return self.broker_dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.broker_dir / "acl"

    def client_dir(self, name: str) -> Path:
        return self.root / "clients" / name

    def password(self, name: str) -> Path:
        return self.client_dir(name) / "password"

    def device_key(self, name: str) -> Path:
        return self.client_dir(name) / "fernet.key"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl(self) -> Path:
        return self.broker_dir / "crl.pem"

    def cert_dir(self, name: str) -> Path:
        # the health check's certificate must be inside the broker's mount
        return self.healthcheck_config.parent if name == HEALTHCHECK else self.client_dir(name)

    def client_cert(self, name: str) -> Path:
        return self.cert_dir(name) / "client.crt"

    def client_key(self, name: str) -> Path:
        return self.cert_dir(name) / "client.key"

    @property
    def healthcheck_config(self) -> Path:
        """mosquitto_sub's option file for the broker container's health check."""
        return self.broker_dir / "healthcheck" / "mosquitto_sub"

    @property
    def subscriber_keys(self) -> Path:
        return self.client_dir(SUBSCRIBER) / "keys"

    def subscriber_key(self, device: str) -> Path:
        return self.subscriber_keys / f"{device}.key"


def read_passwd(path: Path) -> dict[str, str]:
    users: dict[str, str] = {}
    if not path.exists():
        return users
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            user, _, encoded = line.partition(":")
            users[user] = encoded
    return users


def overlaps(a: str, b: str) -> bool:
    """True when topic prefix ``a`` contains ``b`` or ``b`` contains ``a`` (by levels)."""
    x, y = a.split("/"), b.split("/")
    return x[: len(y)] == y or y[: len(x)] == x


def check_base(base: str) -> str:
    """A valid base topic that overlaps neither of the Home Assistant bridge's prefixes
    (devices write under the base: they must never reach the discovery configs or the
    bridge's states)."""
    validate_base(base)
    for prefix in (DISCOVERY_PREFIX, BRIDGE_PREFIX):
        if overlaps(base, prefix):
            raise ProvisionError(f"base topic {base!r} overlaps {prefix!r}, which the Home "
                                 "Assistant bridge uses: devices could write into it; "
                                 "choose another base")
    return base


def render_acl(users: list[str], base: str) -> str:
    check_base(base)
    lines = [
        "# Generated by `homewatch device` - do not edit; changes are overwritten.",
        "# Devices may only write under their own name; the subscriber may only read them",
        "# (and write the Home Assistant bridge's topics); Home Assistant may only read",
        "# those. Anything not listed here is denied.",
        "",
    ]
    for user in sorted(users):
        lines.append(f"user {user}")
        if user == SUBSCRIBER:
            lines.append(f"topic read {base}/#")
            lines.append(f"topic write {DISCOVERY_PREFIX}/#")
            lines.append(f"topic write {BRIDGE_PREFIX}/#")
        elif user == HEALTHCHECK:
            lines.append("topic read $SYS/broker/uptime")
        elif user == HOMEASSISTANT:
            lines.append(f"topic read {DISCOVERY_PREFIX}/#")
            lines.append(f"topic read {BRIDGE_PREFIX}/#")
        else:
            lines.append(f"topic write {base}/{user}/#")
        lines.append("")
    return "\n".join(lines)


def _write_broker_files(layout: Layout, users: dict[str, str], base: str) -> None:
    text = "".join(f"{u}:{h}\n" for u, h in sorted(users.items()))
    write_private_file(layout.passwd, text)
    write_private_file(layout.acl, render_acl(list(users), base))


def share_directory(directory: Path, gid: int) -> None:
    """Make ``directory`` setgid ``gid`` (2750): files made in it become readable by that
    group (a container's user) and by nobody else."""
    ensure_private_dir(directory)
    try:
        os.chown(directory, -1, gid)
    except PermissionError:
        raise ProvisionError(f"cannot give {directory} to group {gid}: run as root, or "
                             "through scripts/admin.sh") from None
    directory.chmod(0o2750)
    for child in directory.rglob("*"):
        os.chown(child, -1, gid)
        child.chmod(0o2750 if child.is_dir() else 0o640)


@dataclass(frozen=True)
class Provisioned:
    name: str
    password_file: Path
    key_file: Path | None


def add_identity(layout: Layout, name: str, *, base: str = DEFAULT_BASE,
                 force: bool = False, group: int | None = None,
                 _internal: bool = False) -> Provisioned:
    """Create an identity's password (and, for a device, its key ring); update the broker.

    ``group``: the client directory is shared with that group (a container's user).
    """
    if not (_internal and name in INTERNAL):
        validate_name(name)
    check_base(base)
    users = read_passwd(layout.passwd)
    if name in users and not force:
        raise ProvisionError(
            f"identity {name!r} already exists; `homewatch device add {name} --force` "
            "replaces its password and key (the old ones stop working)")
    if group is not None:
        share_directory(layout.client_dir(name), group)
    password = secrets.token_urlsafe(32)
    write_private_file(layout.password(name), password + "\n")
    cert = _issue_cert(layout, name, replace=name in users)
    if name == HEALTHCHECK:
        write_private_file(layout.healthcheck_config,
                           _healthcheck_config(password, with_cert=cert is not None))
    key_file: Path | None = None
    if name not in (SUBSCRIBER, HEALTHCHECK, HOMEASSISTANT):
        ring = keyring_text([new_key()])
        key_file = layout.device_key(name)
        write_private_file(key_file, ring)
        write_private_file(layout.subscriber_key(name), ring)
    users[name] = hash_password(password)
    layout.broker_dir.mkdir(parents=True, exist_ok=True)
    _write_broker_files(layout, users, base)
    log.info("provisioned %s", name)
    return Provisioned(name=name, password_file=layout.password(name), key_file=key_file)


def _healthcheck_config(password: str, *, with_cert: bool) -> str:
    # Read by mosquitto_sub from $XDG_CONFIG_HOME/mosquitto_sub: keeps the password off
    # the health check's command line. The certificate serves mutual-TLS mode.
    text = ("-h localhost\n-p 8883\n--cafile /mosquitto/certs/ca.crt\n"
            f"-u {HEALTHCHECK}\n-P {password}\n")
    if with_cert:
        text += ("--cert /mosquitto/certs/healthcheck/client.crt\n"
                 "--key /mosquitto/certs/healthcheck/client.key\n")
    return text


def _issue_cert(layout: Layout, name: str, *, replace: bool) -> x509.Certificate | None:
    """Issue the identity's client certificate (revoking the one it replaces), and make
    sure the broker has a CRL. Without the CA key (a CA kept offline) there is none."""
    if not layout.ca_key.exists():
        log.warning("no CA key at %s: %s gets no client certificate (mutual TLS)",
                    layout.ca_key, name)
        return None
    ca = pki.load_ca(layout.ca, layout.ca_key)
    old = layout.client_cert(name)
    if replace and old.exists():
        pki.write_crl(ca, layout.crl, revoke=pki.load_cert(old))
    cert = pki.issue_client_cert(ca, name, layout.client_cert(name), layout.client_key(name))
    if not layout.crl.exists():
        pki.write_crl(ca, layout.crl)
    return cert


def keyring_text(keys: list[str], created: list[str] | None = None) -> str:
    """Key ring file text: newest first, each key preceded by its creation time."""
    stamps = created or [_utcnow()] * len(keys)
    return "".join(f"# created {c}\n{k}\n" for k, c in zip(keys, stamps, strict=True))


def read_keyring_entries(path: Path) -> list[tuple[str, str]]:
    """(key, created) pairs of a key ring file, newest first; created may be ''."""
    entries: list[tuple[str, str]] = []
    created = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("# created "):
            created = line[len("# created "):]
        elif line and not line.startswith("#"):
            entries.append((line, created))
            created = ""
    return entries


def _utcnow() -> str:
    return pki.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def rotate_key(layout: Layout, name: str, *, keep: int = 2) -> int:
    """Put a new key first in the device's and the subscriber's key rings, keeping the
    ``keep`` newest in all. Tokens under the previous key still open: nothing in flight
    is lost. Returns the number of keys in the ring."""
    validate_name(name)
    if name == SUBSCRIBER or not layout.device_key(name).exists():
        raise ProvisionError(f"no device named {name!r} with a key ring")
    if keep < 2:
        raise ProvisionError("--keep must be at least 2 (the new key and the one in use)")
    entries = [(new_key(), _utcnow()), *read_keyring_entries(layout.device_key(name))][:keep]
    text = keyring_text([k for k, _ in entries], [c for _, c in entries])
    # the subscriber first: it must accept the new key before the device uses it
    write_private_file(layout.subscriber_key(name), text)
    write_private_file(layout.device_key(name), text)
    return len(entries)


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    role: str
    key_created: str | None
    cert_expires: dt.datetime | None


def describe_identities(layout: Layout) -> list[IdentityInfo]:
    infos = []
    for name in list_identities(layout):
        role = ("subscriber" if name == SUBSCRIBER else
                "health check" if name == HEALTHCHECK else
                "home assistant" if name == HOMEASSISTANT else "device")
        key_created = None
        if layout.device_key(name).exists():
            entries = read_keyring_entries(layout.device_key(name))
            key_created = entries[0][1] if entries else None
        expires = None
        if layout.client_cert(name).exists():
            expires = pki.load_cert(layout.client_cert(name)).not_valid_after_utc
        infos.append(IdentityInfo(name, role, key_created, expires))
    return infos


def remove_identity(layout: Layout, name: str, *, base: str = DEFAULT_BASE) -> None:
    """Remove an identity from the broker files and delete its material."""
    if name != HOMEASSISTANT:
        validate_name(name)
    users = read_passwd(layout.passwd)
    if name not in users:
        raise ProvisionError(f"no identity named {name!r}")
    del users[name]
    if layout.client_cert(name).exists() and layout.ca_key.exists():
        ca = pki.load_ca(layout.ca, layout.ca_key)
        pki.write_crl(ca, layout.crl, revoke=pki.load_cert(layout.client_cert(name)))
    _write_broker_files(layout, users, base)
    if name == SUBSCRIBER:  # keep the device key rings the subscriber holds
        layout.password(name).unlink(missing_ok=True)
        return
    shutil.rmtree(layout.client_dir(name), ignore_errors=True)
    layout.subscriber_key(name).unlink(missing_ok=True)


def list_identities(layout: Layout) -> list[str]:
    return sorted(read_passwd(layout.passwd))


def make_bundle(layout: Layout, name: str, *, url: str, out_dir: Path) -> Path:
    """Pack what a Pi needs into ``out_dir/<name>.tar.gz`` (0600).

    Contents, under ``<name>/``: ``ca.crt``, ``password``, ``fernet.key``, ``client.crt``
    and ``client.key`` when made, and ``homewatch.env`` (the non-secret settings: broker
    URL and device name).
    """
    import io
    import tarfile
    import time as _time

    validate_name(name)
    files = {
        "ca.crt": layout.ca,
        "password": layout.password(name),
        "fernet.key": layout.device_key(name),
    }
    for what, path in files.items():
        if not path.exists():
            raise ProvisionError(f"cannot bundle {name}: {what} missing ({path})")
    if layout.client_cert(name).exists():
        files["client.crt"] = layout.client_cert(name)
        files["client.key"] = layout.client_key(name)
    env = (f"# Homewatch publisher settings for {name}\n"
           f"HOMEWATCH_URL={url}\nHOMEWATCH_DEVICE={name}\n")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = out_dir / f"{name}.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = [(n, p.read_bytes(), 0o644 if n.endswith(".crt") else 0o600)
                   for n, p in files.items()]
        members.append(("homewatch.env", env.encode(), 0o644))
        for member, data, mode in members:
            info = tarfile.TarInfo(f"{name}/{member}")
            info.size, info.mode, info.mtime = len(data), mode, int(_time.time())
            tar.addfile(info, io.BytesIO(data))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.getvalue())
    os.chmod(target, 0o600)
    return target


def add_homeassistant(layout: Layout, *, base: str = DEFAULT_BASE) -> tuple[Provisioned, bool]:
    """The ``homeassistant`` identity (read-only on the bridge's two prefixes), made if
    missing; an existing one keeps its password. Its password file stays the admin's
    alone (0600): it is pasted into Home Assistant, no container reads it. Returns the
    identity and whether it was made now."""
    if HOMEASSISTANT in read_passwd(layout.passwd) and layout.password(HOMEASSISTANT).exists():
        _write_broker_files(layout, read_passwd(layout.passwd), check_base(base))
        return Provisioned(HOMEASSISTANT, layout.password(HOMEASSISTANT), None), False
    made = add_identity(layout, HOMEASSISTANT, base=base, force=True, _internal=True)
    return made, True


def init_server(layout: Layout, *, base: str = DEFAULT_BASE, app_gid: int | None = None,
                demo_device: str | None = None) -> list[str]:
    """Make the server's identities that are missing: subscriber, health check, demo device.

    Idempotent: existing identities keep their credentials. Returns the names made.
    """
    made: list[str] = []
    existing = read_passwd(layout.passwd)
    wanted: list[tuple[str, int | None]] = [(SUBSCRIBER, app_gid), (HEALTHCHECK, None)]
    if demo_device:
        wanted.append((demo_device, app_gid))
    for name, group in wanted:
        if name in existing:
            continue
        add_identity(layout, name, base=base, group=group, _internal=True)
        made.append(name)
    if not layout.subscriber_keys.is_dir():  # no device yet: the subscriber waits for one
        ensure_private_dir(layout.subscriber_keys)
        if app_gid is not None:
            share_directory(layout.client_dir(SUBSCRIBER), app_gid)
    return made
