"""Fixtures: certificates made by the project's own script, identities made by the
project's own CLI, a real mosquitto process running the project's broker config, and the
real dashboard process over a history database written by the real history writer."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import history_sample
from tests.helpers import Broker, gen_certs, homewatch_cli
from tests.history_sample import Sample
from tests.homeassistant import HomeAssistant, MqttSettings, missing
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


# -- a real Home Assistant --------------------------------------------------------------

@pytest.fixture(scope="session")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """One real Home Assistant per session (tests/homeassistant.py), onboarded, its MQTT
    integration not set up; it must stop cleanly (exit 0). Without its virtualenv the
    test FAILS, saying how to install it (CI installs it)."""
    reason = missing()
    if reason:
        pytest.fail(reason, pytrace=False)
    ha = HomeAssistant(workdir=tmp_path_factory.mktemp("homeassistant")).start()
    yield ha
    assert ha.stop() == 0, ha.log_tail()


@pytest.fixture
def home_assistant_mqtt(home_assistant: HomeAssistant,
                        ) -> Iterator[Callable[[MqttSettings], HomeAssistant]]:
    """Connects the session's Home Assistant to a broker through its MQTT config flow:
    call it with MqttSettings(host, port, CA file, user, password FILE, discovery prefix);
    a refusal raises MqttRefused. The integration is removed after the test, and with it
    every entity and device it made, so the next test starts from a clean slate."""
    def connect(settings: MqttSettings) -> HomeAssistant:
        home_assistant.setup_mqtt(settings)
        return home_assistant
    yield connect
    home_assistant.remove_mqtt()
    home_assistant.wait_for(
        lambda _: not [e for e in home_assistant.entity_registry() if e["platform"] == "mqtt"],
        message="MQTT entities outlived their integration")


# -- the dashboard ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def dashboard_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make up` leaves in certs/dashboard, made by the same code: the HTTPS
    certificate from the dashboard's own CA (gen-certs.sh), the household password and its hash
    (`homewatch dashboard password`), and the certificate inventory, which a device
    added with `homewatch device add` (pi-garage, never seen by the history) is in."""
    out = tmp_path_factory.mktemp("dashboard-certs")
    gen_certs(out)
    homewatch_cli(out, "dashboard", "password")
    homewatch_cli(out, "device", "add", "pi-garage")
    return out


@pytest.fixture(scope="session")
def history_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sample]:
    """A history database written by the real SQLite writer (tests/history_sample.py)."""
    from homewatch.history.sqlite import SqliteHistory

    path = tmp_path_factory.mktemp("history") / "history.db"
    received = history_sample.Received()
    writer = SqliteHistory(path, clock=received)
    try:
        sample = history_sample.write(writer, time.time(), received)
    finally:
        writer.close()
    return path, sample


@pytest.fixture(scope="session")
def dashboard(dashboard_certs: Path, history_db: tuple[Path, Sample],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    """The real dashboard process over that database, on a free loopback port, with a
    metrics token; it must stop cleanly (exit 0)."""
    work = tmp_path_factory.mktemp("dashboard")
    token = work / "metrics-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    process = DashboardProcess(directory=dashboard_certs / "dashboard",
                               history=history_db[0], ca=dashboard_certs / "dashboard-ca.crt",
                               workdir=work, args=("--metrics-token-file", str(token))).start()
    yield process
    assert process.stop() == 0, process.log()
