"""``python -m dashboard`` (or ``homewatch-dashboard``): the dashboard's entry point.

Exit codes: 0 stopped cleanly, 1 could not listen, 2 bad settings or a missing file
(certificate, key, password, history database), in one line on stderr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from dashboard.app import Dashboard, History, make_app
from dashboard.auth import LoginLimiter, SecretFile, Sessions
from dashboard.inventory import Inventory
from dashboard.server import Certificate, serve
from dashboard.settings import DashboardSettings, build, check_files
from homewatch import options
from homewatch.errors import ConfigError
from homewatch.health import Heartbeat
from homewatch.history.sqlite import open_reader


def _secret(path: Path, what: str) -> SecretFile:
    secret = SecretFile(path, what)
    try:
        problem = secret.load()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if problem is not None:
        raise ConfigError(problem)
    return secret


async def _serve(settings: DashboardSettings) -> int:
    certificate = Certificate(settings.tls_cert, settings.tls_key)
    password = _secret(settings.password_file, "password file")
    token = (_secret(settings.metrics_token_file, "metrics token file")
             if settings.metrics_token_file else None)
    history = History(lambda: open_reader(settings.history))
    try:
        dash = Dashboard(history=history, password=password,
                         sessions=Sessions(idle=settings.session_seconds),
                         limiter=LoginLimiter(), inventory=Inventory(settings.certificates),
                         metrics_token=token)

        def tick() -> None:
            password.refresh()
            if token is not None:
                token.refresh()

        await serve(make_app(dash), certificate, bind=settings.bind, port=settings.port,
                    heartbeat=Heartbeat(settings.health_file, every=1.0), tick=tick)
    finally:
        history.close()
    return 0


def _run(settings: DashboardSettings) -> int:
    check_files(settings)
    return asyncio.run(_serve(settings))


def main(argv: Sequence[str] | None = None) -> int:
    return options.run_program("dashboard", argv, build, _run)


if __name__ == "__main__":
    raise SystemExit(main())
