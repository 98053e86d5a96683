"""Fixtures: certificates made by the project's own script, identities made by the
project's own CLI, and a real mosquitto process running the project's broker config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Broker, gen_certs, homewatch_cli

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
