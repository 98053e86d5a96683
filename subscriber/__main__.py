"""``python -m subscriber mqtts://HOST:8883/home``: the program's entry point.

Exit codes: 0 stopped cleanly, 1 broker/TLS failure, 2 bad settings or input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from homewatch import config
from homewatch.envelope import Opener
from homewatch.errors import HomewatchError, StoppedError, StorageError
from homewatch.health import Heartbeat
from homewatch.history.sqlite import SqliteHistory
from homewatch.mqtt import Connection, Will
from homewatch.provision import BRIDGE_PREFIX, DISCOVERY_PREFIX
from homewatch.secrets import KeyStore
from subscriber.app import ReplayState, Subscriber
from subscriber.rooms import Rooms
from subscriber.settings import SubscriberSettings, build
from subscriber.sinks import Sink
from subscriber.sinks.alerts import AlertsSink
from subscriber.sinks.console import ConsoleSink
from subscriber.sinks.history import HistorySink
from subscriber.sinks.homeassistant import HomeAssistantSink

log = logging.getLogger("subscriber")


def _run(settings: SubscriberSettings) -> int:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    keys = KeyStore(settings.keys_dir)
    state = ReplayState(settings.state_dir / f"{settings.connection.client_id}.replay.json")
    opener = Opener(keys, base=settings.connection.url.base, ttl=settings.ttl,
                    max_late=settings.max_late, skew=settings.clock_skew, replay=state.load())
    sinks: list[Sink] = []  # the console is added last: see below
    sub = Subscriber(opener, sinks, state=state,
                     rooms=Rooms(hysteresis=settings.room_hysteresis,
                                 dwell=settings.room_dwell))
    base = settings.connection.url.base
    bridge_status = f"{settings.bridge_prefix}/status"  # the Home Assistant bridge's

    def bridge_online() -> None:
        conn.publish(bridge_status, b"online", qos=1, retain=True)

    conn = Connection(settings.connection, on_message=sub.on_message,
                      on_read_batch=sub.end_batch, subscriptions=((f"{base}/#", 1),),
                      on_failure=stop.set, manual_ack=True,
                      will=Will(topic=bridge_status, payload=b"offline")
                      if settings.homeassistant else None,
                      on_connected=bridge_online if settings.homeassistant else None)
    if settings.history is not None:  # (after the connection's settings were checked)
        history = SqliteHistory(settings.history,
                                retention_days=settings.history_retention_days)
        sub.add_sink(HistorySink(history, keys_dir=settings.keys_dir))
        log.info("keeping the history in %s (raw readings for %g days)", settings.history,
                 settings.history_retention_days)
    if settings.homeassistant:
        def publish(topic: str, payload: bytes) -> object:
            return conn.publish(topic, payload, qos=1, retain=True)

        sub.add_sink(HomeAssistantSink(
            publish, state_file=settings.state_dir / "homeassistant.json",
            rings=keys.devices, discovery_prefix=settings.discovery_prefix,
            bridge_prefix=settings.bridge_prefix))
        log.info("Home Assistant bridge on: discovery configs under %s/, plaintext states "
                 "under %s/", settings.discovery_prefix, settings.bridge_prefix)
        if (settings.discovery_prefix, settings.bridge_prefix) != (DISCOVERY_PREFIX,
                                                                   BRIDGE_PREFIX):
            log.warning("the ACL `homewatch` makes lets the subscriber write only %s/# and "
                        "%s/#: give it (and Home Assistant, read) the prefixes you chose in "
                        "your own broker's ACL", DISCOVERY_PREFIX, BRIDGE_PREFIX)
    if settings.alerts is not None:
        sub.add_sink(alerts_sink(settings, sub))
    # Last: sinks flush in order, so a batch's lines are shown only once the history has
    # it, just before its replay record is written (a kill -9 between showing and
    # recording, which shows it again after the restart, has microseconds, not a commit).
    sub.add_sink(ConsoleSink(sys.stdout, as_json=settings.json))
    sub.ack = conn.ack
    heartbeat = Heartbeat(settings.health_file)
    failure: Exception | None = None
    conn.start(stop)
    if not stop.is_set():
        log.info("subscribed to %s/# (keys for %d device(s) in %s)", base,
                 len(keys.devices()), keys.directory)
    try:
        sub.run(stop, count=settings.count, heartbeat=heartbeat, connected=conn.connected)
    except StorageError as exc:  # the periodic snapshot of the replay state
        failure = exc
    finally:
        failure = failure or conn.failure
        if failure is not None:
            heartbeat.fail(str(failure))
        heartbeat.clear()
        if settings.homeassistant and conn.connected.is_set():
            # Home Assistant shows the bridge's entities unavailable from now on
            with contextlib.suppress(HomewatchError, RuntimeError, ValueError):
                conn.publish(bridge_status, b"offline", qos=1, retain=True).wait_for_publish(2)
        conn.stop()  # what arrived was shown and acknowledged as it came
    if failure is not None:
        # Nothing after the failure was acknowledged: the broker keeps it for our
        # persistent session and delivers it again after the restart.
        discard_unwritable_output()
        raise StoppedError(failure, "nothing unrecorded was acknowledged; the broker "
                           "delivers it again after a restart")
    sub.save()
    sub.close()
    log.info("stopped: %s", sub.summary())
    return 0


def alerts_sink(settings: SubscriberSettings, sub: Subscriber) -> AlertsSink:
    """The alerts file's rules, over this subscriber's people and rooms; alerts recorded
    in the history through a writer of their own (this sink writes from its thread)."""
    assert settings.alerts is not None
    store = SqliteHistory(settings.history, retention=False) \
        if settings.history is not None else None
    cfg = settings.alerts
    check_private(cfg.path)
    log.info("alerts: %d rule(s) from %s, %s", len(cfg.rules), cfg.path,
             f"sent to {cfg.webhook.masked}" if cfg.webhook else "no webhook (logged and "
             "recorded only)")
    return AlertsSink(cfg, store=store, room_of=sub.rooms.room_of)


def check_private(path: Path) -> None:
    """The alerts file may hold a secret URL: warn when every user may read it."""
    try:
        if path.stat().st_mode & stat.S_IROTH:
            log.warning("alerts file %s is readable by every user and may hold a secret "
                        "URL; run: chmod 600 %s", path, path)
    except OSError:
        pass


def discard_unwritable_output() -> None:
    """Readings that could not be written stay unacknowledged (shown after the restart);
    drop them from stdout's buffer so that exiting does not fail on them again."""
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    return config.run_program("subscriber", argv, build, _run)


if __name__ == "__main__":
    raise SystemExit(main())
