"""Fixtures: certificates made by the project's own script, identities made by the
project's own CLI, a real mosquitto process running the project's broker config, and the
real dashboard process over a history database written by the real history writer."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import history_sample
from tests.helpers import Broker, gen_certs, homewatch_cli
from tests.history_sample import Sample
from tests.web import DashboardProcess

DEVICES = ("pi-kitchen", "pi-garage")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, broker certificate, the subscriber and two devices, as a user would make them."""
    out = tmp_path_factory.mktemp("certs")
    gen_certs(out)
    for name in ("subscriber", *DEVICES):
        homewatch_cli(out, "device", "add", name)
    return out


@pytest.fixture(scope="session")
def broker(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The real mosquitto, from broker/mosquitto.conf, on a free loopback port."""
    b = Broker(certs=certs, workdir=tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture
def workdir(tmp_path: Path, certs: Path) -> Path:
    """A directory laid out like the repository root: ./certs is the test certificates."""
    (tmp_path / "certs").symlink_to(certs)
    return tmp_path


# -- the dashboard ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def dashboard_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project CA, and in dashboard/ what `make up` leaves there: a server certificate
    from that CA with the broker's subjectAltNames, and a household password (0600)."""
    out = tmp_path_factory.mktemp("dashboard-certs")
    gen_certs(out)
    creds = out / "dashboard"
    creds.mkdir(mode=0o700)
    for name in ("server.crt", "server.key"):
        shutil.copy2(out / "broker" / name, creds / name)
    password = creds / "password"
    password.write_text(secrets.token_urlsafe(18) + "\n")
    password.chmod(0o600)
    return out


@pytest.fixture(scope="session")
def history_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sample]:
    """A history database written by the real SQLite writer (tests/history_sample.py)."""
    from homewatch.history.sqlite import SqliteHistory

    path = tmp_path_factory.mktemp("history") / "history.sqlite3"
    writer = SqliteHistory(path)
    try:
        sample = history_sample.write(writer, time.time())
    finally:
        writer.close()
    return path, sample


@pytest.fixture(scope="session")
def dashboard(dashboard_certs: Path, history_db: tuple[Path, Sample],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    """The real dashboard process over that database, on a free loopback port, with a
    certificate inventory and a metrics token; it must stop cleanly (exit 0)."""
    work = tmp_path_factory.mktemp("dashboard")
    now = history_db[1].now
    inventory = {"ca": {"not_after": _iso(now + 3650 * 86400)},
                 "broker": {"not_after": _iso(now + 800 * 86400)},
                 "devices": {history_sample.KITCHEN: {"not_after": _iso(now + 20 * 86400)},
                             "pi-garage": {"not_after": _iso(now + 400 * 86400)}}}
    (work / "certificates.json").write_text(json.dumps(inventory))
    token = work / "metrics-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    process = DashboardProcess(
        credentials=dashboard_certs / "dashboard", history=history_db[0],
        ca=dashboard_certs / "ca.crt", workdir=work,
        args=("--certificates", str(work / "certificates.json"),
              "--metrics-token-file", str(token))).start()
    yield process
    assert process.stop() == 0, process.log()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
