"""The home-server stack: the real docker-compose.yml brought up by `make up` on a real
Docker engine (through the offline images where no registry is reachable), checked from
the host and through the Docker SDK. pytest-docker tears it down at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from homewatch import pki
from homewatch.mqtt import ConnectionSettings
from tests.helpers import (
    ROOT,
    clean_env,
    copy_source_tree,
    free_port,
    paho_client,
    python_m,
    stop_client,
    stop_process,
)
from tests.homeassistant import HomeAssistant, MqttSettings

pytestmark = pytest.mark.compose

SERVICES = {"broker", "subscriber", "dashboard", "publisher"}


class Stack:
    """A copy of the repository with its own project name and loopback port."""

    def __init__(self, directory: Path, project: str, port: int) -> None:
        self.dir = directory
        self.project = project
        self.port = port
        self.dashboard_port = free_port()
        self.host = "127.0.0.1"
        self.certs = directory / "certs"
        self.sdk = docker.from_env()

    def make(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["make", "-s", *args], cwd=self.dir, env=clean_env(),
                           capture_output=True, text=True, timeout=900)
        if check and r.returncode != 0:
            raise AssertionError(f"make {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def containers(self, service: str | None = None, *, all: bool = False) -> list[Any]:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return list(self.sdk.containers.list(all=all, filters={"label": labels}))

    def container(self, service: str) -> Any:
        (c,) = self.containers(service)
        return c

    def logs(self, service: str) -> str:
        return str(self.container(service).logs().decode(errors="replace"))

    def wait_in_logs(self, service: str, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs(service)
            if text in logs:
                return logs
            time.sleep(1)
        raise AssertionError(f"{text!r} not in {service} logs:\n{self.logs(service)[-3000:]}")

    # the Broker interface of tests.helpers.paho_client
    def url(self, host: str | None = None, base: str = "home") -> str:
        return f"mqtts://{host or self.host}:{self.port}/{base}"


def copy_repository(target: Path) -> None:
    """The files a clone has (tracked + new), plus the offline build's .env and wheels."""
    copy_source_tree(target)
    for extra in [ROOT / ".env", *(ROOT / ".wheelhouse").glob("*.whl")]:
        if extra.is_file():
            (target / extra.relative_to(ROOT)).write_bytes(extra.read_bytes())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """`make up` in a fresh copy of the repository: unique project, free 127.0.0.1 port."""
    directory = tmp_path_factory.mktemp("stack") / "homewatch"
    directory.mkdir()
    copy_repository(directory)
    project = f"hwtest{os.getpid()}{uuid.uuid4().hex[:4]}"
    port = free_port()
    with open(directory / ".env", "a") as env:
        env.write(f"\nCOMPOSE_PROJECT_NAME={project}\nMQTT_BIND=127.0.0.1\n"
                  f"MQTT_PORT={port}\nDEMO_INTERVAL=1\nDEMO_LOG_LEVEL=debug\n"
                  "SUBSCRIBER_LOG_LEVEL=debug\n")
    s = Stack(directory, project, port)
    with open(directory / ".env", "a") as env:
        env.write(f"DASHBOARD_BIND=127.0.0.1\nDASHBOARD_PORT={s.dashboard_port}\n")
    s.up_output = s.make("up").stdout  # type: ignore[attr-defined]
    return s


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    return "docker compose" if v2 else "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file(stack: Stack) -> str:
    return str(stack.dir / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name(stack: Stack) -> str:
    return stack.project


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return []  # `make up` (the stack fixture) is the set-up under test


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --remove-orphans"]


@pytest.fixture(scope="session")
def running(stack: Stack, docker_services: Any) -> Iterator[Stack]:
    yield stack


STACK_SETTINGS = ("MQTT_BIND", "MQTT_PORT", "DASHBOARD_BIND", "DASHBOARD_PORT",
                  "HISTORY_RETENTION_DAYS")


def compose_config(project_dir: Path, dotenv: str = "") -> dict[str, Any]:
    """`docker compose config` of the repository's docker-compose.yml with ``dotenv`` as
    the project's .env (as a user writes it), nothing from this shell: no container."""
    project_dir.mkdir(exist_ok=True)
    (project_dir / ".env").write_text(dotenv)
    env = {k: v for k, v in clean_env().items() if k not in STACK_SETTINGS}
    r = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"),
                        "--project-directory", str(project_dir), "config", "--format", "json"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    config: dict[str, Any] = json.loads(r.stdout)
    return config


def published(config: dict[str, Any], service: str) -> list[tuple[str, str, int]]:
    return [(p["host_ip"], p["published"], p["target"])
            for p in config["services"][service].get("ports", [])]


def test_compose_defaults_publish_on_the_lan_and_keep_400_days(tmp_path: Path) -> None:
    """With no .env setting (the README's defaults): the dashboard is published on
    0.0.0.0:8443 and the broker on 0.0.0.0:8883, nothing else is published, and the
    subscriber keeps raw readings 400 days, through the option that sets its retention."""
    from subscriber.settings import OPTIONS

    config = compose_config(tmp_path / "defaults")
    services = config["services"]
    assert published(config, "dashboard") == [("0.0.0.0", "8443", 8443)]
    assert published(config, "broker") == [("0.0.0.0", "8883", 8883)]
    assert {name for name, s in services.items() if s.get("ports")} == {"dashboard",
                                                                         "broker"}
    assert services["dashboard"]["environment"]["HOMEWATCH_PORT"] == "8443"  # the target
    (retention,) = [o for o in OPTIONS if o.name == "history-retention"]
    assert services["subscriber"]["environment"][retention.env] == "400"
    # (nothing on its command line, which would win over the environment)
    assert services["subscriber"]["command"] == ["homewatch-subscriber"]


def test_compose_settings_in_dotenv_move_the_dashboard_and_set_the_retention(
        tmp_path: Path) -> None:
    """DASHBOARD_BIND, DASHBOARD_PORT and HISTORY_RETENTION_DAYS in .env reach the
    dashboard's published port and the subscriber's retention; the container side stays
    8443."""
    from subscriber.settings import OPTIONS

    config = compose_config(tmp_path / "set", "DASHBOARD_BIND=127.0.0.1\nDASHBOARD_PORT=9443\n"
                            "HISTORY_RETENTION_DAYS=30\n")
    assert published(config, "dashboard") == [("127.0.0.1", "9443", 8443)]
    assert published(config, "broker") == [("0.0.0.0", "8883", 8883)]  # untouched
    (retention,) = [o for o in OPTIONS if o.name == "history-retention"]
    assert config["services"]["subscriber"]["environment"][retention.env] == "30"


def test_make_up_starts_every_service_healthy(running: Stack) -> None:
    """`make up` on a fresh copy ends with broker, subscriber, dashboard and publisher
    healthy."""
    out = running.up_output  # type: ignore[attr-defined]
    assert "Homewatch is up." in out and f":{running.port}/home" in out
    containers = running.containers()
    assert {c.labels["com.docker.compose.service"] for c in containers} == SERVICES
    for c in containers:
        assert c.attrs["State"]["Health"]["Status"] == "healthy", c.name


def test_demo_reading_appears_decrypted_in_the_subscriber_log(running: Stack) -> None:
    """The demo publisher's readings show in the subscriber's log, decrypted."""
    logs = running.wait_in_logs(
        "subscriber", 'Topic:home/demo-pi/temperature,Payload:{"temperature": ')
    line = next(x for x in logs.splitlines() if x.startswith("Topic:home/demo-pi/temperature"))
    assert line.endswith(" [demo]"), line  # invented data, marked as the demo's
    payload = json.loads(line.split(",Payload:", 1)[1].removesuffix(" [demo]"))
    assert set(payload) == {"temperature", "timestamp", "room"}
    assert payload["room"] == "demo-pi"  # a Pi's room is its device name unless set
    running.wait_in_logs("subscriber", "Topic:home/demo-pi/devices,Payload:[")


def test_only_the_tls_port_is_published_on_the_chosen_address(running: Stack) -> None:
    """Only the broker and the dashboard publish a port: 8883/tcp on MQTT_BIND:MQTT_PORT,
    8443/tcp (HTTPS) on DASHBOARD_BIND:DASHBOARD_PORT."""
    published = {}
    for c in running.containers():
        for port, bindings in (c.attrs["NetworkSettings"]["Ports"] or {}).items():
            if bindings:
                published[(c.labels["com.docker.compose.service"], port)] = bindings
    assert published == {("broker", "8883/tcp"): [{"HostIp": "127.0.0.1",
                                                    "HostPort": str(running.port)}],
                         ("dashboard", "8443/tcp"): [{"HostIp": "127.0.0.1",
                                                      "HostPort": str(running.dashboard_port)}]}


def test_anonymous_and_wrong_password_are_refused_from_the_host(running: Stack) -> None:
    """From the host: no user, or a wrong password, gets CONNACK refused."""
    for user, secret in ((None, None), ("demo-pi", "wrong"), ("subscriber", "")):
        client, rc = paho_client(running, running.certs, user, secret)  # type: ignore[arg-type]
        stop_client(client)
        assert rc is not None and rc.is_failure, user


def test_plaintext_mqtt_to_the_tls_port_fails(running: Stack) -> None:
    """A plain MQTT CONNECT to the published port never gets a CONNACK."""
    pw = (running.certs / "clients" / "demo-pi" / "password").read_text().strip()
    client, rc = paho_client(running, running.certs, "demo-pi", pw,  # type: ignore[arg-type]
                             tls=False)
    stop_client(client)
    assert rc is None


def test_init_service_ran_once_hardened_and_exited_0(running: Stack) -> None:
    """The one-shot init service made the certificates and identities, exited 0, and ran
    read-only with only the capabilities it needs to hand files to the right groups."""
    (init,) = running.containers("init", all=True)
    assert init.attrs["State"]["Status"] == "exited" and init.attrs["State"]["ExitCode"] == 0
    host = init.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == {"CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID",
                                   "CAP_DAC_OVERRIDE"} or set(host["CapAdd"]) == {
        "CHOWN", "FOWNER", "FSETID", "DAC_OVERRIDE"}
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["RestartPolicy"]["Name"] in ("no", "")
    assert "init: certs/ ready" in init.logs().decode()
    assert "made CA" in running.up_output  # type: ignore[attr-defined]


def test_every_container_log_is_capped(running: Stack) -> None:
    """Docker's default log grows forever: each service keeps at most 3 x 10 MB."""
    for c in running.containers(all=True):
        log_config = c.attrs["HostConfig"]["LogConfig"]
        assert log_config == {"Type": "json-file",
                              "Config": {"max-size": "10m", "max-file": "3"}}, c.name


def test_app_containers_are_hardened(running: Stack) -> None:
    """Subscriber, dashboard and publisher: non-root, read-only root, no capabilities,
    no-new-privileges; every service has a health check and a restart policy."""
    for c in running.containers():
        host = c.attrs["HostConfig"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped", c.name
        assert c.attrs["Config"].get("Healthcheck", {}).get("Test"), c.name
        assert "no-new-privileges:true" in host["SecurityOpt"], c.name
        if c.labels["com.docker.compose.service"] == "broker":
            continue
        assert c.attrs["Config"]["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert c.exec_run("id -u").output.decode().strip() == "10001"
        assert c.exec_run("touch /opt/homewatch/x").exit_code != 0


def test_broker_runs_as_its_own_user_and_its_key_is_not_world_readable(
        running: Stack) -> None:
    """The broker runs as uid 1883 from the start, with no capability (so no chown errors
    over its read-only mounts in the log); its key, passwd and ACL are 0640 to gid 1883."""
    broker = running.container("broker")
    assert broker.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert not broker.attrs["HostConfig"]["CapAdd"]
    assert "Read-only file system" not in running.logs("broker")
    status = broker.exec_run("cat /proc/1/status").output.decode()
    uid_line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    assert uid_line.split()[1:] == ["1883"] * 4
    for name in ("server.key", "passwd", "acl"):
        st = (running.certs / "broker" / name).stat()
        assert (st.st_gid, st.st_mode & 0o777) == (1883, 0o640), name


def secrets_of(certs: Path) -> list[str]:
    found = [p.read_text().strip() for p in certs.glob("clients/*/password")]
    found += [p.read_text().strip() for p in certs.glob("clients/*/fernet.key")]
    found += [(certs / "ca.key").read_text().strip(), (certs / "broker/server.key").read_text()]
    found += [(certs / "dashboard/password").read_text().strip(),
              (certs / "dashboard/server.key").read_text().strip()]
    return [s for s in found if s]


def test_no_secret_in_any_container_environment_or_config(running: Stack) -> None:
    """No password, key or private key appears in `docker inspect` of any container."""
    secrets = secrets_of(running.certs)
    assert len(secrets) >= 5
    for c in running.containers():
        inspected = json.dumps(c.attrs)
        for secret in secrets:
            assert secret not in inspected, c.name
        assert not any("PASSWORD=" in e and "FILE" not in e for e in c.attrs["Config"]["Env"])


def test_no_secret_in_the_image_layers(running: Stack) -> None:
    """The app image (every layer, as `docker save` exports it) holds no credential."""
    secrets = [s.encode() for s in secrets_of(running.certs)]
    image = running.container("subscriber").image
    data = b"".join(image.save(named=False))
    assert len(data) > 10_000_000
    for secret in secrets:
        assert secret not in data


def test_a_second_stack_runs_beside_the_first(running: Stack, docker_compose_command: str,
                                              ) -> None:
    """Another project name and port give a second, independent broker at the same time."""
    other = f"{running.project}b"
    port = free_port()
    env = clean_env({"COMPOSE_PROJECT_NAME": other, "MQTT_PORT": str(port)})
    compose = docker_compose_command.split()
    try:
        subprocess.run([*compose, "up", "-d", "broker"], cwd=running.dir, env=env, check=True,
                       capture_output=True, timeout=300)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (c,) = running.sdk.containers.list(filters={"label": [
                f"com.docker.compose.project={other}"]})
            if c.attrs["State"]["Health"]["Status"] == "healthy":
                break
            time.sleep(1)
        assert c.attrs["State"]["Health"]["Status"] == "healthy"
        assert running.container("broker").attrs["State"]["Health"]["Status"] == "healthy"
        assert c.attrs["NetworkSettings"]["Ports"]["8883/tcp"][0]["HostPort"] == str(port)
    finally:
        subprocess.run([*compose, "down", "--volumes"], cwd=running.dir, env=env,
                       capture_output=True, timeout=120)


def test_doctor_passes_on_the_fresh_stack(running: Stack) -> None:
    """`make doctor` (the doctor in the app image) passes every check on `make up`'s stack,
    reloading the broker through the Docker SDK for its isolation probe."""
    r = running.make("doctor", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 passed, 0 failed" in r.stdout
    assert "doctor-" not in (running.certs / "broker" / "passwd").read_text()


def test_make_up_again_keeps_the_ca_and_credentials(running: Stack) -> None:
    """A second `make up` keeps the CA, the broker key and every password."""
    before = {p: p.read_bytes() for p in running.certs.rglob("*") if p.is_file()}
    out = running.make("up").stdout
    assert "Homewatch is up." in out and "made CA" not in out
    after = {p: p.read_bytes() for p in running.certs.rglob("*") if p.is_file()}
    assert after == before


def test_device_added_while_running_publishes_without_restart_and_removal_refuses_it(
        running: Stack, tmp_path: Path) -> None:
    """`make add-device` makes a bundle and reloads the broker (no restart); a publisher
    using only that bundle is shown by the subscriber; `make remove-device` refuses it."""
    broker = running.container("broker")
    started = broker.attrs["State"]["StartedAt"]
    out = running.make("add-device", "NAME=pi-test", f"URL={running.url('localhost')}").stdout
    assert "reloaded the broker" in out
    bundle = running.dir / "bundles" / "pi-test.tar.gz"
    assert bundle.stat().st_mode & 0o777 == 0o600
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    creds = tmp_path / "pi-test"
    env_file = (creds / "homewatch.env").read_text()
    assert f"HOMEWATCH_URL={running.url('localhost')}" in env_file
    r = subprocess.run(
        python_m("publisher", running.url("localhost"), "--credentials", str(creds),
                 "--count", "1", "--scanner", "simulated", "--temperature", "simulated",
                 "--state-dir", str(tmp_path / "state")),
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    running.wait_in_logs("subscriber", "Topic:home/pi-test/temperature", timeout=20)
    broker.reload()
    assert broker.attrs["State"]["StartedAt"] == started
    assert broker.attrs["RestartCount"] == 0
    assert "lost connection" not in running.logs("subscriber")  # nobody was disconnected

    running.make("remove-device", "NAME=pi-test", "FORCE=1")
    password = (creds / "password").read_text().strip()
    client, rc = paho_client(running, running.certs, "pi-test", password)  # type: ignore[arg-type]
    stop_client(client)
    assert rc is not None and rc.is_failure


def test_admin_output_shows_host_paths_and_add_device_bundles_a_lan_url(running: Stack,
                                                                      tmp_path: Path) -> None:
    """`make up` and `make add-device` print paths as they are on the host (certs/...,
    bundles/...), not the admin container's /work; without URL= the bundle's URL is the
    server's LAN address, which the broker certificate names; a broker bound to loopback
    (this test stack's MQTT_BIND) is warned about."""
    up = running.up_output  # type: ignore[attr-defined]
    assert "gen-certs: made CA certs/ca.crt" in up and "/work/" not in up
    r = running.make("add-device", "NAME=pi-lan")
    out = r.stdout + r.stderr
    assert "/work/" not in out, out
    assert "password: certs/clients/pi-lan/password" in out
    assert "bundle:   bundles/pi-lan.tar.gz" in out
    assert "listens only on 127.0.0.1 (MQTT_BIND in .env)" in out
    with tarfile.open(running.dir / "bundles" / "pi-lan.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    url = re.search(r"HOMEWATCH_URL=mqtts://([^:/]+):(\d+)/home",
                    (tmp_path / "pi-lan" / "homewatch.env").read_text())
    assert url is not None and int(url.group(2)) == running.port
    host = ipaddress.ip_address(url.group(1))  # an address: no mDNS needed
    assert not host.is_loopback
    assert str(host) in subprocess.run(["hostname", "-I"], capture_output=True,
                                       text=True).stdout.split()
    assert pki.names_host(pki.load_cert(running.certs / "broker" / "server.crt"), str(host))
    assert "does not name" not in out
    running.make("remove-device", "NAME=pi-lan", "FORCE=1")


def test_pi_variant_runs_the_publisher_from_a_bundle(
        running: Stack, docker_compose_command: str, tmp_path: Path) -> None:
    """docker-compose.pi.yml: a publisher container made from nothing but a device bundle,
    with a D-Bus socket mounted, publishes readings the subscriber shows. No BlueZ here:
    that is a scanner error status, not invented presence; no sensor either, so the
    temperature is simulated by name and marked so."""
    running.make("add-device", "NAME=pi-box", f"URL={running.url()}")
    pi = running.dir / "pi"
    pi.mkdir()
    with tarfile.open(running.dir / "bundles" / "pi-box.tar.gz") as tar:
        tar.extractall(pi, filter="data")
    (pi / "known-devices").write_text("88:29:9C:00:61:A9 Franks Phone\n")
    (pi / "state").mkdir()
    no_bluez = tmp_path / "no-bluez-socket"
    no_bluez.touch()
    env_file = pi / "pi-box" / "homewatch.env"
    with open(env_file, "a") as f:
        f.write(f"HOST_UID={os.getuid()}\nHOST_GID={os.getgid()}\nBLUETOOTH_GID={os.getgid()}\n"
                f"DBUS_SYSTEM_SOCKET={no_bluez}\nHOMEWATCH_INTERVAL=2\nHOMEWATCH_SCAN_DURATION=1\n"
                "HOMEWATCH_TEMPERATURE=simulated\n")
        # the image this stack built (its .env may name one), not another checkout's
        f.writelines(line + "\n" for line in (running.dir / ".env").read_text().splitlines()
                     if line.startswith("HOMEWATCH_IMAGE="))
    compose = [*docker_compose_command.split(), "-f", "docker-compose.pi.yml",
               "--env-file", str(env_file), "-p", f"{running.project}pi"]
    try:
        subprocess.run([*compose, "up", "-d"], cwd=running.dir, env=clean_env(), check=True,
                       capture_output=True, timeout=300)
        (c,) = running.sdk.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={running.project}pi"]})
        try:
            running.wait_in_logs("subscriber", "Topic:home/pi-box/temperature", timeout=60)
            logs = running.wait_in_logs(
                "subscriber", 'Topic:home/pi-box/scanner,Payload:{"state": "error"', timeout=30)
        except AssertionError:
            raise AssertionError(c.logs().decode()[-3000:]) from None
        assert "Topic:home/pi-box/devices" not in logs
        temperature = next(x for x in logs.splitlines() if "Topic:home/pi-box/temperature" in x)
        assert temperature.endswith(" [simulated]")
        env = c.attrs["Config"]["Env"]
        assert not any(s in json.dumps(env) for s in secrets_of(running.certs))
        assert "/run/dbus/system_bus_socket" in [m["Destination"] for m in c.attrs["Mounts"]]
    finally:
        subprocess.run([*compose, "down", "--volumes"], cwd=running.dir, env=clean_env(),
                       capture_output=True, timeout=120)


STORED = re.compile(r"stored \w+ seq (\d+)")
SHOWN = re.compile(r"shown demo-pi seq (\d+)")


def seqs(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [int(m.group(1)) for m in pattern.finditer(text)]


# The bound the README states (Reliability): a connection whose sent data stays
# unacknowledged for DEAD_AFTER seconds is given up, and after the network returns the
# publisher is connected again within RECONNECT_MAX (the backoff's cap) plus one attempt.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ConnectionSettings)}
DEAD_AFTER = float(DEFAULTS["dead_after"])
RECONNECT_MAX = float(DEFAULTS["reconnect_max"])
ATTEMPT = 15.0  # one failed attempt: TCP + TLS within 5 s each, name resolution
DEMO_INTERVAL = 1.0  # .env of the stack fixture
CUT = 30.0  # longer than DEAD_AFTER + DEMO_INTERVAL: the connection must be given up


def test_network_cut_between_publisher_and_broker_loses_nothing(running: Stack) -> None:
    """The demo publisher's container is disconnected from the Compose network for 30 s
    and reconnected (Docker SDK): it gives the dead connection up within the stated
    bound while cut off, reconnects within the stated bound once the network is back,
    and every reading it stored from the cut on is shown once."""
    pub = running.container("publisher")
    (net,) = running.sdk.networks.list(filters={"label": [
        f"com.docker.compose.project={running.project}", "com.docker.compose.network=default"]})
    shown_before = seqs(running.logs("subscriber"), SHOWN)
    assert shown_before, "the subscriber shows nothing yet"
    # From the last reading shown before the cut on (readings taken before the
    # subscriber's very first subscription were never kept for it: it had no session).
    last = max(shown_before)
    lost_before = running.logs("publisher").count("lost connection")
    net.disconnect(pub)
    time.sleep(CUT)
    assert running.logs("publisher").count("lost connection") > lost_before, (
        f"the dead connection was not given up within {CUT:.0f} s "
        f"(bound {DEAD_AFTER + DEMO_INTERVAL:.0f} s)")
    net.connect(pub, aliases=["publisher"])
    back = time.monotonic()
    cut_over = {seq for seq in seqs(running.logs("publisher"), STORED) if seq > last}
    assert len(cut_over) > 20
    deadline = back + RECONNECT_MAX + ATTEMPT + 10  # + 10 s to show what waited
    while not cut_over <= set(seqs(running.logs("subscriber"), SHOWN)):
        assert time.monotonic() < deadline, (
            "readings stored during the cut did not arrive within the stated bound:\n"
            + running.logs("publisher")[-3000:])
        time.sleep(1)
    shown = seqs(running.logs("subscriber"), SHOWN)
    assert len(shown) == len(set(shown)), "a reading was shown twice"


def test_containers_stop_cleanly_within_their_grace_period(running: Stack) -> None:
    """`docker stop` (SIGTERM): publisher and subscriber flush and exit 0 well within the
    20 s grace period; they start again with their state."""
    for service in ("publisher", "subscriber"):
        c = running.container(service)
        started = time.monotonic()
        c.stop(timeout=20)
        elapsed = time.monotonic() - started
        c.reload()
        assert c.attrs["State"]["ExitCode"] == 0, c.logs()[-2000:]
        assert elapsed < 15, f"{service} took {elapsed:.1f} s"
        assert b"stopped:" in c.logs()
    for service in ("subscriber", "publisher"):
        running.sdk.containers.get(running.containers(service, all=True)[0].id).start()
    before = len(seqs(running.logs("subscriber"), SHOWN))
    deadline = time.monotonic() + 60
    while len(seqs(running.logs("subscriber"), SHOWN)) <= before:
        assert time.monotonic() < deadline
        time.sleep(1)


def test_broker_cert_adds_a_name_and_reloads_without_a_restart(running: Stack) -> None:
    """`make broker-cert SAN=...`: the broker serves a certificate with the new name at
    once (SIGHUP), from the same CA, without restarting or disconnecting anyone; so does
    the dashboard, and the certificate dates it shows are refreshed."""
    broker = running.container("broker")
    started = broker.attrs["State"]["StartedAt"]
    out = running.make("broker-cert", "SAN=homeserver.test 192.0.2.77")
    assert "homeserver.test" in out.stdout
    ctx = ssl.create_default_context(cafile=str(running.certs / "ca.crt"))
    ctx.check_hostname = False
    deadline = time.monotonic() + 30
    while True:
        with socket.create_connection((running.host, running.port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            sans = {v for _, v in tls.getpeercert()["subjectAltName"]}
        if "homeserver.test" in sans or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {"homeserver.test", "192.0.2.77", "localhost"} <= sans
    broker.reload()
    assert broker.attrs["State"]["StartedAt"] == started
    assert "lost connection" not in running.logs("subscriber")
    # The dashboard serves its reissued certificate by itself (no restart, sessions
    # kept), and its Devices page's dates are refreshed.
    dashboard = running.container("dashboard")
    web_started = dashboard.attrs["State"]["StartedAt"]
    web = ssl.create_default_context(cafile=str(running.certs / "dashboard-ca.crt"))
    web.check_hostname = False
    deadline = time.monotonic() + 30
    while True:
        with socket.create_connection((running.host, running.dashboard_port), timeout=5) as raw, \
                web.wrap_socket(raw) as tls:
            cert = tls.getpeercert()
        if "homeserver.test" in {v for _, v in cert["subjectAltName"]} or \
                time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ("DNS", "homeserver.test") in cert["subjectAltName"]
    dashboard.reload()
    assert dashboard.attrs["State"]["StartedAt"] == web_started
    served = dt.datetime.strptime(cert["notAfter"], "%b %d %H:%M:%S %Y %Z")
    inventory = json.loads((running.certs / "dashboard" / "certificates.json").read_text())
    assert inventory["dashboard"]["not_after"] == served.strftime("%Y-%m-%dT%H:%M:%SZ")


HA_DEMO_CONFIGS = {
    "homeassistant/sensor/homewatch_demo_pi_temperature/config",
    "homeassistant/binary_sensor/homewatch_demo_pi_connectivity/config",
    "homeassistant/sensor/homewatch_demo_pi_scanner/config",
    "homeassistant/device_tracker/homewatch_person_franks_phone/config",
    "homeassistant/device_tracker/homewatch_person_annas_watch/config",
}


def test_make_add_homeassistant_switches_the_bridge_on_and_prints_the_settings(
        running: Stack) -> None:
    """`make add-homeassistant` makes the homeassistant identity (password file 0600,
    never printed), reloads the broker, turns the subscriber's bridge on (HOMEASSISTANT=1
    in .env), and prints broker, port, user, password file and CA file; with that
    identity the demo Pi's retained discovery configs and its temperature (a number) are
    readable; run again, it keeps the password."""
    broker_started = running.container("broker").attrs["State"]["StartedAt"]
    out = running.make("add-homeassistant").stdout
    pw_file = running.certs / "clients" / "homeassistant" / "password"
    secret = pw_file.read_text().strip()
    assert pw_file.stat().st_mode & 0o777 == 0o600 and pw_file.stat().st_uid == os.getuid()
    assert secret and secret not in out
    assert re.search(r"Broker: +\S+", out) and f"Port:                        {running.port}" \
        in out
    for text in ("Username:                    homeassistant",
                 "cat certs/clients/homeassistant/password", "upload certs/ca.crt",
                 "reloaded the broker"):
        assert text in out, out
    assert "HOMEASSISTANT=1" in (running.dir / ".env").read_text().splitlines()
    sub = running.container("subscriber")
    assert "HOMEWATCH_HOMEASSISTANT=1" in sub.attrs["Config"]["Env"]
    assert running.container("broker").attrs["State"]["StartedAt"] == broker_started

    client, rc = paho_client(running, running.certs, "homeassistant",  # type: ignore[arg-type]
                             secret)
    assert rc is not None and not rc.is_failure, rc
    got: dict[str, bytes] = {}
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, bytes(m.payload))
    client.subscribe([("homeassistant/#", 1), ("homewatch/#", 1), ("home/#", 1)])
    try:
        deadline = time.monotonic() + 90
        while not (set(got) >= HA_DEMO_CONFIGS and "homewatch/pi/demo_pi/temperature" in got):
            assert time.monotonic() < deadline, (sorted(got), running.logs("subscriber")[-3000:])
            time.sleep(0.5)
    finally:
        stop_client(client)
    body = json.loads(got["homeassistant/sensor/homewatch_demo_pi_temperature/config"])
    assert body["device"]["name"] == "demo-pi (demo)"
    assert 0 < float(got["homewatch/pi/demo_pi/temperature"]) < 50
    assert not any(topic.startswith("home/") for topic in got)  # the readings stay sealed

    again = running.make("add-homeassistant").stdout
    assert "kept homeassistant" in again and pw_file.read_text().strip() == secret


# -- the real Home Assistant on this stack (tests/homeassistant.py) --------------------

E2E_PI = "pi-e2e"  # a second Pi: `make add-device`, its publisher run on the host
E2E_MAC = "C0:FF:EE:00:E2:E0"
E2E_PERSON = "Eve Keys"  # only pi-e2e knows her: the demo Pi never vouches for her
E2E_AWAY_AFTER = 5  # pi-e2e's away timeout (s), short for the test
E2E_IDS = ("homewatch_pi_e2e_", "homewatch_person_eve_keys")  # its unique ids start so


def printed_ha_settings(out: str) -> dict[str, str]:
    """What `make add-homeassistant` tells the user to enter, as it printed it."""
    patterns = {"broker": r"^\s*Broker:\s+(\S+)\s*$", "port": r"^\s*Port:\s+(\d+)\s*$",
                "username": r"^\s*Username:\s+(\S+)\s*$",
                "password_file": r"^\s*Password:\s+the line in (\S+)\s*$",
                "ca": r"Broker certificate validation: Custom; upload (\S+)\s*$"}
    fields = {}
    for key, pattern in patterns.items():
        m = re.search(pattern, out, re.MULTILINE)
        assert m, f"no {key} in:\n{out}"
        fields[key] = m.group(1)
    return fields


def ha_number(state: dict[str, Any]) -> float | None:
    """A state as a number; None when it is none (unknown, unavailable)."""
    try:
        return float(state["state"])
    except ValueError:
        return None


def ha_is(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["state"] == value


def forge_then_read(running: Stack, creds: Path, forged: str) -> None:
    """As the device of ``creds`` (a stolen Pi), on one connection: a retained discovery
    config for ``forged``, then a sealed temperature reading of 23.5."""
    from homewatch.envelope import seal
    from homewatch.secrets import load_keyring

    device = creds.name
    client, rc = paho_client(running, running.certs, device,  # type: ignore[arg-type]
                             (creds / "password").read_text().strip(),
                             client_id=f"forger-{uuid.uuid4().hex[:6]}")
    assert rc is not None and not rc.is_failure, rc
    try:
        client.publish(f"homeassistant/sensor/{forged}/config", json.dumps({
            "name": "Forged", "unique_id": forged, "object_id": forged,
            "state_topic": f"home/{device}/forged"}), qos=1, retain=True).wait_for_publish(10)
        topic = f"home/{device}/temperature"
        client.publish(topic, seal(
            load_keyring(creds / "fernet.key"), topic=topic, device=device,
            seq=1,  # below the publisher's own, which start at its clock in ms
            data={"temperature": 23.5, "timestamp": time.time()}, taken=time.time()),
            qos=1).wait_for_publish(10)
    finally:
        stop_client(client)


def test_the_real_home_assistant_shows_the_stacks_entities_and_states(
        running: Stack, home_assistant_mqtt: Callable[[MqttSettings], HomeAssistant],
        tmp_path: Path) -> None:
    """The real Home Assistant, set up with what `make add-homeassistant` prints, shows
    the demo Pi's temperature as a number and its known devices home; a discovery config
    a device publishes never becomes an entity; a person whom a second Pi (`make
    add-device`; real bleak, mocked BlueZ) stops hearing is not_home after its away
    timeout; `make remove-device` makes that Pi's entities disappear; the demo Pi
    stopping makes its entities unavailable, until it is back."""
    from tests.bluez import MockBlueZ
    from tests.test_ble import advertising

    r = running.make("add-homeassistant")
    printed = printed_ha_settings(r.stdout)
    # This stack's broker is published on 127.0.0.1 only (MQTT_BIND in the fixture's
    # .env): the script says so and prints 127.0.0.1, for a Home Assistant on this
    # server, which this one is. The printed settings are used exactly as printed.
    host = printed["broker"]
    assert host == "127.0.0.1" and "at 127.0.0.1 as printed below" in r.stderr
    ha = home_assistant_mqtt(MqttSettings(
        host=host, port=int(printed["port"]), ca=running.dir / printed["ca"],
        username=printed["username"], password_file=running.dir / printed["password_file"],
        discovery_prefix="homeassistant"))

    # The demo Pi: its temperature a number in °C, its known devices home.
    temperature = ha.wait_for_unique_id("homewatch_demo_pi_temperature", timeout=60,
                                        where=lambda s: ha_number(s) is not None)
    assert 0 < (ha_number(temperature) or 0) < 50, temperature
    assert temperature["attributes"]["unit_of_measurement"] == "°C"
    assert temperature["attributes"]["device_class"] == "temperature"
    ha.wait_for_unique_id("homewatch_demo_pi_connectivity", where=ha_is("on"))
    for person in ("franks_phone", "annas_watch"):
        ha.wait_for_unique_id(f"homewatch_person_{person}", where=ha_is("home"))

    # A second Pi, provisioned while the stack runs. Its identity forges a discovery
    # config, then sends a reading on the same connection: the broker handles one
    # connection's messages in order, so once the bridge's entity for that reading is in
    # Home Assistant, the forged config was dealt with before it, and made nothing.
    running.make("add-device", f"NAME={E2E_PI}", f"URL={running.url('localhost')}")
    with tarfile.open(running.dir / "bundles" / f"{E2E_PI}.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    creds = tmp_path / E2E_PI
    forged = f"homewatch_forged_{uuid.uuid4().hex[:8]}"
    forge_then_read(running, creds, forged)
    ha.wait_for_unique_id("homewatch_pi_e2e_temperature")
    assert not [e for e in ha.entity_registry() if e["unique_id"] == forged]
    assert not [s for s in ha.states() if forged in s["entity_id"]]
    assert ha.log_count(forged) == 0  # its MQTT client (paho, logged) never even got it

    # Its publisher: real bleak scanning a mocked BlueZ in which Eve's keys advertise,
    # until they stop.
    (tmp_path / "bluez").mkdir()
    bluez = MockBlueZ(tmp_path / "bluez")
    known = tmp_path / "known-devices"
    known.write_text(f"{E2E_MAC} {E2E_PERSON}\n")
    log_file = tmp_path / "publisher.log"
    eve = "homewatch_person_eve_keys"
    with contextlib.ExitStack() as stack:
        stack.callback(bluez.close)
        bluez.add_adapter()
        log = stack.enter_context(open(log_file, "w"))
        pub = subprocess.Popen(
            python_m("publisher", "--credentials", str(creds), "--scanner", "bleak",
                     "--temperature", "simulated", "--interval", "1", "--scan-duration", "0.8",
                     "--away-after", str(E2E_AWAY_AFTER), "--known-devices", str(known),
                     "--state-dir", str(tmp_path / "state")),
            cwd=tmp_path, env=clean_env({"DBUS_SYSTEM_BUS_ADDRESS": bluez.address}),
            stdout=log, stderr=subprocess.STDOUT)
        stack.callback(stop_process, pub, 15)
        try:
            with advertising(bluez, E2E_MAC):
                ha.wait_for_unique_id(eve, where=ha_is("home"), timeout=60)
                ha.wait_for_unique_id("homewatch_pi_e2e_temperature",
                                      where=lambda s: ha_number(s) is not None)
            ha.wait_for_unique_id(eve, where=ha_is("not_home"))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- pi-e2e's publisher ---\n"
                                 f"{log_file.read_text()[-3000:]}") from None
        away = re.search(rf"{E2E_PERSON} is away \(not seen for (\d+) s\)",
                         log_file.read_text())
        assert away and int(away.group(1)) >= E2E_AWAY_AFTER, log_file.read_text()[-3000:]
    assert pub.returncode == 0, log_file.read_text()[-3000:]

    # `make remove-device`: that Pi's entities, and those of the person only it saw, go.
    theirs = {e["unique_id"]: e["entity_id"] for e in ha.entity_registry()
              if e["unique_id"].startswith(E2E_IDS)}
    assert {"homewatch_pi_e2e_temperature", "homewatch_pi_e2e_connectivity",
            "homewatch_pi_e2e_scanner", eve} <= set(theirs), theirs
    running.make("remove-device", f"NAME={E2E_PI}", "FORCE=1")

    def e2e_entities_gone(states: list[dict[str, Any]]) -> bool:
        return not ({s["entity_id"] for s in states} & set(theirs.values())) and not [
            e for e in ha.entity_registry() if e["unique_id"].startswith(E2E_IDS)]
    ha.wait_for(e2e_entities_gone, timeout=60)
    assert not [d for d in ha.device_registry() if ["mqtt", "homewatch_pi_pi_e2e"] in
                d["identifiers"]]

    # The demo Pi stops (its publisher says offline as it goes): its entities are
    # unavailable, its connectivity off, and nobody vouches for its people any more.
    publisher = running.container("publisher")
    publisher.stop(timeout=20)
    try:
        for entity in ("temperature", "scanner"):
            ha.wait_for_unique_id(f"homewatch_demo_pi_{entity}", where=ha_is("unavailable"))
        ha.wait_for_unique_id("homewatch_demo_pi_connectivity", where=ha_is("off"))
        for person in ("franks_phone", "annas_watch"):
            ha.wait_for_unique_id(f"homewatch_person_{person}", where=ha_is("unknown"))
    finally:
        running.sdk.containers.get(publisher.id).start()
    ha.wait_for_unique_id("homewatch_demo_pi_temperature", timeout=60,
                          where=lambda s: ha_number(s) is not None)
    ha.wait_for_unique_id("homewatch_person_franks_phone", where=ha_is("home"))


def test_switching_the_stack_to_mutual_tls_keeps_readings_flowing(running: Stack) -> None:
    """BROKER_CONF=mosquitto-mtls.conf in .env + `make up` (as the README says): the
    broker is recreated, the health check, the subscriber and the demo publisher carry on
    with their certificates; a client with only a password is now refused;
    `make add-homeassistant` names Home Assistant's client certificate, which connects."""
    with open(running.dir / ".env", "a") as env:
        env.write("BROKER_CONF=mosquitto-mtls.conf\n")
    assert "Homewatch is up." in running.make("up").stdout
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if running.container("broker").attrs["State"]["Health"]["Status"] == "healthy":
            break
        time.sleep(1)
    assert running.container("broker").attrs["State"]["Health"]["Status"] == "healthy"
    before = running.logs("subscriber").count("Topic:home/demo-pi/temperature")
    deadline = time.monotonic() + 60
    while running.logs("subscriber").count("Topic:home/demo-pi/temperature") < before + 2:
        assert time.monotonic() < deadline, running.logs("publisher")[-2000:]
        time.sleep(1)
    pw = (running.certs / "clients" / "demo-pi" / "password").read_text().strip()
    client, rc = paho_client(running, running.certs, "demo-pi", pw)  # type: ignore[arg-type]
    stop_client(client)
    assert rc is None
    # Home Assistant (connected by test_make_add_homeassistant_...) is told its certificate
    out = running.make("add-homeassistant").stdout
    ha = running.certs / "clients" / "homeassistant"
    assert f"upload {ha.relative_to(running.dir)}/client.crt" in out
    client, rc = paho_client(running, running.certs, "homeassistant",  # type: ignore[arg-type]
                             (ha / "password").read_text().strip(),
                             cert=(ha / "client.crt", ha / "client.key"))
    stop_client(client)
    assert rc is not None and not rc.is_failure


# -- the dashboard, as `make up` started it ------------------------------------------


def dashboard_url(stack: Stack) -> str:
    return f"https://127.0.0.1:{stack.dashboard_port}"


def test_make_up_prints_the_dashboard_url_and_its_password_file(running: Stack) -> None:
    """`make up` names the dashboard's HTTPS URL and where its password is (0600, never
    printed itself)."""
    out = running.up_output  # type: ignore[attr-defined]
    assert f"Dashboard:       https://127.0.0.1:{running.dashboard_port}/" in out
    assert out.count(f"https://127.0.0.1:{running.dashboard_port}/") == 1  # (not init's too)
    assert "password:      certs/dashboard/password" in out
    pw = running.certs / "dashboard" / "password"
    assert pw.stat().st_mode & 0o777 == 0o600 and pw.stat().st_uid == os.getuid()
    assert pw.read_text().strip() not in out


def test_the_dashboard_holds_no_mqtt_identity_and_reads_the_history_read_only(
        running: Stack) -> None:
    """The dashboard container mounts only its own directory (certificate, key, password
    hash, inventory) and the history volume, both read-only: no MQTT credential, no
    device key, no CA key, no replay state; the password itself is unreadable to it."""
    c = running.container("dashboard")
    mounts = {m["Destination"]: m for m in c.attrs["Mounts"]}
    assert set(mounts) == {"/run/homewatch/dashboard", "/history"}
    assert all(m["RW"] is False for m in mounts.values())
    assert mounts["/run/homewatch/dashboard"]["Source"].endswith("/certs/dashboard")
    listing = c.exec_run("ls -A /run/homewatch/dashboard").output.decode().split()
    assert sorted(listing) == ["certificates.json", "password", "password.hash",
                               "server.crt", "server.key"]
    assert c.exec_run("cat /run/homewatch/dashboard/password").exit_code != 0
    assert c.exec_run("touch /history/x").exit_code != 0
    env = " ".join(c.attrs["Config"]["Env"])
    assert "HOMEWATCH_USERNAME" not in env and "HOMEWATCH_URL" not in env


def test_the_dashboard_refuses_every_route_without_login_and_a_wrong_password(
        running: Stack, tmp_path: Path) -> None:
    """Through the published port, with the dashboard's CA: every route of the app but the
    login form is refused without a session, and a wrong password is refused."""
    from homewatch.history.sqlite import SqliteHistory
    from tests.test_dashboard import PUBLIC, app_routes
    from tests.web import WebClient

    SqliteHistory(tmp_path / "empty.db").close()  # the router's routes need no data
    client = WebClient(dashboard_url(running), running.certs / "dashboard-ca.crt")
    for method, path in app_routes(tmp_path / "empty.db"):
        if (method, path) in PUBLIC:
            continue
        r = client.request(method, path, form={"csrf": "x"} if method == "POST" else None)
        assert r.status in (303, 401, 403), (method, path, r.status)
        assert b"demo-pi" not in r.body
    assert client.login("not the household password").status == 401
    assert client.get("/api/now").status == 401


def test_the_dashboard_shows_the_demo_pi_in_a_real_browser(running: Stack) -> None:
    """Debian's Chromium: a page opened without a session lands on the login page, a
    wrong password is refused there; logged in with certs/dashboard/password it sees on
    Now the demo Pi's card with its temperature in °C (marked demo) and its known devices,
    every History range drawn with real data, the Devices page; nothing is requested from
    another host and the console stays clean. Screenshots of each page are kept
    (tests/artifacts/)."""
    from playwright.sync_api import expect

    from tests.browser import PHONE, chromium, visit

    base = dashboard_url(running)
    password = (running.certs / "dashboard" / "password").read_text().strip()
    deadline = time.monotonic() + 90  # the demo's first readings, then a few more
    with chromium(running.certs / "dashboard" / "server.crt") as browser:
        with visit(browser, base) as v:
            v.page.goto(base + "/history?range=7d")
            assert v.page.url == base + "/login?next=/history", v.page.url
            assert "demo-pi" not in v.page.content()
            v.page.fill("#password", password + "x")
            v.page.click("button[type=submit]")
            expect(v.page.locator("p.error")).to_have_text("Wrong password.")
            v.page.goto(base + "/")
            assert v.page.url == base + "/login", v.page.url
            # Chromium reports the refused login's status (401) in the console: that one.
            refused = [e for e in v.console_errors if "status of 401" in e and "/login" in e]
            assert len(refused) == 1, v.console_errors
            v.console_errors.remove(refused[0])
            v.assert_clean()
        with visit(browser, base) as v:
            v.login(password)
            card = v.page.locator("li.pi", has=v.page.locator("h3 .name", has_text="demo-pi"))
            while card.locator(".temperature .value").count() == 0 \
                    and time.monotonic() < deadline:
                time.sleep(2)
                v.goto("/")
            expect(card.locator(".temperature")).to_have_text(re.compile(r"^-?\d+\.\d\s°C$"))
            expect(card.locator("h3 .sim")).to_have_text("demo")
            text = v.page.inner_text("main")
            assert "Annas Watch" in text and "Franks Phone" in text, text
            v.screenshot("compose-now")
            for period in ("24h", "7d", "30d", "1y"):
                v.goto(f"/history?range={period}")
                states = v.wait_for_charts()
                assert states.get("demo-pi") == "drawn", (period, states)
                assert states.get("presence") == "drawn", (period, states)
                v.screenshot(f"compose-history-{period}")
            v.goto("/devices")
            text = v.page.inner_text("main")
            assert "demo-pi" in text
            v.screenshot("compose-devices")
            v.assert_clean()
        with visit(browser, base, viewport=PHONE, has_touch=True) as phone:
            phone.login(password)
            assert phone.horizontal_overflow() <= 0
            phone.screenshot("compose-now-phone")
            phone.assert_clean()


def test_make_down_leaves_no_container_or_network_and_purge_removes_volumes(
        running: Stack) -> None:
    """`make down` removes containers and network, keeps data volumes;
    `make purge FORCE=1` removes the volumes too. (Runs last: it stops the stack.)"""
    label = {"label": f"com.docker.compose.project={running.project}"}
    assert running.make("purge", check=False).returncode == 2  # needs FORCE=1
    running.make("down")
    assert running.containers(all=True) == []
    assert running.sdk.networks.list(filters=label) == []
    assert len(running.sdk.volumes.list(filters=label)) == 4  # broker, subscriber,
    # publisher state and the history
    running.make("purge", "FORCE=1")
    assert running.sdk.volumes.list(filters=label) == []


RECEIVER = """\
services:
  alerts-receiver:
    image: ${HOMEWATCH_IMAGE:-homewatch:local}
    user: "10001:10001"
    read_only: true
    command:
      - python3
      - -c
      - |
        import http.server
        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                print("POST", self.path, body.decode(), flush=True)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
        http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Hook).serve_forever()
"""


def test_the_demos_alert_reaches_a_webhook_on_the_stacks_network(
        running: Stack, docker_compose_command: str, tmp_path: Path) -> None:
    """An alerts file in certs/clients/subscriber (0600, root's): `make up` makes it
    readable by the app group, and the restarted subscriber POSTs the demo Pi's alert,
    marked demo, to a webhook receiver on the stack's network (a container of the
    stack's own image, added by an override file)."""
    override = tmp_path / "receiver.yml"
    override.write_text(RECEIVER)
    compose = [*docker_compose_command.split(), "-f", str(running.dir / "docker-compose.yml"),
               "-f", str(override)]
    alerts = running.certs / "clients" / "subscriber" / "alerts.toml"
    alerts.write_text('[webhook]\nurl = "http://alerts-receiver:8080/demo-hook"\n'
                      'allow_http = true\n\n[[rule]]\nname = "demo warm"\n'
                      'when = "temperature-above"\npi = "demo-pi"\ncelsius = -50\n')
    alerts.chmod(0o600)
    try:
        running.make("up")  # (which removes containers of no service of its own)
        assert alerts.stat().st_mode & 0o777 == 0o640 and alerts.stat().st_gid == 10001
        subprocess.run([*compose, "up", "-d", "--no-deps", "alerts-receiver"],
                       cwd=running.dir, env=clean_env(), check=True, capture_output=True,
                       timeout=300)
        subprocess.run([*compose, "restart", "subscriber"], cwd=running.dir,
                       env=clean_env(), check=True, capture_output=True, timeout=120)
        logs = running.wait_in_logs("alerts-receiver", '"rule": "demo warm"', timeout=90)
        (line,) = [x for x in logs.splitlines() if '"demo warm"' in x]
        assert line.startswith("POST /demo-hook {")
        body = json.loads(line.split(" ", 2)[2])
        assert (body["kind"], body["device"], body["demo"], body["simulated"]) == (
            "temperature-above", "demo-pi", True, "demo")
        assert body["message"].endswith("[demo data, not measured]")
        sub = running.wait_in_logs("subscriber", "alert delivered to", timeout=30)
        assert "http://alerts-receiver:8080/***" in sub and "demo-hook" not in sub
    finally:
        alerts.unlink(missing_ok=True)
        subprocess.run([*compose, "rm", "-sf", "alerts-receiver"], cwd=running.dir,
                       env=clean_env(), capture_output=True, timeout=120)
