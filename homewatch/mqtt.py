"""The one paho-mqtt 2.x client factory, and a connection that translates paho's errors.

TLS is always verified: the CA file is required, the host name is checked against the
certificate's subjectAltNames, TLS 1.2 is the floor. Credentials come from files or env.
After the first successful connection paho reconnects by itself with a capped backoff.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, _ConnectionState
from paho.mqtt.reasoncodes import ReasonCode

from homewatch.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    HomewatchError,
    TLSError,
)
from homewatch.secrets import Secret
from homewatch.url import BrokerURL

log = logging.getLogger(__name__)

_STOPPED = (_ConnectionState.MQTT_CS_DISCONNECTING, _ConnectionState.MQTT_CS_DISCONNECTED)

MessageHandler = Callable[[str, bytes, int, int], None]  # topic, payload, mid, qos

# A connection the broker closes this soon after accepting it, twice in a row, each time
# reconnecting at the first attempt (so the broker did not go away), is taken over:
# another client connects with the same client id, and the broker (MQTT 3.1.1: no reason
# given) closes the older connection each time.
TAKEN_OVER_WITHIN = 5.0


@dataclass(frozen=True, kw_only=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    """Everything needed to reach the broker as one identity."""

    url: BrokerURL
    username: str
    client_id: str
    ca_file: Path | None
    password: Secret | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive: int = 30  # an idle connection sends a PINGREQ after this many seconds
    dead_after: float = 20.0  # give a connection up when sent data stays unacknowledged
    clean_session: bool = True
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """A verifying client TLS context: CA file, host name check, TLS >= 1.2."""
    if settings.ca_file is None:
        raise ConfigError("a CA certificate is required for mqtts:// (--ca)")
    if not settings.ca_file.is_file():
        raise ConfigError(f"CA certificate not found: {settings.ca_file}")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"CA certificate {settings.ca_file}: {exc.reason}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.client_cert is not None:
        try:
            ctx.load_cert_chain(str(settings.client_cert),
                                str(settings.client_key) if settings.client_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"client certificate {settings.client_cert}: {exc}") from None
    return ctx


READ_BATCH = 1024  # packets read per network-loop wake-up (the broker's window: 1000)
PUBACK = 0x40  # MQTT control packet type, fixed header byte


class _Client(mqtt.Client):
    """paho's client with four steps replaced, three of them private to paho. paho is
    pinned to the series they were written for, and tests/test_paho_internals.py fails,
    naming the override, when the paho code they replace or use changes:

    - ``_ssl_wrap_socket``: paho 2.x leaks the half-open SSL socket when certificate
      verification fails; the same logic plus the close. Host names are checked by the
      SSL context (``check_hostname`` is always on in ``tls_context``).
    - ``_reconnect_wait``: the backoff gets jitter.
    - ``loop_read`` (public): paho reads one packet per wake-up of its loop (one
      ``select`` per message received); this reads every packet already there, up to
      READ_BATCH, then calls ``on_read_batch`` (the subscriber flushes and acknowledges
      once per batch). It halves the subscriber's cost per message (README, Performance).
    - ``_packet_write``: acknowledgements waiting side by side go out in one TLS write
      instead of one each.
    - ``loop_forever`` (public) is wrapped, not replaced: an exception escaping paho's
      network loop is reported (``on_loop_failure``) instead of ending the thread
      silently.
    """

    def _packet_write(self) -> MQTTErrorCode:
        queued = self._out_packet
        if len(queued) > 1 and queued[0]["command"] == PUBACK and queued[0]["pos"] == 0:
            acks = []
            while queued and queued[0]["command"] == PUBACK and queued[0]["pos"] == 0:
                acks.append(queued.popleft()["packet"])
            merged = b"".join(acks)
            queued.appendleft({"command": PUBACK, "mid": 0, "qos": 0, "pos": 0,
                               "to_process": len(merged), "packet": merged, "info": None})
        return super()._packet_write()

    on_read_batch: Callable[[], None] | None = None
    on_loop_failure: Callable[[Exception], None] | None = None

    def loop_forever(self, timeout: float = 1.0,
                     retry_first_connection: bool = False) -> MQTTErrorCode:
        """paho's network loop, observed: an exception escaping it (from a callback or
        from paho itself) would end the network thread silently, with the client still
        reading as connected. It goes to ``on_loop_failure`` instead."""
        try:
            return super().loop_forever(timeout, retry_first_connection)
        except Exception as exc:
            if self.on_loop_failure is None:
                raise
            self.on_loop_failure(exc)
            return MQTTErrorCode.MQTT_ERR_UNKNOWN

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        try:
            for _ in range(READ_BATCH):
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc > 0:
                    return self._loop_rc_handle(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if self.on_read_batch is not None:
                self.on_read_batch()

    def _reconnect_wait(self) -> None:
        """paho's capped exponential backoff, plus jitter (so a fleet of Pis does not
        reconnect in lock step after the broker restarts), sleeping in short steps."""
        with self._reconnect_delay_mutex:
            if self._reconnect_delay is None:
                self._reconnect_delay = self._reconnect_min_delay
            else:
                self._reconnect_delay = min(self._reconnect_delay * 2,
                                            self._reconnect_max_delay)
            delay = self._reconnect_delay * random.uniform(0.5, 1.0)  # noqa: S311
        log.info("reconnecting in %.1f s", delay)
        deadline = time.monotonic() + delay
        while (not self._thread_terminate and self._state not in _STOPPED
               and time.monotonic() < deadline):
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        assert self._ssl_context is not None  # only called when TLS is configured
        ssl_sock = self._ssl_context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False)
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def make_client(settings: ConnectionSettings, *, will: Will | None = None,
                manual_ack: bool = False) -> _Client:
    """Create (not connect) a paho client configured from ``settings``."""
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        clean_session=settings.clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if settings.url.tls:
        client.tls_set_context(tls_context(settings))
    if settings.password is not None:
        client.username_pw_set(settings.username, settings.password.reveal())
    else:
        client.username_pw_set(settings.username)
    client.reconnect_delay_set(int(settings.reconnect_min), int(settings.reconnect_max))
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    if logging.getLogger("paho").isEnabledFor(logging.DEBUG):
        client.enable_logger(logging.getLogger("paho"))  # costly per packet: debug only
    return client


# TLS alerts a broker sends when it refuses the client certificate (mutual TLS), and why.
_REFUSED_CERT = (
    ("CERTIFICATE_REVOKED", "it is revoked (the device was removed); provision it again "
     "(make add-device) and install the new bundle"),
    ("UNKNOWN_CA", "it is not from this server's project CA (a bundle from another server, "
     "or made before the CA was); install a bundle made by this server (make add-device)"),
    ("CERTIFICATE_EXPIRED", "it has expired; reissue it (homewatch device add NAME --force) "
     "and install the new bundle"),
    ("BAD_CERTIFICATE", "it is revoked, expired or not from the project CA"),
    ("CERTIFICATE_UNKNOWN", "it is revoked, expired or not from the project CA"),
)
_NO_CERT = ("the broker requires a client certificate (mutual TLS) and none was given: put "
            "the bundle's client.crt and client.key in the identity directory, or give "
            "--client-cert and --client-key")


def certificate_refusal(exc: ssl.SSLError, settings: ConnectionSettings) -> str | None:
    """What a TLS alert says about our client certificate, or None if it is not about it."""
    reason = str(exc.reason or exc).upper()
    if settings.client_cert is None:
        if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
            return _NO_CERT
        return None
    for alert, why in _REFUSED_CERT:
        if alert in reason:
            return (f"the broker refused the client certificate {settings.client_cert} "
                    f"of {settings.username!r}: {why}")
    return None


def probe_certificate_refusal(settings: ConnectionSettings) -> str | None:
    """Why the broker closes our connections before any CONNACK, if it is our client
    certificate. Under TLS 1.3 a broker refuses a client certificate after the handshake,
    in an alert that paho does not report: a bare TLS connection reads it."""
    host, port = settings.url.host, settings.url.port
    try:
        with socket.create_connection((host, port), timeout=5) as raw, \
                tls_context(settings).wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(2)
            data = tls.recv(1)
    except ssl.SSLError as exc:
        return certificate_refusal(exc, settings)
    except TimeoutError:
        return None  # it waits for our CONNECT: the certificate was accepted
    except OSError:
        data = b""  # reset right after the handshake
    if not data and settings.client_cert is not None:
        return (f"the broker closed the connection right after the TLS handshake: it "
                f"refused the client certificate {settings.client_cert} of "
                f"{settings.username!r} (revoked, expired, or not from the project CA)")
    return None


def describe_tls_error(exc: ssl.SSLError, host: str,
                       settings: ConnectionSettings | None = None) -> str:
    refused = certificate_refusal(exc, settings) if settings is not None else None
    if refused is not None:
        return refused
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        if "Hostname mismatch" in msg or "IP address mismatch" in msg:
            return (f"the broker's certificate is not valid for {host!r} (not in its "
                    "subjectAltNames); connect by a name the certificate lists or reissue it "
                    "with scripts/gen-certs.sh --san")
        return (f"the broker's certificate is not trusted by the CA file ({msg}); "
                "is --ca the CA that signed the broker certificate?")
    return f"TLS handshake with {host} failed: {exc.reason or exc}"


class Connection:
    """One MQTT connection: connect with backoff, fail fast on auth/TLS, clean stop.

    Callbacks record state and hand each message to ``on_message`` in paho's network
    thread; it must finish in bounded time (the subscriber shows and acknowledges the
    message there: one thread per connection, and backpressure rather than a queue).

    No silent death: an exception from a program's callback (or from paho's loop) is
    kept in ``failure``, sets ``failed``, clears ``connected`` and calls ``on_failure``
    once; from then on no callback runs, so nothing more is handled or acknowledged.
    The program stops and exits non-zero.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        on_message: MessageHandler | None = None,
        subscriptions: tuple[tuple[str, int], ...] = (),
        will: Will | None = None,
        on_connected: Callable[[], None] | None = None,
        on_published: Callable[[int], None] | None = None,
        on_read_batch: Callable[[], None] | None = None,
        on_failure: Callable[[], None] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._on_connected = on_connected
        self._on_published = on_published
        self._on_read_batch = on_read_batch
        self._on_failure = on_failure
        self.client = make_client(settings, will=will, manual_ack=manual_ack)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message
        self.client.on_subscribe = self._handle_subscribe
        self.client.on_publish = self._handle_publish
        self.client.on_connect_fail = self._handle_connect_fail
        self.client.on_read_batch = self._handle_read_batch
        self.client.on_loop_failure = self._fail
        self.client.on_socket_open = self._tune_socket
        self._connack = threading.Event()
        self._closed_before_connack = threading.Event()
        self._connack_rc: ReasonCode | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.failed = threading.Event()
        self.failure: Exception | None = None
        self._was_connected = False
        self._connected_at = 0.0
        self._quick_drops = 0
        self._reconnect_failed = False  # since the last drop
        self._broker_stayed = True  # the current connection came at the first attempt
        self.taken_over = False  # backing off from another client with our client id
        self._probing = threading.Lock()
        self._refusal: str | None = None  # why the broker refuses our certificate, if it does

    def _call(self, handler: Callable[..., None] | None, *args: Any) -> None:
        """Run a program's callback in paho's thread; an exception is a failure."""
        if handler is None or self.failed.is_set():
            return  # after a failure nothing more is handled, so nothing acknowledged
        try:
            handler(*args)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.failed.is_set():
            return
        if not isinstance(exc, HomewatchError | OSError):
            log.error("unexpected error in the MQTT network thread", exc_info=exc)
        self.failure = exc
        self.connected.clear()
        self.failed.set()
        if self._on_failure is not None:
            self._on_failure()

    # -- paho callbacks (network thread): record and return --------------------------
    def _tune_socket(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        """A cut network shows as sent data that is never acknowledged. TCP would
        retransmit it for about 15 minutes; TCP_USER_TIMEOUT (Linux) gives the
        connection up after ``dead_after`` seconds instead, and paho reconnects. An idle
        connection sends a PINGREQ after ``keepalive`` seconds, so it is covered too."""
        if (hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket)
                and sock.family in (socket.AF_INET, socket.AF_INET6)):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                            int(self.settings.dead_after * 1000))

    def _handle_connect(self, client: mqtt.Client, userdata: object, flags: object,
                        rc: ReasonCode, properties: object) -> None:
        self._connack_rc = rc
        self._connack.set()
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        if self._was_connected:
            log.info("reconnected to %s", self.settings.url)
        self._was_connected = True
        self._connected_at = time.monotonic()
        self._broker_stayed = not self._reconnect_failed
        self._refusal = None
        if self.failed.is_set():
            return
        self.connected.set()
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos)
        self._call(self._on_connected)

    def _handle_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                           rc: ReasonCode, properties: object) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not self._connack.is_set():
            self._closed_before_connack.set()
        elif not was and self.settings.url.tls:
            self._look_into_refusal()  # a reconnection closed before its CONNACK
        if was and rc.is_failure:
            self._reconnect_failed = False
            self._note_drop(time.monotonic() - self._connected_at)
            log.warning("lost connection to %s (%s)", self.settings.url,
                        "the session was taken over by another client with our client id"
                        if self.taken_over else rc)

    def _note_drop(self, lasted: float) -> None:
        """Tell a session take-over from a lost connection, and back off from it: two
        clients with one client id would otherwise take the session from each other in
        a tight loop."""
        s = self.settings
        if lasted < TAKEN_OVER_WITHIN and self._broker_stayed:
            self._quick_drops += 1
        elif not self.taken_over or lasted > 2 * s.reconnect_max:
            self._quick_drops = 0
            if self.taken_over:
                self.taken_over = False
                self.client.reconnect_delay_set(int(s.reconnect_min), int(s.reconnect_max))
        if self._quick_drops >= 2 and not self.taken_over:
            self.taken_over = True
            self.client.reconnect_delay_set(int(s.reconnect_max), int(s.reconnect_max))
            log.error("another client with the same client id %r took over the session: the "
                      "broker closed our connection right after accepting it %d times in a "
                      "row. Give each running program its own id (subscriber: --client-id; "
                      "publisher: its own device). Reconnecting only every %.0f s meanwhile",
                      s.client_id, self._quick_drops, s.reconnect_max)

    def _look_into_refusal(self) -> None:
        """Find out, off paho's thread, whether the broker now refuses our client
        certificate (e.g. revoked while we were connected), and say so once."""
        if not self._probing.acquire(blocking=False):
            return

        def probe() -> None:
            try:
                why = probe_certificate_refusal(self.settings)
                if why is not None and why != self._refusal:
                    log.error("%s; still retrying", why)
                self._refusal = why
            except Exception as exc:  # logged: this thread must not die unobserved
                log.warning("could not look into the refused reconnection: %s", exc)
            finally:
                self._probing.release()

        threading.Thread(target=probe, name="homewatch-tls-probe", daemon=True).start()

    def _handle_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        self._reconnect_failed = True  # e.g. the broker restarting: not a take-over

    def _handle_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                          rcs: list[ReasonCode], properties: object) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("subscription refused by the broker: %s", rcs)
        else:
            self.subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: object,
                        msg: mqtt.MQTTMessage) -> None:
        self._call(self._on_message, msg.topic, bytes(msg.payload), msg.mid, msg.qos)

    def _handle_publish(self, client: mqtt.Client, userdata: object, mid: int,
                        rc: ReasonCode, properties: object) -> None:
        self._call(self._on_published, mid)

    def _handle_read_batch(self) -> None:
        self._call(self._on_read_batch)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (manual_ack): only once it is safely handled."""
        if qos > 0:
            self.client.ack(mid, qos)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, stop: threading.Event, *, connack_timeout: float = 10.0) -> None:
        """Connect, retrying unreachable brokers with backoff until ``stop`` is set.

        Raises AuthError or TLSError at once: retrying cannot fix those.
        """
        s = self.settings
        delay = s.reconnect_min
        attempt = 0
        while not stop.is_set():
            attempt += 1
            self._connack.clear()
            self._closed_before_connack.clear()
            try:
                self.client.connect(s.url.host, s.url.port, keepalive=s.keepalive)
            except ssl.SSLError as exc:
                raise TLSError(describe_tls_error(exc, s.url.host, s)) from None
            except (OSError, socket.gaierror) as exc:
                reason = exc.strerror or str(exc)
                wait = min(delay, s.reconnect_max) * random.uniform(0.5, 1.0)  # noqa: S311
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("broker %s unreachable (%s); retrying in %.1f s",
                                s.url, reason, wait)
                stop.wait(wait)
                delay = min(delay * 2, s.reconnect_max)
                continue
            self.client.loop_start()
            if not self._await_connack(connack_timeout):
                self.client.loop_stop()
                self.client.disconnect()
                raise ConnectError(
                    f"no MQTT answer from {s.url.host}:{s.url.port} within "
                    f"{connack_timeout:.0f} s (is it an MQTT broker, and does it speak "
                    f"{'TLS' if s.url.tls else 'plain MQTT'}?)")
            rc = self._connack_rc
            if rc is not None and rc.is_failure:
                self.client.loop_stop()
                self.client.disconnect()
                raise AuthError(
                    f"broker refused {s.username!r}: {rc} (check the user name and its "
                    "password file; or the identity was removed on the server: provision "
                    "it again with `make add-device`)")
            log.info("connected to %s as %s", s.url, s.username)
            return

    def _await_connack(self, timeout: float) -> bool:
        """Wait for the CONNACK. A connection closed before it is looked into at once: a
        refused client certificate is a TLSError (retrying cannot fix it)."""
        deadline = time.monotonic() + timeout
        probed = not self.settings.url.tls
        while not self._connack.wait(0.05):
            if not probed and self._closed_before_connack.is_set():
                probed = True
                refused = probe_certificate_refusal(self.settings)
                if refused is not None:
                    self.client.loop_stop()
                    self.client.disconnect()
                    raise TLSError(refused)
            if time.monotonic() >= deadline:
                return False
        return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise ConnectError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def stop(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

