"""Serving the application: its own HTTPS listener (TLS 1.2 or later), a heartbeat for
the container's health check, a clean stop on SIGTERM/SIGINT.

A renewed certificate (the same files, new contents) is picked up for new connections
within seconds, without a restart; a load that fails (a new certificate met with the old
key, an unreadable file) is tried again every few seconds, and the previous certificate
is served until one works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from homewatch.errors import ConfigError, HomewatchError
from homewatch.health import Heartbeat

log = logging.getLogger(__name__)

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
HOUSEKEEPING_EVERY = 5.0


class ServeError(HomewatchError):
    """The dashboard could not listen (address in use, not allowed). Exit code 1."""


class Certificate:
    """The server's TLS context and the files it was loaded from.

    Each load makes a context of its own; the listener's context hands every new
    connection the newest one that loaded (its ``sni_callback`` runs at every
    handshake, with or without a server name). A load that fails, such as a renewed
    certificate met with the old key, leaves the previous context serving untouched:
    loading into a live context would leave it with a certificate and no key."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._stamp = self._files()
        self._failed: tuple[tuple[int, ...], str] | None = None  # the files, the error
        self._current = self._load()
        self.context = self._current  # the listener's
        self.context.sni_callback = self._newest

    def _newest(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if self._current is not context:
            connection.context = self._current

    def _files(self) -> tuple[int, ...]:
        """What changes when either file does: its inode, size, mtime and ctime (a file
        written in place with its mtime put back, or made readable by a chmod or chown,
        changes only its ctime); () when either cannot be looked at."""
        try:
            stats = [path.stat() for path in (self.cert, self.key)]
        except OSError:
            return ()
        return tuple(value for st in stats
                     for value in (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            raise ConfigError(f"TLS certificate {self.cert} or key {self.key} unusable: "
                              f"{exc.reason or exc}") from None
        except OSError as exc:
            raise ConfigError(f"TLS certificate {self.cert} or key {self.key}: "
                              f"{exc.strerror}") from None
        return context

    def reload_if_changed(self) -> None:
        """Load the files again if they changed since the last load that worked: a load
        that failed is tried again at every call until one works (its error is logged
        once for each state of the files)."""
        stamp = self._files()
        if not stamp or stamp == self._stamp:
            return
        try:
            self._current = self._load()
        except ConfigError as exc:
            if (stamp, str(exc)) != self._failed:
                log.error("%s; still serving the previous certificate", exc)
            self._failed = (stamp, str(exc))
            return
        self._stamp, self._failed = stamp, None
        log.info("TLS certificate %s reloaded", self.cert)


async def serve(app: web.Application, certificate: Certificate, *, bind: str, port: int,
                heartbeat: Heartbeat, tick: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGTERM or SIGINT, then close every connection. Every few seconds:
    ``tick()``, a certificate reload when its files changed, a heartbeat."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log_format=ACCESS_LOG_FORMAT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port, ssl_context=certificate.context)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ServeError(f"cannot listen on {bind}:{port}: {reason}") from None
        host = f"[{bind}]" if ":" in bind else bind
        log.info("dashboard on https://%s:%d/", host, port)
        while not stop.is_set():
            tick()
            certificate.reload_if_changed()
            heartbeat.beat(True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOUSEKEEPING_EVERY)
        log.info("stopping")
    finally:
        heartbeat.clear()
        await runner.cleanup()
