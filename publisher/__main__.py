"""``python -m publisher mqtts://HOST:8883/home``: the program's entry point.

Exit codes: 0 stopped cleanly, 1 broker/TLS failure, 2 bad settings or input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Sequence

from homewatch import config
from homewatch.errors import StoppedError, StorageError
from homewatch.health import Heartbeat
from homewatch.mqtt import Connection, Will
from publisher import presence, sensors
from publisher.app import Publisher, run
from publisher.journal import open_outbox
from publisher.settings import PublisherSettings, build

log = logging.getLogger("publisher")

FLUSH_TIMEOUT = 10.0


async def _main(settings: PublisherSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_thread = threading.Event()
    signalled = asyncio.Event()

    abandon = asyncio.Event()

    def request_stop(signame: str) -> None:
        if signalled.is_set():
            log.info("%s received again: leaving the rest in the outbox", signame)
            abandon.set()
        else:
            log.info("%s received: finishing in-flight publishes", signame)
        signalled.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)

    known = presence.load_known(settings.known_devices)
    tracker = presence.PresenceTracker(known, rssi_threshold=settings.rssi_threshold,
                                       away_after=settings.away_after)
    temperature = sensors.detect(settings.temperature, settings.sysfs)
    scanner = presence.make_scanner(settings.scanner, known.macs,
                                    duration=settings.scan_duration, adapter=settings.adapter,
                                    mode=settings.scan_mode, place=settings.device)
    stranger_key = (presence.stranger_key(settings.state_dir / "stranger-hash.key")
                    if settings.hash_strangers else None)
    outbox = open_outbox(settings.state_dir, settings.device, limit=settings.outbox_limit,
                         journal_dir=settings.journal_dir, spill_after=settings.spill_after)
    pub = Publisher(settings.ring(), device=settings.device,
                    base=settings.connection.url.base, outbox=outbox,
                    key_file=settings.key_file)

    def network_failed() -> None:  # paho's thread: reported below, like a task's failure
        loop.call_soon_threadsafe(stop.set)

    conn = Connection(settings.connection, will=Will(topic=pub.status_topic, payload=b"offline"),
                      on_connected=pub.on_connected, on_published=pub.on_published,
                      on_failure=network_failed)
    pub.conn = conn
    heartbeat = Heartbeat(settings.health_file, every=min(5.0, settings.interval))

    # Connect in the background: readings are taken (into the outbox) meanwhile.
    connecting = asyncio.ensure_future(asyncio.to_thread(conn.start, stop_thread))
    pumping = asyncio.ensure_future(pub.pump_forever(stop))

    def task_done(task: asyncio.Future[None]) -> None:
        """No task ends unobserved: a failure stops the program (reported below)."""
        if not task.cancelled() and task.exception() is not None:
            stop.set()
            stop_thread.set()

    connecting.add_done_callback(task_done)
    pumping.add_done_callback(task_done)
    failure: Exception | None = None
    try:
        stats = await run(pub, temperature=temperature, scanner=scanner, tracker=tracker,
                          interval=settings.interval, count=settings.count, stop=stop,
                          heartbeat=heartbeat, stranger_key=stranger_key,
                          demo=settings.demo, room=settings.room,
                          stall_cycles=settings.stall_cycles)
        if connecting.done() and connecting.exception() is not None:
            raise connecting.exception()  # type: ignore[misc]
        failure = task_failure(pumping) or conn.failure
        if failure is None:
            # Finish what is waiting, giving a broker that is (re)starting a bounded
            # chance; whatever is left stays in the outbox for the next start.
            pub.commit()
            if len(outbox):
                log.info("waiting up to %.0f s for the broker to acknowledge %d reading(s)%s",
                         FLUSH_TIMEOUT, len(outbox), " (signal again to leave them in the "
                         "outbox)" if signalled.is_set() else "")
            flushed = await pub.flush(FLUSH_TIMEOUT, abandon=abandon)
            if pub.connected():
                conn.publish(pub.status_topic, b"offline", qos=1,
                             retain=True).wait_for_publish(2)
    except StorageError as exc:
        failure = exc
    finally:
        stop.set()
        stop_thread.set()
        failure = failure or task_failure(pumping) or conn.failure
        if failure is not None:
            heartbeat.fail(str(failure))
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping  # (its failure, if any, is the one reported)
        with contextlib.suppress(Exception):
            await connecting
        heartbeat.clear()
        conn.stop()
        if failure is None:
            pub.commit()  # a reading taken in the last moment is kept for the next start
            outbox.close()
    if failure is not None:
        with contextlib.suppress(StorageError):
            outbox.close()
        raise StoppedError(failure, f"what the outbox holds is sent after a restart "
                           f"({pub.uncommitted} reading(s) taken since could not be stored)")
    if not flushed:
        log.warning("%d reading(s) not acknowledged; they stay in the outbox for the next "
                    "start", len(outbox))
    log.info("stopped: %d reading(s), %d message(s) sent, %d acknowledged, %d dropped "
             "(outbox full), %d sensor error(s), %d scanner error(s), %d disk sync(s)",
             stats.readings, stats.sent, stats.acked, outbox.dropped, stats.sensor_errors,
             stats.scanner_errors, outbox.syncs)
    return 0


def task_failure(task: asyncio.Future[None]) -> Exception | None:
    if not task.done() or task.cancelled():
        return None
    exc = task.exception()
    return exc if isinstance(exc, Exception) else None


def main(argv: Sequence[str] | None = None) -> int:
    return config.run_program("publisher", argv, build, lambda s: asyncio.run(_main(s)))


if __name__ == "__main__":
    raise SystemExit(main())
