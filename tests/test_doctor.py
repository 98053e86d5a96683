"""`homewatch doctor` passes on a sound deployment and fails, printing the fix, on one
broken on purpose: a world-readable key, anonymous access allowed, an expired certificate."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BROKER_CONF, ROOT, Broker, clean_env, gen_certs, homewatch_cli

pytestmark = pytest.mark.broker


def doctor(broker: Broker, certs: Path, config: Path = BROKER_CONF,
           ) -> subprocess.CompletedProcess[str]:
    assert broker.proc is not None
    return subprocess.run(
        [sys.executable, "-m", "homewatch.cli", "--certs", str(certs), "doctor",
         broker.url("localhost"), "--config", str(config), "--broker-pid",
         str(broker.proc.pid)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)


def fresh(tmp_path: Path, *gen_args: str) -> Path:
    certs = tmp_path / "certs"
    gen_certs(certs, *gen_args)
    for name in ("subscriber", "pi-kitchen"):
        homewatch_cli(certs, "device", "add", name)
    return certs


@pytest.fixture
def sound(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    certs = fresh(tmp_path)
    b = Broker(certs=certs, workdir=tmp_path / "broker").start()
    yield b, certs
    b.stop()


def test_doctor_passes_on_a_sound_deployment(sound: tuple[Broker, Path]) -> None:
    """Every check passes and the exit code is 0; the probe identities are cleaned up."""
    broker, certs = sound
    r = doctor(broker, certs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 passed, 0 failed" in r.stdout
    for name in ("CA certificate", "broker certificate", "file permissions",
                 "anonymous refused", "no plaintext listener", "TLS version floor",
                 "broker limits", "device isolation"):
        assert f"PASS  {name}" in r.stdout
    assert "doctor-" not in (certs / "broker" / "passwd").read_text()
    assert not list((certs / "clients").glob("doctor-*"))


def test_doctor_fails_on_a_world_readable_key_and_says_chmod(
        sound: tuple[Broker, Path]) -> None:
    """A world-readable broker key fails 'file permissions' with the chmod to run."""
    broker, certs = sound
    key = certs / "broker" / "server.key"
    key.chmod(0o644)
    r = doctor(broker, certs)
    assert r.returncode == 1
    assert f"FAIL  file permissions       {key} is 0644" in r.stdout
    assert f"chmod 600 {key}" in r.stdout


def test_doctor_fails_when_anonymous_access_is_allowed(tmp_path: Path) -> None:
    """A broker allowing anonymous clients fails two checks, each with its fix."""
    certs = fresh(tmp_path)
    conf = tmp_path / "anonymous.conf"
    conf.write_text(BROKER_CONF.read_text().replace("allow_anonymous false",
                                                   "allow_anonymous true"))
    broker = Broker(certs=certs, workdir=tmp_path / "broker", conf=conf).start()
    try:
        r = doctor(broker, certs, conf)
    finally:
        broker.stop()
    assert r.returncode == 1
    assert "FAIL  anonymous refused      a client without credentials got in" in r.stdout
    assert "set `allow_anonymous false`" in r.stdout
    assert "FAIL  broker limits          allow_anonymous is not false" in r.stdout


def test_doctor_fails_on_an_expired_broker_certificate(tmp_path: Path) -> None:
    """An expired broker certificate fails with the command that renews it."""
    certs = fresh(tmp_path, "--days", "0")
    time.sleep(1.5)
    broker = Broker(certs=certs, workdir=tmp_path / "broker").start()
    try:
        r = doctor(broker, certs)
    finally:
        broker.stop()
    assert r.returncode == 1
    assert "FAIL  broker certificate     certificate has expired" in r.stdout
    assert "scripts/gen-certs.sh --renew-server" in r.stdout
