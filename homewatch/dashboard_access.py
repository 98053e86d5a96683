"""The admin side of the dashboard's files, under ``certs/dashboard/``:

- ``password``: the household password, 0600, for people to read (``make up`` says where);
- ``password.hash``: its scrypt hash (:mod:`homewatch.passwords`), the only form the
  dashboard reads;
- ``certificates.json``: public facts for the Devices page (when each certificate
  expires, when each device key was made), so that the dashboard needs no access to the
  identities themselves;
- ``server.crt`` / ``server.key``: its HTTPS certificate, made by ``scripts/gen-certs.sh``.

:func:`urls` says where browsers reach it (the Compose init service logs them).

With ``app_gid`` (the containers' group) the directory is setgid to it (2750) and what the
dashboard reads is 0640; the password itself stays 0600, the host owner's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import stat
from pathlib import Path

from homewatch import pki
from homewatch.errors import ProvisionError
from homewatch.passwords import hash_password, new_password
from homewatch.provision import Layout, describe_identities
from homewatch.secrets import ensure_private_dir, write_private_file
from homewatch.url import url_host

PASSWORD_MAX = 256
ALL_ADDRESSES = ("", "0.0.0.0", "::")  # noqa: S104 (names them, binds nothing)


def dashboard_dir(layout: Layout) -> Path:
    return layout.root / "dashboard"


def set_password(layout: Layout, password: str | None = None, *,
                 app_gid: int | None = None) -> Path:
    """A new household password (``None``: a random one); every session ends. Returns
    the file that holds it."""
    if password is not None:
        password = password.strip("\r\n")
        if not 12 <= len(password) <= PASSWORD_MAX:
            raise ProvisionError(f"the dashboard password must be 12 to {PASSWORD_MAX} "
                                 "characters long")
    password = password or new_password()
    directory = dashboard_dir(layout)
    ensure_private_dir(directory)
    write_private_file(directory / "password", password + "\n", mode=0o600)
    write_private_file(directory / "password.hash", hash_password(password) + "\n")
    _share(directory, app_gid)
    return directory / "password"


def init_dashboard(layout: Layout, *, app_gid: int | None = None) -> list[str]:
    """Make what is missing (the password and its hash) and refresh the inventory.
    Returns what was made."""
    directory = dashboard_dir(layout)
    made: list[str] = []
    if not (directory / "password").is_file():
        set_password(layout, app_gid=app_gid)
        made.append("dashboard password")
    elif not (directory / "password.hash").is_file():
        text = (directory / "password").read_text(encoding="utf-8").strip("\r\n")
        set_password(layout, text, app_gid=app_gid)
        made.append("dashboard password hash")
    write_inventory(layout, app_gid=app_gid)
    return made


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_inventory(layout: Layout, *, app_gid: int | None = None) -> Path | None:
    """``certificates.json``: CA, broker, dashboard and client certificate expiry and
    device key creation times. Does nothing before the dashboard's directory exists."""
    directory = dashboard_dir(layout)
    if not directory.is_dir():
        return None
    servers = {}
    for name, path in (("ca", layout.ca), ("broker", layout.broker_dir / "server.crt"),
                       ("dashboard", directory / "server.crt")):
        if path.is_file():
            servers[name] = {"not_after": _iso(pki.load_cert(path).not_valid_after_utc)}
    devices = {info.name: {"role": info.role, "not_after": _iso(info.cert_expires),
                           "key_created": info.key_created}
               for info in describe_identities(layout)}
    text = json.dumps({**servers, "devices": devices}, indent=1, sort_keys=True) + "\n"
    target = directory / "certificates.json"
    try:
        unchanged = target.read_text(encoding="utf-8") == text
    except OSError:
        unchanged = False
    if not unchanged:  # `make up` again changes nothing under certs/
        write_private_file(target, text)
    _share(directory, app_gid)
    return target


def _share(directory: Path, app_gid: int | None) -> None:
    """Shared with the dashboard's group (``app_gid``, or the group it already has):
    2750, files 0640, but the password itself 0600, the host owner's alone (it is never
    group-readable, not even for a moment)."""
    st = directory.stat()
    if app_gid is None and st.st_mode & stat.S_ISGID:
        app_gid = st.st_gid
    password = directory / "password"
    if password.exists():
        os.chmod(password, 0o600)
    if app_gid is None:
        return
    try:  # (a group is only changed where it differs: the owner may run this too)
        if st.st_gid != app_gid:
            os.chown(directory, -1, app_gid)
        if stat.S_IMODE(directory.stat().st_mode) != 0o2750:  # (a chmod by a non-member
            directory.chmod(0o2750)                          # would drop the setgid bit)
        for child in directory.iterdir():
            if child.is_file() and child.name != "password":
                if child.stat().st_gid != app_gid:
                    os.chown(child, -1, app_gid)
                child.chmod(0o640)
    except PermissionError:
        raise ProvisionError(f"cannot give {directory} to group {app_gid}: run as root, or "
                             "through scripts/admin.sh") from None


def lan_address() -> str | None:
    """This server's LAN address: the source address of its default route (what `make
    up` gets from ``ip route get``; connecting a UDP socket sends nothing), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("1.1.1.1", 9))
            address: str = probe.getsockname()[0]
    except OSError:
        return None
    return address


def hosts(layout: Layout, bind: str, *, lan: str | None) -> list[str]:
    """Where browsers reach the dashboard listening on ``bind``: that one address; on all
    addresses, the LAN address ``lan`` (as `make up` says), then the host names with a
    domain its certificate names (``homeserver.local``, names added with ``make
    broker-cert``). Without a LAN address: the certificate's first address that is not
    loopback."""
    bind = bind.strip("[]")  # an IPv6 address may come written as in a URL
    if bind not in ALL_ADDRESSES:
        return [bind]
    cert_file = dashboard_dir(layout) / "server.crt"
    try:
        names = pki.subject_alt_names(pki.load_cert(cert_file)) if cert_file.is_file() else []
    except ValueError:  # not a certificate: no names to offer (make up says what to do)
        names = []
    found: list[str] = []
    addresses = [n for n in names if _is_ip(n) and not ipaddress.ip_address(n).is_loopback]
    if lan is not None or addresses:
        found.append(lan if lan is not None else addresses[0])
    found += [n for n in names if not _is_ip(n) and "." in n
              and n.lower() not in ("localhost", "localhost.localdomain")]
    return list(dict.fromkeys(found or ["localhost"]))


def urls(layout: Layout, bind: str, port: int, *, lan: str | None) -> list[str]:
    """The :func:`hosts` as the dashboard's URLs on ``port``."""
    return [f"https://{url_host(h)}:{port}/" for h in hosts(layout, bind, lan=lan)]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
