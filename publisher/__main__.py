"""``python -m publisher mqtts://HOST:8883/home``: the program's entry point.

Exit codes: 0 stopped cleanly, 1 broker/TLS failure, 2 bad settings or input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from homewatch import config
from homewatch.errors import ConfigError, ConnectError, HomewatchError
from homewatch.health import Heartbeat
from homewatch.mqtt import Connection
from publisher import presence, sensors
from publisher.app import Publisher, run
from publisher.sequence import SequenceCounter
from publisher.settings import PublisherSettings, build

log = logging.getLogger("publisher")

FLUSH_TIMEOUT = 10.0


async def _main(settings: PublisherSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_thread = threading.Event()

    def request_stop(signame: str) -> None:
        if not stop.is_set():
            log.info("%s received: finishing in-flight publishes", signame)
        stop.set()
        stop_thread.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)

    known = presence.load_known_devices(settings.known_devices)
    temperature = sensors.detect(settings.temperature, settings.sysfs)
    scanner = presence.make_scanner(settings.scanner, known, duration=settings.scan_duration,
                                    adapter=settings.adapter)
    sequence = SequenceCounter(settings.state_dir / f"{settings.device}.seq")
    conn = Connection(settings.connection)
    heartbeat = Heartbeat(settings.health_file, every=min(5.0, settings.interval))
    await asyncio.to_thread(conn.start, stop_thread)
    if stop.is_set():
        conn.stop()
        return 0
    pub = Publisher(conn, settings.ring(), device=settings.device,
                    base=settings.connection.url.base, sequence=sequence,
                    key_file=settings.key_file)
    try:
        stats = await run(pub, temperature=temperature, scanner=scanner, known=known,
                          interval=settings.interval, count=settings.count, stop=stop,
                          heartbeat=heartbeat)
    finally:
        heartbeat.clear()
        flushed = await pub.flush(FLUSH_TIMEOUT)
        conn.stop()
    if not flushed:
        log.warning("%d publish(es) not acknowledged within %.0f s", pub.outstanding(),
                    FLUSH_TIMEOUT)
    log.info("stopped: %d reading(s), %d message(s) published, %d sensor error(s), "
             "%d scanner error(s)", stats.readings, stats.published, stats.sensor_errors,
             stats.scanner_errors)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = build(argv, os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"publisher: error: {exc}\n")
        return 2
    if settings.show_settings:
        sys.stdout.write(config.describe(settings) + "\n")
        return 0
    config.setup_logging(settings.log_level)
    try:
        return asyncio.run(_main(settings))
    except ConfigError as exc:
        sys.stderr.write(f"publisher: error: {exc}\n")
        return 2
    except ConnectError as exc:
        sys.stderr.write(f"publisher: error: {exc}\n")
        return 1
    except HomewatchError as exc:
        sys.stderr.write(f"publisher: error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"publisher: error: {exc.filename or ''}: {exc.strerror}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
