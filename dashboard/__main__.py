"""``python -m dashboard`` (or ``homewatch-dashboard``): the dashboard's entry point.

Exit codes: 0 stopped cleanly, 1 could not listen, 2 bad settings or a missing file
(certificate, key, password hash, history database), in one line on stderr.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from dashboard.app import Dashboard, History, make_app
from dashboard.auth import (
    Clock,
    KnownBrowsers,
    LoginLimiter,
    Password,
    Sessions,
    WatchedFile,
)
from dashboard.inventory import Inventory
from dashboard.server import Certificate, serve
from dashboard.settings import DashboardSettings, build, check_files
from homewatch import options
from homewatch.errors import ConfigError
from homewatch.health import Heartbeat
from homewatch.history.sqlite import open_reader


def _load(watched: WatchedFile) -> None:
    try:
        problem = watched.load()
    except OSError as exc:
        raise ConfigError(f"{watched.what} {watched.path}: {exc.strerror}") from None
    if problem is not None:
        raise ConfigError(problem)


def open_dashboard(settings: DashboardSettings, *, clock: Clock = time.monotonic) -> Dashboard:
    """What the handlers share, from the settings: the password hash and the metrics
    token read (a missing or empty one is a ConfigError), the history opened. ``clock``
    times sessions and the login rate limit (tests pass one of their own)."""
    password = Password(settings.password_hash)
    token = (WatchedFile(settings.metrics_token_file, "metrics token file")
             if settings.metrics_token_file else None)
    for watched in (password.file, token):
        if watched is not None:
            _load(watched)
    return Dashboard(history=History(lambda: open_reader(settings.history)),
                     password=password,
                     sessions=Sessions(idle=settings.session_seconds, clock=clock),
                     limiter=LoginLimiter(clock=clock),
                     browsers=KnownBrowsers(password.file.current),
                     inventory=Inventory(settings.certificates), metrics_token=token)


async def _serve(settings: DashboardSettings) -> int:
    certificate = Certificate(settings.tls_cert, settings.tls_key)
    dash = open_dashboard(settings)
    try:
        def tick() -> None:  # notice a new password (and end sessions) without a request
            for watched in (dash.password.file, dash.metrics_token):
                if watched is not None:
                    watched.current()

        await serve(make_app(dash), certificate, bind=settings.bind, port=settings.port,
                    heartbeat=Heartbeat(settings.health_file, every=1.0), tick=tick)
    finally:
        dash.close()
    return 0


def _run(settings: DashboardSettings) -> int:
    check_files(settings)
    return asyncio.run(_serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    return options.run_program("dashboard", argv, build, _run)


if __name__ == "__main__":
    raise SystemExit(main())
