"""`homewatch doctor` passes on a sound deployment and fails, printing the fix, on one
broken on purpose: a world-readable key, anonymous access allowed, an expired certificate.
What it cannot check (no Docker SDK, a broker that is not running) it says, and why."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    BROKER_CONF,
    ROOT,
    Broker,
    clean_env,
    free_port,
    gen_certs,
    homewatch_cli,
)

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
    assert "9 passed, 0 failed" in r.stdout
    for name in ("CA certificate", "broker reachable", "broker certificate", "file permissions",
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


LIVE_CHECKS = ("broker certificate", "anonymous refused", "no plaintext listener",
               "TLS version floor", "device isolation")
NO_DOCKER_SDK = ("import sys; sys.modules['docker'] = None; "  # `import docker` fails
                 "from homewatch.cli import main; raise SystemExit(main(sys.argv[1:]))")


def test_doctor_without_the_docker_sdk_reports_every_check_and_what_it_could_not_check(
        sound: tuple[Broker, Path]) -> None:
    """From a plain pip install (no `docker` module), every check that can run is
    reported, the isolation probe is 'not checked' with the reason and the way out, and
    the exit code (3) says the audit is incomplete; no traceback."""
    broker, certs = sound
    blocked = subprocess.run([sys.executable, "-c", NO_DOCKER_SDK.split("from")[0] +
                              "import docker"], env=clean_env(), capture_output=True)
    assert blocked.returncode != 0  # the shim really hides the Docker SDK
    r = subprocess.run(
        [sys.executable, "-c", NO_DOCKER_SDK, "--certs", str(certs), "doctor",
         broker.url("localhost"), "--config", str(BROKER_CONF)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 3, r.stdout + r.stderr
    for name in ("CA certificate", "broker reachable", "broker certificate",
                 "file permissions", "anonymous refused", "no plaintext listener",
                 "TLS version floor", "broker limits"):
        assert f"PASS  {name}" in r.stdout
    assert f"SKIP  {'device isolation':<22} not checked:" in r.stdout
    assert "the Docker SDK is not installed (pip install 'homewatch[server]')" in r.stdout
    assert "--broker-pid" in r.stdout
    assert r.stdout.rstrip().endswith("8 passed, 0 failed, 1 not checked")


def test_doctor_reports_a_stopped_broker_as_not_reachable_and_judges_nothing_that_needs_it(
        tmp_path: Path) -> None:
    """Nothing listening on the broker's port is one failure, 'broker reachable', with
    the fix (start it); every verdict that needs the broker is 'not checked', never a
    pass or a wrong fix such as tls_version."""
    certs = fresh(tmp_path)
    url = f"mqtts://localhost:{free_port()}/home"
    r = subprocess.run(
        [sys.executable, "-m", "homewatch.cli", "--certs", str(certs), "doctor", url,
         "--config", str(BROKER_CONF)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  broker reachable       nothing answers at localhost:" in r.stdout
    assert "start the broker: `make up`" in r.stdout
    for name in LIVE_CHECKS:
        assert f"SKIP  {name:<22} not checked: the broker is not reachable" in r.stdout
    for name in ("CA certificate", "file permissions", "broker limits"):
        assert f"PASS  {name}" in r.stdout
    assert "tls_version" not in r.stdout
    assert r.stdout.rstrip().endswith("3 passed, 1 failed, 5 not checked")


def test_doctor_probes_the_homeassistant_identity_when_there_is_one(
        sound: tuple[Broker, Path]) -> None:
    """With `homewatch homeassistant add` done, the isolation probe also checks that
    Home Assistant's identity receives neither the sealed readings nor a probe device's
    writes into the discovery and bridge prefixes."""
    broker, certs = sound
    homewatch_cli(certs, "homeassistant", "add")
    broker.reload()
    r = doctor(broker, certs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Home Assistant's identity received none of its writes" in r.stdout
