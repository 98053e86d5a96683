"""``homewatch doctor``: audit a running deployment and say how to fix what is wrong.

Every check returns PASS or FAIL with a detail and, for a failure, the fix, or SKIP when
it could not be checked (and why). The live checks talk to the broker the way an attacker
and a client would: without credentials, in plain text, with an old TLS version, and with
two throwaway device identities that try to cross into each other's topics (made and
removed by the doctor itself). They run only when the broker's port answers; otherwise
the one verdict is "broker reachable: FAIL" and they are reported as not checked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import secrets
import socket
import ssl
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from homewatch import pki, provision
from homewatch.errors import HomewatchError
from homewatch.url import BrokerURL

EXPIRY_WARNING_DAYS = 14
SERVICE_GIDS = {1883, 10001}  # the broker's group, the app containers' group
REQUIRED_LIMITS = ("max_connections", "max_keepalive", "max_queued_messages")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # not checked: ``detail`` says why

    @property
    def failed(self) -> bool:
        return not self.ok and not self.skipped


def not_checked(name: str, why: str, fix: str = "") -> Check:
    return Check(name, False, f"not checked: {why}", fix, skipped=True)


@dataclass(frozen=True, kw_only=True)
class Target:
    url: BrokerURL
    certs: Path
    config: Path
    reload: Callable[[], None] | None
    no_reload: str = ""  # why ``reload`` is None


# Exit codes of ``homewatch doctor``
EXIT_PASSED, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 3


def exit_code(checks: list[Check]) -> int:
    """0 every check passed; 1 one failed; 3 none failed but some were not checked."""
    if any(c.failed for c in checks):
        return EXIT_FAILED
    return EXIT_INCOMPLETE if any(c.skipped for c in checks) else EXIT_PASSED


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        verdict = "PASS" if c.ok else "SKIP" if c.skipped else "FAIL"
        lines.append(f"{verdict}  {c.name:<22} {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"{'':<6}{'fix:':<23}{c.fix}")
    failed = sum(c.failed for c in checks)
    skipped = sum(c.skipped for c in checks)
    summary = f"{sum(c.ok for c in checks)} passed, {failed} failed"
    lines.append(summary + (f", {skipped} not checked" if skipped else ""))
    return "\n".join(lines)


CHECKS: tuple[tuple[str, Callable[[Target], Check]], ...] = ()  # filled below
REACHABLE = "broker reachable"
# Checks whose verdict depends on talking to the broker.
LIVE = frozenset({"broker certificate", "anonymous refused", "no plaintext listener",
                  "TLS version floor", "device isolation"})


def run_all(t: Target) -> list[Check]:
    """Run every check. One that cannot run is reported as not checked, with the reason,
    never a crash; the live checks are not run when the broker is not reachable."""
    results = []
    reachable = True
    for name, check in CHECKS:
        if name in LIVE and not reachable:
            results.append(not_checked(name, f"the broker is not reachable at "
                                       f"{t.url.host}:{t.url.port}"))
            continue
        try:
            result = check(t)
        except (OSError, ValueError, HomewatchError) as exc:
            result = not_checked(name, str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug in one check must not hide the other results
            result = not_checked(name, f"{type(exc).__name__}: {exc}",
                                 "this is a bug in the doctor; please report it")
        results.append(result)
        if name == REACHABLE:
            reachable = result.ok
    return results


# -- certificates --------------------------------------------------------------------
def _days_left(not_after: dt.datetime) -> int:
    return (not_after - pki.now()).days


def check_ca(t: Target) -> Check:
    layout = provision.Layout(t.certs)
    try:
        ca = pki.load_cert(layout.ca)
    except (OSError, ValueError) as exc:
        return Check("CA certificate", False, f"{layout.ca}: {exc}",
                     "make it with scripts/gen-certs.sh")
    days = _days_left(ca.not_valid_after_utc)
    if days < EXPIRY_WARNING_DAYS:
        return Check("CA certificate", False, f"expires in {days} days",
                     "make a new CA (scripts/gen-certs.sh --force) and re-provision clients")
    return Check("CA certificate", True,
                 f"valid until {ca.not_valid_after_utc:%Y-%m-%d} ({days} days)")


def _context(t: Target, *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(provision.Layout(t.certs).ca))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_broker_certificate(t: Target) -> Check:
    host, port = t.url.host, t.url.port
    fix = (f"reissue it: scripts/gen-certs.sh --renew-server --san {host} "
           "(scripts/admin.sh gen-certs ... for the stack), then restart the broker")
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                _context(t).wrap_socket(raw, server_hostname=host) as tls:
            cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return Check("broker certificate", False, str(exc.verify_message), fix)
    except (OSError, ssl.SSLError) as exc:
        return Check("broker certificate", False, f"no TLS handshake with {host}:{port}: "
                     f"{exc}", "is the broker running and the URL right?")
    not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])),
                                          dt.UTC)
    days = _days_left(not_after)
    if days < EXPIRY_WARNING_DAYS:
        return Check("broker certificate", False, f"expires in {days} days", fix)
    return Check("broker certificate", True, f"chain to the CA and name {host!r} verified; "
                 f"valid until {not_after:%Y-%m-%d} ({days} days)")


# -- files ---------------------------------------------------------------------------
def secret_files(certs: Path) -> list[Path]:
    patterns = ["ca.key", "broker/server.key", "broker/passwd", "broker/acl",
                "broker/healthcheck/mosquitto_sub", "broker/healthcheck/client.key",
                "clients/*/password", "clients/*/fernet.key", "clients/*/client.key",
                "clients/*/keys/*.key"]
    found: list[Path] = []
    for pattern in patterns:
        found.extend(sorted(certs.glob(pattern)))
    return found


def check_permissions(t: Target) -> Check:
    problems: list[str] = []
    fixes: list[str] = []
    files = secret_files(t.certs)
    for f in files:
        st = f.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 == 0:
            continue
        shared = (mode & 0o037 == 0) and st.st_gid in SERVICE_GIDS and f.name != "ca.key"
        if shared:
            continue
        problems.append(f"{f} is {mode:04o}")
        want = "640" if st.st_gid in SERVICE_GIDS and f.name != "ca.key" else "600"
        fixes.append(f"chmod {want} {f}")
    if not files:
        return Check("file permissions", False, f"no key or password files under {t.certs}",
                     "point --certs at the certs directory")
    if problems:
        return Check("file permissions", False, "; ".join(problems), "; ".join(fixes))
    return Check("file permissions", True,
                 f"{len(files)} key/password files: owner only, or the broker's/app group")


# -- live probes ---------------------------------------------------------------------
def check_reachable(t: Target) -> Check:
    host, port = t.url.host, t.url.port
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        return Check(REACHABLE, False, f"nothing answers at {host}:{port} "
                     f"({exc.strerror or exc}); the checks that need it are not run",
                     "start the broker: `make up` (or `docker compose up -d`); if it runs, "
                     "check the URL and MQTT_PORT")
    return Check(REACHABLE, True, f"{host}:{port} accepts connections")


def _connack(t: Target, *, username: str | None, password: str | None, tls: bool = True,
             cert: tuple[Path, Path] | None = None, port: int | None = None,
             client_id: str = "") -> ReasonCode | None:
    """The CONNACK reason code, or None when the broker gave none."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    got: queue.Queue[ReasonCode] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: got.put(rc)
    if tls:
        ctx = _context(t)
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        client.tls_set_context(ctx)
    if username is not None:
        client.username_pw_set(username, password)
    try:
        client.connect(t.url.host, port or t.url.port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        return got.get(timeout=5)
    except queue.Empty:
        return None
    finally:
        client.disconnect()
        client.loop_stop()


def check_anonymous(t: Target) -> Check:
    rc = _connack(t, username=None, password=None)
    if rc is not None and not rc.is_failure:
        return Check("anonymous refused", False, "a client without credentials got in",
                     "set `allow_anonymous false` in the broker config and restart it")
    return Check("anonymous refused", True, f"refused ({rc or 'no CONNACK'})")


def check_plaintext(t: Target) -> Check:
    open_ports = []
    for port in sorted({1883, t.url.port}):
        rc = _connack(t, username=None, password=None, tls=False, port=port)
        if rc is not None:
            open_ports.append(port)
    if open_ports:
        return Check("no plaintext listener", False,
                     f"plain MQTT answered on port(s) {open_ports}",
                     "remove every listener without certfile/keyfile from the broker config")
    return Check("no plaintext listener", True, f"no plain MQTT answer on 1883 or "
                 f"{t.url.port}")


def _handshake(t: Target, version: ssl.TLSVersion) -> bool:
    ctx = _context(t, verify=False)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    try:
        with socket.create_connection((t.url.host, t.url.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.url.host):
            return True
    except (OSError, ssl.SSLError):
        return False


def check_tls_floor(t: Target) -> Check:
    old = [v.name for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1) if _handshake(t, v)]
    if old:
        return Check("TLS version floor", False, f"broker accepts {', '.join(old)}",
                     "set `tls_version tlsv1.2` on the listener and restart the broker")
    if not _handshake(t, ssl.TLSVersion.TLSv1_2):
        return Check("TLS version floor", False, "TLS 1.2 refused: old clients cannot connect",
                     "set `tls_version tlsv1.2` (1.2 and 1.3) on the listener")
    return Check("TLS version floor", True, "TLS 1.0/1.1 refused, TLS 1.2 accepted")


def broker_settings(config: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in config.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings.setdefault(key, []).append(value.strip())
    return settings


def check_limits(t: Target) -> Check:
    try:
        s = broker_settings(t.config)
    except OSError as exc:
        return Check("broker limits", False, f"{t.config}: {exc.strerror}",
                     "point --config at the broker's mosquitto.conf")
    problems = []
    if s.get("allow_anonymous", ["true"])[-1] != "false":
        problems.append("allow_anonymous is not false")
    if not (s.get("max_packet_size") or s.get("message_size_limit")):
        problems.append("no max_packet_size")
    for key in REQUIRED_LIMITS:
        values = s.get(key)
        if not values or values[-1] in ("-1", "0"):
            problems.append(f"no {key}")
    listeners = len(s.get("listener", []))
    if listeners != len(s.get("certfile", [])):
        problems.append("a listener without TLS")
    if problems:
        return Check("broker limits", False, "; ".join(problems),
                     "use broker/mosquitto.conf as shipped (allow_anonymous false, "
                     "max_packet_size, max_connections, max_keepalive, max_queued_messages)")
    return Check("broker limits", True, "anonymous off, packet size, connections, keepalive "
                 "and queues bounded; every listener TLS")


def check_isolation(t: Target) -> Check:
    name = "device isolation"
    if t.reload is None:
        return not_checked(name, "cannot reload the broker to add probe identities ("
                           f"{t.no_reload or 'no way to reach it'})",
                           "run it on the Compose host (make doctor), or give --broker-pid "
                           "PID for a local mosquitto")
    layout = provision.Layout(t.certs)
    tag = secrets.token_hex(3)
    a, b = f"doctor-{tag}-a", f"doctor-{tag}-b"
    base = t.url.base
    made: list[str] = []
    try:
        for n in (a, b):
            provision.add_identity(layout, n, base=base)
            made.append(n)
        t.reload()
        time.sleep(0.5)
        return _probe(t, layout, a, b)
    except HomewatchError as exc:
        return Check(name, False, f"probe failed: {exc}", "see the broker's log")
    finally:
        for n in made:
            provision.remove_identity(layout, n, base=base)
        if made:
            t.reload()


def _client(t: Target, layout: provision.Layout, user: str) -> tuple[mqtt.Client, bool]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{os.getpid()}")
    ctx = _context(t)
    if layout.client_cert(user).exists():
        ctx.load_cert_chain(str(layout.client_cert(user)), str(layout.client_key(user)))
    client.tls_set_context(ctx)
    client.username_pw_set(user, layout.password(user).read_text().strip())
    connected: queue.Queue[bool] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: connected.put(not rc.is_failure)
    try:
        client.connect(t.url.host, t.url.port)
    except OSError:
        return client, False
    client.loop_start()
    try:
        return client, connected.get(timeout=5)
    except queue.Empty:
        return client, False


def _probe(t: Target, layout: provision.Layout, a: str, b: str) -> Check:
    name = "device isolation"
    base = t.url.base
    observer, ok1 = _client(t, layout, provision.SUBSCRIBER)
    device, ok2 = _client(t, layout, a)
    ha = None  # Home Assistant's identity, when made: it must see nothing of the above
    ha_seen: queue.Queue[str] = queue.Queue()
    if layout.password(provision.HOMEASSISTANT).exists():
        ha, ok3 = _client(t, layout, provision.HOMEASSISTANT)
        ha.on_message = lambda c, u, m: (ha_seen.put(m.topic) if m.topic.startswith(
            f"{base}/") or f"/{a}/" in m.topic else None)  # not the bridge's own
        ha.subscribe("#", 1)
        ok2 = ok2 and ok3
    try:
        if not (ok1 and ok2):
            return Check(name, False, "probe identities could not connect after a reload",
                         "check that the broker reloads on SIGHUP and the subscriber exists")
        seen: queue.Queue[str] = queue.Queue()
        spied: queue.Queue[str] = queue.Queue()
        observer.on_message = lambda c, u, m: seen.put(m.topic)
        device.on_message = lambda c, u, m: spied.put(m.topic)
        observer.subscribe(f"{base}/#", 1)
        device.subscribe(f"{base}/#", 1)
        device.subscribe("$SYS/#", 1)
        time.sleep(0.5)
        for forged in (f"{provision.DISCOVERY_PREFIX}/sensor/{a}/config",
                       f"{provision.BRIDGE_PREFIX}/{a}/probe"):  # a stolen Pi's entities
            device.publish(forged, b"forged", qos=1).wait_for_publish(5)
        device.publish(f"{base}/{b}/probe", b"cross", qos=1).wait_for_publish(5)
        device.publish(f"{base}/{a}/probe", b"own", qos=1).wait_for_publish(5)
        topics: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and f"{base}/{a}/probe" not in topics:
            with contextlib.suppress(queue.Empty):
                topics.append(seen.get(timeout=0.2))
        time.sleep(0.3)
        if f"{base}/{a}/probe" not in topics:
            return Check(name, False, "a device's own publish did not arrive",
                         "check the ACL file (homewatch device add regenerates it)")
        if f"{base}/{b}/probe" in topics:
            return Check(name, False, "a device could write another device's topic",
                         "regenerate the ACL with `homewatch device add` and reload")
        if not spied.empty():
            return Check(name, False, f"a device could read {spied.get()}",
                         "devices must have no read rule in the ACL")
        if not ha_seen.empty():
            return Check(name, False, f"the homeassistant identity received {ha_seen.get()}",
                         "regenerate the ACL (make add-homeassistant) and reload: it may "
                         "only read what the subscriber publishes for it")
        return Check(name, True, "a probe device could not write another's topics nor "
                     "read anything ($SYS included)" + (
                         "; Home Assistant's identity received none of its writes nor the "
                         "sealed readings" if ha is not None else ""))
    finally:
        for c in (observer, device, *([ha] if ha is not None else [])):
            c.disconnect()
            c.loop_stop()


CHECKS = (
    ("CA certificate", check_ca),
    (REACHABLE, check_reachable),
    ("broker certificate", check_broker_certificate),
    ("file permissions", check_permissions),
    ("anonymous refused", check_anonymous),
    ("no plaintext listener", check_plaintext),
    ("TLS version floor", check_tls_floor),
    ("broker limits", check_limits),
    ("device isolation", check_isolation),
)
