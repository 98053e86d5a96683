"""``homewatch``: the admin command run on the server, and ``irk`` run on a Pi.

    homewatch device add NAME [--bundle DIR --url URL] [--reload]
    homewatch device list
    homewatch device remove NAME --force [--reload]
    homewatch server init [--app-gid GID] [--demo-device NAME]
    homewatch homeassistant add [--reload]
    homewatch dashboard password [--stdin]
    homewatch dashboard inventory
    homewatch dashboard url [--bind ADDRESS] [--port PORT]
    homewatch health FILE [--max-age SECONDS]
    homewatch irk [--add] [--store DIR] [--known-devices FILE]     (on a Pi, as root)

The admin modules (provisioning, PKI, the dashboard's access) are imported only by the
commands that use them: ``irk`` on a Pi needs none of them (tests/test_layering.py).
The broker re-reads its password and ACL files on SIGHUP: ``--reload`` sends it to the
Compose stack's broker through the Docker SDK; otherwise reload it yourself.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from homewatch import irk
from homewatch.config import OneLineParser
from homewatch.errors import ConfigError, HomewatchError
from homewatch.health import unhealthy_reason
from homewatch.url import DEFAULT_BASE, parse_broker_url

if TYPE_CHECKING:
    from homewatch import provision


def _parser() -> OneLineParser:
    parser = OneLineParser(prog="homewatch", description="Homewatch administration.",
                           allow_abbrev=False)
    parser.add_argument("--certs", type=Path,
                        default=Path(os.environ.get("HOMEWATCH_CERTS_DIR", "certs")),
                        help="certs directory [env HOMEWATCH_CERTS_DIR, default certs]")
    parser.add_argument("--base", default=os.environ.get("HOMEWATCH_BASE", DEFAULT_BASE),
                        help="base topic used in the ACL [env HOMEWATCH_BASE, default home]")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    device = sub.add_parser("device", help="manage identities (devices and the subscriber)")
    dsub = device.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    add = dsub.add_parser("add", help="provision a device (or the 'subscriber' identity)")
    add.add_argument("name")
    add.add_argument("--force", action="store_true",
                     help="replace an existing identity's password and key")
    add.add_argument("--group", type=int, metavar="GID",
                     help="share the identity's directory with this group (a container user)")
    add.add_argument("--bundle", type=Path, metavar="DIR",
                     help="also write DIR/NAME.tar.gz with what the Pi needs")
    add.add_argument("--url", help="broker URL the Pi uses, written into the bundle "
                     "(e.g. mqtts://homeserver.local:8883/home)")
    add.add_argument("--reload", action="store_true",
                     help="reload the Compose stack's broker (SIGHUP via the Docker SDK)")
    dsub.add_parser("list", help="list identities with key age and certificate expiry")
    rot = dsub.add_parser("rotate-key", help="give a device a new payload key; the previous "
                          "one stays valid so nothing in flight is lost")
    rot.add_argument("name")
    rot.add_argument("--keep", type=int, default=2, metavar="N",
                     help="keys kept in the key rings, newest first (default 2)")
    rot.add_argument("--bundle", type=Path, metavar="DIR",
                     help="also write DIR/NAME.tar.gz with the new key ring for the Pi")
    rot.add_argument("--url", help="broker URL for the bundle")
    rm = dsub.add_parser("remove", help="remove an identity and delete its material")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true", help="required: removal is destructive")
    rm.add_argument("--reload", action="store_true",
                    help="reload the Compose stack's broker (SIGHUP via the Docker SDK)")

    server = sub.add_parser("server", help="server set-up")
    ssub = server.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    init = ssub.add_parser("init", help="make the subscriber, health-check and demo "
                           "identities that are missing (keeps existing ones)")
    init.add_argument("--app-gid", type=int, metavar="GID",
                      help="group of the app containers' user (10001 in the image)")
    init.add_argument("--demo-device", metavar="NAME", help="also make this demo device")

    ha = sub.add_parser("homeassistant", help="the identity Home Assistant connects as")
    hsub = ha.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    hadd = hsub.add_parser("add", help="make the 'homeassistant' identity if missing (it may "
                           "only read the bridge's topics); an existing one keeps its password")
    hadd.add_argument("--reload", action="store_true",
                      help="reload the Compose stack's broker (SIGHUP via the Docker SDK)")

    web = sub.add_parser("dashboard", help="the dashboard's household password")
    wsub = web.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    pw = wsub.add_parser("password", help="set a new household password (random, or one "
                         "read from standard input); every dashboard session ends")
    pw.add_argument("--stdin", action="store_true",
                    help="read the new password from standard input (12+ characters)")
    wsub.add_parser("inventory", help="refresh certificates.json (certificate expiry and "
                    "key dates for the Devices page)")
    url = wsub.add_parser("url", help="one line: the dashboard's URL(s) and where its "
                          "password is (never the password)")
    url.add_argument("--bind", default=os.environ.get("DASHBOARD_BIND") or "0.0.0.0",  # noqa: S104
                     metavar="ADDRESS", help="the address it is published on "
                     "[env DASHBOARD_BIND, default 0.0.0.0]")
    url.add_argument("--port", type=int, default=os.environ.get("DASHBOARD_PORT") or 8443,
                     help="the port it is published on [env DASHBOARD_PORT, default 8443]")

    doctor = sub.add_parser("doctor", help="audit a running deployment; exit 0 when every "
                            "check passed, 1 when one failed, 3 when none failed but some "
                            "could not be checked")
    doctor.add_argument("url", nargs="?", default=None,
                        help="broker URL as clients use it (default mqtts://localhost:"
                        "$MQTT_PORT/BASE)")
    doctor.add_argument("--config", type=Path, default=None,
                        help="the broker's config (default broker/$BROKER_CONF or "
                        "broker/mosquitto.conf)")
    doctor.add_argument("--broker-pid", type=int, metavar="PID",
                        help="reload a local mosquitto with SIGHUP (default: the Compose "
                        "stack's broker through the Docker SDK)")

    health = sub.add_parser("health", help="exit 0 if a program's health file is fresh")
    health.add_argument("file", type=Path)
    health.add_argument("--max-age", type=float, default=30.0, metavar="SECONDS")

    keys = sub.add_parser(
        "irk", help="on a Pi, as root: list the identity resolving keys "
        "of the devices paired with BlueZ as known-devices lines",
        description="Print the identity resolving key (IRK) of each phone paired with this "
        "Pi's BlueZ as a known-devices line (irk:KEY  Name), so that a phone that rotates "
        "its Bluetooth address is still recognised; --add appends them to the publisher's "
        "known-devices file. Run as root (BlueZ's pairing store is root's); pair the phone "
        "first with bluetoothctl (scan on, pair, trust).")
    keys.add_argument("--add", action="store_true", help="append the keys not there yet to "
                      "the known-devices file (then restart the publisher)")
    keys.add_argument("--store", type=Path, default=irk.STORE, metavar="DIR",
                      help=f"BlueZ's pairing store (default {irk.STORE})")
    keys.add_argument("--known-devices", type=Path, default=irk.KNOWN_DEVICES,
                      metavar="FILE", help="the publisher's known-devices file (default "
                      f"{irk.KNOWN_DEVICES}, where scripts/install-pi.sh puts it)")
    return parser


def _irk(args: argparse.Namespace) -> int:
    """List the paired devices' keys as known-devices lines; with --add, append the new
    ones. A device whose info file cannot be read is one line on stderr; the rest are
    listed."""
    devices, problems = irk.scan_store(args.store)
    for problem in problems:
        sys.stderr.write(f"homewatch irk: {problem}\n")
    if not devices:
        sys.stderr.write(f"homewatch irk: no paired device with an identity resolving key "
                         f"in {args.store}: pair the phone first (bluetoothctl: scan on, "
                         "pair, trust)\n")
        return 1
    if not args.add:
        sys.stdout.write("".join(d.line() + "\n" for d in devices))
        return 0
    added = irk.add(args.known_devices, devices)
    for device in added:
        sys.stdout.write(f"added {device.line()}\n")
    kept = len(devices) - len(added)
    if kept:
        sys.stdout.write(f"{kept} key(s) already in {args.known_devices}\n")
    if added:
        sys.stdout.write(f"added {len(added)} key(s) to {args.known_devices}; restart the "
                         "publisher to use them (the service: sudo systemctl restart "
                         "homewatch-publisher)\n")
    return 0


def _reload() -> str:
    from homewatch.dockerctl import default_project, reload_broker

    project = default_project()
    return f"reloaded the broker ({reload_broker(project)})"


def _broker_reloader(pid: int | None) -> tuple[Callable[[], None] | None, str]:
    """How the doctor reloads the broker: SIGHUP to ``pid``, else to the Compose stack's
    broker through the Docker SDK; or None and why neither is possible."""
    from homewatch.dockerctl import default_project, find_service, reload_broker

    if pid is not None:
        return (lambda: os.kill(pid, signal.SIGHUP)), ""
    project = default_project()
    try:
        found = find_service(project, "broker")
    except HomewatchError as exc:
        return None, str(exc)
    if not found:
        return None, (f"no running broker container in Compose project {project!r}; "
                      "set COMPOSE_PROJECT_NAME if you named it")

    def reload() -> None:
        reload_broker(project)

    return reload, ""


def _doctor(args: argparse.Namespace) -> int:
    from homewatch import doctor

    port = os.environ.get("MQTT_PORT", "8883")
    url = parse_broker_url(args.url or f"mqtts://localhost:{port}/{args.base}")
    config = args.config or Path("broker") / os.environ.get("BROKER_CONF", "mosquitto.conf")
    reload, why = _broker_reloader(args.broker_pid)
    checks = doctor.run_all(doctor.Target(url=url, certs=args.certs, config=config,
                                          reload=reload, no_reload=why))
    sys.stdout.write(doctor.render(checks) + "\n")
    return doctor.exit_code(checks)


def _device_add(a: argparse.Namespace, layout: provision.Layout) -> list[str]:
    from homewatch import provision

    out: list[str] = []
    if a.bundle is not None:
        if not a.url:
            raise ConfigError("--bundle needs --url, the broker address the Pi will use")
        parse_broker_url(a.url)
    made = provision.add_identity(layout, a.name, base=a.base, force=a.force,
                                  group=a.group)
    out.append(f"provisioned {made.name}")
    out.append(f"  password: {made.password_file}")
    if made.key_file is not None:
        out.append(f"  key ring: {made.key_file}")
    if a.bundle is not None:
        bundle = provision.make_bundle(layout, made.name, url=a.url,
                                       out_dir=a.bundle)
        out.append(f"  bundle:   {bundle}  (copy it to the Pi; it holds secrets)")
        _warn_unnamed_host(layout, parse_broker_url(a.url).host)
    out.append(_reload() if a.reload else "reload the broker (SIGHUP) to apply")
    return out


def _dashboard_url(layout: provision.Layout, bind: str, port: int) -> str:
    """Where the dashboard is and where its password is; a warning on stderr when its
    certificate does not name the host of the first URL (browsers would refuse it)."""
    from homewatch import dashboard_access, pki
    from homewatch.url import url_host

    hosts = dashboard_access.hosts(layout, bind, lan=dashboard_access.lan_address())
    urls = [f"https://{url_host(h)}:{port}/" for h in hosts]
    cert_file = dashboard_access.dashboard_dir(layout) / "server.crt"
    try:
        named = not cert_file.is_file() or pki.names_host(pki.load_cert(cert_file), hosts[0])
    except ValueError:
        sys.stderr.write(f"homewatch: warning: {cert_file} is not a certificate: remake "
                         "it with make broker-cert\n")
        named = True
    if not named:
        sys.stderr.write(f"homewatch: warning: the dashboard's certificate does not name "
                         f"{hosts[0]}: browsers will refuse it. Fix: make broker-cert "
                         f"SAN=\"{hosts[0]}\"\n")
    listening = url_host(bind.strip("[]"))
    return (f"dashboard: {' or '.join(urls)} (listening on {listening}:{port}); log in with "
            f"the password in {dashboard_access.dashboard_dir(layout) / 'password'} (new "
            "one: make dashboard-password)")


def _warn_unnamed_host(layout: provision.Layout, host: str) -> None:
    """Warn when the broker certificate does not name the host a bundle's URL uses: the
    Pi would refuse the broker (host name verification)."""
    from homewatch import pki

    cert_file = layout.broker_dir / "server.crt"
    if not cert_file.is_file():
        return
    cert = pki.load_cert(cert_file)
    if not pki.names_host(cert, host):
        sys.stderr.write(
            f"homewatch: warning: the broker certificate {cert_file} does not name {host!r} "
            f"(it names {', '.join(pki.subject_alt_names(cert))}): the Pi will refuse the "
            f"broker. Fix: scripts/admin.sh gen-certs --renew-server --san {host}, then "
            "restart the broker; or use a URL with a name it lists\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "irk":
        try:
            return _irk(args)
        except HomewatchError as exc:
            sys.stderr.write(f"homewatch: error: {exc}\n")
            return 2
        except OSError as exc:
            sys.stderr.write(f"homewatch: error: {exc.filename or args.known_devices}: "
                             f"{exc.strerror}\n")
            return 1
    from homewatch import dashboard_access, pki, provision

    layout = provision.Layout(args.certs)
    lines: list[str] = []
    try:
        if args.command == "health":
            reason = unhealthy_reason(args.file, args.max_age)
            if reason is not None:
                sys.stdout.write(f"unhealthy: {reason}\n")
            return 0 if reason is None else 1
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "server":
            made = provision.init_server(layout, base=args.base, app_gid=args.app_gid,
                                         demo_device=args.demo_device)
            made += dashboard_access.init_dashboard(layout, app_gid=args.app_gid)
            lines.append("made: " + ", ".join(made) if made else "all identities present")
        elif args.command == "homeassistant":
            ha, new = provision.add_homeassistant(layout, base=args.base)
            lines.append(f"{'provisioned' if new else 'kept'} {ha.name} (reads only "
                         f"{provision.DISCOVERY_PREFIX}/# and {provision.BRIDGE_PREFIX}/#)")
            lines.append(f"  password: {ha.password_file}")
            if args.reload:
                lines.append(_reload())
        elif args.command == "dashboard" and args.action == "url":
            lines.append(_dashboard_url(layout, args.bind, args.port))
        elif args.command == "dashboard" and args.action == "inventory":
            path = dashboard_access.write_inventory(layout)
            lines.append(f"refreshed {path}" if path else
                         "no certs/dashboard yet: `make up` makes it")
        elif args.command == "dashboard":
            chosen = sys.stdin.readline() if args.stdin else None
            path = dashboard_access.set_password(layout, chosen)
            lines.append(f"new dashboard password in {path} (0600); every session has "
                         "ended, log in again with it")
        elif args.action == "add":
            lines = _device_add(args, layout)
        elif args.action == "list":
            lines.append(f"{'NAME':<20} {'ROLE':<13} {'KEY CREATED':<21} CERTIFICATE EXPIRES")
            for info in provision.describe_identities(layout):
                expires = "-"
                if info.cert_expires is not None:
                    days = (info.cert_expires - pki.now()).days
                    expires = f"{info.cert_expires:%Y-%m-%d} ({days} days)"
                lines.append(f"{info.name:<20} {info.role:<13} {info.key_created or '-':<21} "
                             f"{expires}")
        elif args.action == "rotate-key":
            if args.bundle is not None and not args.url:
                raise ConfigError("--bundle needs --url, the broker address the Pi will use")
            count = provision.rotate_key(layout, args.name, keep=args.keep)
            lines.append(f"rotated the key of {args.name}: {count} key(s) in its rings, "
                         "newest first; the subscriber accepts old and new")
            if args.bundle is not None:
                bundle = provision.make_bundle(layout, args.name, url=args.url,
                                               out_dir=args.bundle)
                lines.append(f"  bundle: {bundle}  (copy fernet.key to the Pi; the publisher "
                             "picks it up without a restart)")
                _warn_unnamed_host(layout, parse_broker_url(args.url).host)
        elif args.action == "remove":
            if not args.force:
                sys.stderr.write(f"homewatch: error: removing {args.name!r} deletes its "
                                 "credentials and keys; add --force to confirm\n")
                return 2
            provision.remove_identity(layout, args.name, base=args.base)
            lines.append(f"removed {args.name}")
            lines.append(_reload() if args.reload else
                         "reload the broker (SIGHUP) to refuse it from now on")
    except HomewatchError as exc:
        sys.stderr.write(f"homewatch: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"homewatch: error: {exc.filename}: {exc.strerror}\n")
        return 1
    if args.command == "device" and args.action != "list":
        dashboard_access.write_inventory(layout)  # the Devices page's key and cert dates
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
