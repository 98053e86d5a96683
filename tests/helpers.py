"""Test helpers: a real mosquitto process from the project's own broker config, free
ports, real paho clients, and running the programs as subprocesses."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
BROKER_CONF = ROOT / "broker" / "mosquitto.conf"
BROKER_MTLS_CONF = ROOT / "broker" / "mosquitto-mtls.conf"
LOCAL_BROKER = ROOT / "scripts" / "local-broker.sh"
GEN_CERTS = ROOT / "scripts" / "gen-certs.sh"


IN_GIT = (ROOT / ".git").exists()
_EMPTY_REPOSITORY: tempfile.TemporaryDirectory[str] | None = None


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """git on this source tree. In a tree without .git (a release tarball) git runs with
    a throwaway empty repository over the tree: nothing is tracked, and .gitignore
    applies exactly as git applies it."""
    global _EMPTY_REPOSITORY
    prefix = ["git", "-C", str(ROOT)]
    if not IN_GIT:
        if _EMPTY_REPOSITORY is None:
            _EMPTY_REPOSITORY = tempfile.TemporaryDirectory(prefix="homewatch-git-")
            subprocess.run(["git", "init", "-q", _EMPTY_REPOSITORY.name], check=True)
        prefix += [f"--git-dir={_EMPTY_REPOSITORY.name}/.git", f"--work-tree={ROOT}"]
    return subprocess.run([*prefix, *args], capture_output=True, check=check)


def source_files(*, untracked: bool = True) -> list[str]:
    """The source tree's files, as paths relative to ROOT: those git tracks, and with
    ``untracked`` also the new ones it does not ignore (what a fresh clone plus the
    working changes hold). Without .git: every file .gitignore does not exclude."""
    args = ["ls-files", "-z", "--cached"]
    if untracked or not IN_GIT:
        args += ["--others", "--exclude-standard"]
    names = git(*args).stdout.decode().split("\0")
    return sorted(n for n in set(names) if n and (ROOT / n).is_file())


def copy_source_tree(target: Path) -> None:
    """The source files (``source_files``) copied to ``target`` with their modes."""
    for name in source_files():
        src, dst = ROOT / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        dst.chmod(src.stat().st_mode & 0o777)


def source_repository(target: Path) -> Path:
    """A git repository at ``target`` whose one commit is the source tree (for a tree
    without .git, where the tests need something to clone)."""
    copy_source_tree(target)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=homewatch tests", "-c", "user.email=tests@localhost",
                  "commit", "-q", "-m", "the source tree"]):
        subprocess.run(["git", "-C", str(target), *args], check=True, capture_output=True)
    return target


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@dataclass
class Broker:
    certs: Path          # the certs dir (gen-certs --out)
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    conf: Path = BROKER_CONF
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        if not self.port:
            self.port = free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logfile = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["bash", str(LOCAL_BROKER), "--certs", str(self.certs), "--data", str(self.workdir),
             "--port", str(self.port), "--bind", self.host, "--conf", str(self.conf)],
            stdout=self.logfile, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None
        return self

    def url(self, host: str | None = None, base: str = "home") -> str:
        return f"mqtts://{host or self.host}:{self.port}/{base}"

    def kill(self) -> None:
        """kill -9: no chance to save anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.logfile.close()

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def log(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        self.proc = None
        if getattr(self, "logfile", None):
            self.logfile.close()


def gen_certs(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(GEN_CERTS), "--out", str(out), *args],
                          capture_output=True, text=True, check=True)


def homewatch_cli(certs: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homewatch.cli", "--certs", str(certs), *args],
                          capture_output=True, text=True, check=check, cwd=ROOT, env=clean_env())


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any HOMEWATCH_* setting leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def password(certs: Path, name: str) -> str:
    return (certs / "clients" / name / "password").read_text().strip()


def paho_client(broker: Broker, certs: Path, username: str | None, secret: str | None, *,
                client_id: str = "", host: str | None = None, ca: Path | None = None,
                tls: bool = True, cert: tuple[Path, Path] | None = None,
                ) -> tuple[mqtt.Client, mqtt.ReasonCode | None]:
    """A real paho client; returns it connected (loop running) and the CONNACK code
    (None when no CONNACK came: the connection was refused or dropped)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if tls:
        client.tls_set(ca_certs=str(ca or certs / "ca.crt"),
                       certfile=str(cert[0]) if cert else None,
                       keyfile=str(cert[1]) if cert else None)
    if username is not None:
        client.username_pw_set(username, secret)
    got: queue.Queue[mqtt.ReasonCode] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: got.put(rc)
    client.reconnect_delay_set(1, 1)
    try:
        client.connect(host or broker.host, broker.port)
    except OSError:  # the handshake itself was refused
        return client, None
    client.loop_start()
    try:
        rc = got.get(timeout=5)
    except queue.Empty:
        rc = None
    return client, rc


class Collector:
    """A subscription that records what it receives."""

    def __init__(self, client: mqtt.Client, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = client
        granted: queue.Queue[object] = queue.Queue()
        client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        client.on_subscribe = lambda c, u, mid, rcs, p: granted.put(rcs)
        client.subscribe(topic, qos=1)
        granted.get(timeout=5)

    def wait_for(self, topic: str, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Everything received until a message on ``topic`` arrives."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(item)
            if item[0] == topic:
                return seen
        raise AssertionError(f"no message on {topic} within {timeout} s; got {seen}")


def stop_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running(cmd: list[str], *, cwd: Path, env: Mapping[str, str] | None = None,
            ) -> Iterator[subprocess.Popen[str]]:
    """A program running in the background; terminated (SIGTERM) when the block ends."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        stop_process(proc, 15)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
