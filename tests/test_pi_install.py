"""The README's Pi walkthrough, command by command: pip from git into a venv, unpacking
the bundle, running the publisher from its credentials; then the service install with
scripts/install-pi.sh (staged with --root: CI has no booted systemd), and the installed
program run with its credentials laid out as the unit's LoadCredential= lines do."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from homewatch.provision import Layout, make_bundle
from tests.helpers import (
    IN_GIT,
    ROOT,
    Broker,
    clean_env,
    free_port,
    source_repository,
    wait_for_port,
)

README = ROOT / "README.md"
UNIT = ROOT / "deploy" / "homewatch-publisher.service"
WHEELS = ROOT / ".wheelhouse"


def readme_commands(heading: str) -> list[str]:
    """The commands of the first ```sh block under ``heading`` (continuations joined)."""
    text = README.read_text()
    block = text[text.index(heading):].split("```sh\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").strip().splitlines()


@pytest.fixture
def pi(tmp_path: Path, certs: Path, broker: Broker) -> Path:
    """A Pi user's home: the bundle for pi-kitchen (pointing at the test broker) in it."""
    home = tmp_path / "home"
    home.mkdir()
    make_bundle(Layout(certs), "pi-kitchen", url=broker.url("localhost"), out_dir=home)
    return home


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This repository's committed HEAD served by a real git server (git daemon, on
    loopback), so pip and git fetch it over the network as a user does. A tree without
    .git (a release tarball) is served as a repository holding it in one commit."""
    assert any(WHEELS.glob("*.whl")), "no wheels: run scripts/offline-images.sh first"
    repo = ROOT if IN_GIT else source_repository(
        tmp_path_factory.mktemp("git") / "homewatch")
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all",
                               f"--base-path={repo.parent}", "--listen=127.0.0.1",
                               f"--port={port}", str(repo)])
    try:
        wait_for_port("127.0.0.1", port)
        yield f"git://127.0.0.1:{port}/{repo.name}"
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """What systemd's RuntimeDirectory= gives the service: a private directory on a tmpfs
    (/run there, /dev/shm here)."""
    where = Path(tempfile.mkdtemp(prefix="homewatch-run-", dir="/dev/shm"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def sh(command: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """One README command, in the user's home with a login-like environment (nothing of
    this checkout on PYTHONPATH); pip installs offline from the wheelhouse (the command
    itself is unchanged)."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8",
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=home, env=env,
                          capture_output=True, text=True, timeout=600)


def pi_sysfs(where: Path) -> Path:
    """A sysfs tree with what every Pi has: the SoC's thermal zone (48.3 degrees)."""
    zone = where / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")
    return where / "sys"


def test_readme_try_it_on_the_pi_commands_work(pi: Path, repository: str) -> None:
    """venv + pip install from git, unpack the bundle, write known-devices, run the
    publisher with only --credentials: it reaches the broker, all readings acknowledged."""
    commands = readme_commands("### On the Pi: try it")
    assert len(commands) == 4, commands
    for command in commands[:-1]:
        r = sh(command.replace("<this repository>", repository), pi)
        assert r.returncode == 0, f"{command}\n{r.stderr}"
    creds = pi / ".config" / "homewatch" / "pi-kitchen"
    assert (creds / "known-devices").read_text().startswith("88:29:9C:00:61:A9")
    assert oct(creds.joinpath("fernet.key").stat().st_mode & 0o777) == "0o600"
    r = sh(commands[-1] + f" --count 2 --interval 0.5 --scanner simulated "
           f"--sysfs {pi_sysfs(pi)}", pi)
    assert r.returncode == 0, r.stderr
    assert "2 reading(s), 5 message(s) sent, 5 acknowledged" in r.stderr, r.stderr
    assert "1 known device(s)" in r.stderr


def test_readme_service_install_commands_work(pi: Path, repository: str, tmp_path: Path,
                                              broker: Broker, runtime_dir: Path) -> None:
    """git clone + install-pi.sh (staged under --root): credentials root-only, the unit
    installed and enabled, the program in /opt/homewatch; the installed program runs with
    the files the unit's LoadCredential= lines name, and the unit verifies there."""
    commands = readme_commands("### On the Pi: as a service")
    assert commands[0].startswith("git clone <this repository> ")
    assert commands[1].startswith("sudo ~/homewatch-src/scripts/install-pi.sh ")
    assert commands[2:] == ["systemctl is-enabled homewatch-publisher",
                            "journalctl -u homewatch-publisher -f"]
    known = pi / ".config" / "homewatch" / "pi-kitchen" / "known-devices"
    known.parent.mkdir(parents=True)
    known.write_text("88:29:9C:00:61:A9  Franks Phone\n")
    root = tmp_path / "root"
    r = sh(commands[0].replace("<this repository>", repository), pi)
    assert r.returncode == 0, r.stderr
    install = commands[1].removeprefix("sudo ") + f" --root {root} --wheels {WHEELS}"
    r = sh(install, pi)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "credentials for pi-kitchen" in r.stdout and "enabled, not started" in r.stdout

    etc = root / "etc" / "homewatch"
    assert (etc / "device").stat().st_mode & 0o777 == 0o700
    for f in (etc / "device").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert (etc / "known-devices").stat().st_mode & 0o777 == 0o600
    # The README's `sudo /opt/homewatch/bin/homewatch irk --add`, on a fake pairing store.
    irk = readme_commands("### On the Pi: phones that rotate their address")[-2]
    assert irk == "sudo /opt/homewatch/bin/homewatch irk --add"
    store = tmp_path / "bluetooth" / "00:1A:7D:DA:71:13" / "4C:57:CA:12:34:56"
    store.mkdir(parents=True)
    (store / "info").write_text("[General]\nName=Annas iPhone\n[IdentityResolvingKey]\n"
                                "Key=9B7D390AA610103405ADC857A33402EC\n")
    r = sh(irk.removeprefix("sudo ").replace("/opt", f"{root}/opt") + f" --store "
           f"{tmp_path / 'bluetooth'} --known-devices {etc / 'known-devices'}", pi)
    assert r.returncode == 0 and "restart the publisher" in r.stdout, r.stdout + r.stderr
    assert (etc / "known-devices").stat().st_mode & 0o777 == 0o600
    r = subprocess.run(["systemctl", f"--root={root}", "is-enabled",
                        "homewatch-publisher"], capture_output=True, text=True)
    assert r.stdout.strip() == "enabled", r.stdout + r.stderr

    # What systemd does at start: each LoadCredential=NAME:PATH becomes $CREDENTIALS_DIRECTORY
    # /NAME, EnvironmentFile= is read, then ExecStart runs (with a bounded --count here).
    unit = (root / "etc" / "systemd" / "system" / "homewatch-publisher.service").read_text()
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    for name, path in re.findall(r"^LoadCredential=([^:]+):(\S+)$", unit, re.M):
        shutil.copy(root / path.lstrip("/"), credentials / name)
    env_file = re.search(r"^EnvironmentFile=(\S+)$", unit, re.M)
    assert env_file
    env = dict(line.split("=", 1) for line in (root / env_file.group(1).lstrip("/"))
               .read_text().splitlines() if line and not line.startswith("#"))
    drop_in = root / "etc" / "systemd" / "system" / "homewatch-publisher.service.d" / "room.conf"
    env.update(line.split("=", 1) for line in re.findall(r'^Environment="([^"]+)"$',
                                                         drop_in.read_text(), re.M))
    assert env["HOMEWATCH_ROOM"] == "Kitchen"  # --room Kitchen, in a drop-in
    assert re.search(r"^RuntimeDirectory=homewatch$", unit, re.M)
    env["RUNTIME_DIRECTORY"] = str(runtime_dir)  # the RAM journal's default place
    exec_start = re.search(r"^ExecStart=(\S+) --credentials %d$", unit, re.M)
    assert exec_start
    program = root / exec_start.group(1).lstrip("/")
    r = subprocess.run([str(program), "--credentials", str(credentials), "--count", "2",
                        "--interval", "0.5", "--scanner", "simulated",
                        "--sysfs", str(pi_sysfs(tmp_path)),
                        "--state-dir", str(tmp_path / "state")],
                       env=clean_env(env), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 reading(s), 5 message(s) sent, 5 acknowledged" in r.stderr, r.stderr
    assert "2 known device(s)" in r.stderr  # the phone and `homewatch irk`'s
    assert "this Pi's room: Kitchen" in r.stderr
    assert "no RAM journal" not in r.stderr, r.stderr
    assert list(runtime_dir.iterdir()) == []  # a clean stop leaves nothing in RAM

    # Again with the same bundle: refused without --force; without a bundle: an upgrade.
    r = sh(install, pi)
    assert r.returncode == 1 and "--force" in r.stderr, r.stderr
    r = sh(f"~/homewatch-src/scripts/install-pi.sh --root {root} --wheels {WHEELS}", pi)
    assert r.returncode == 0, r.stderr
    assert drop_in.read_text().count("HOMEWATCH_ROOM=Kitchen") == 1  # an upgrade keeps it
    check = tmp_path / "homewatch-publisher.service"  # the installed unit, run from here
    check.write_text(unit.replace(exec_start.group(1), str(program)))
    r = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "homewatch-publisher.service" not in r.stderr, r.stderr


def test_install_script_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    """No bundle on a first install, a missing file, an unknown option: exit 2, one line."""
    script = str(ROOT / "scripts" / "install-pi.sh")
    for args, message in ((["--root", str(tmp_path)], "no credentials in"),
                          (["missing.tar.gz", "--root", str(tmp_path)], "bundle not found"),
                          (["--frobnicate"], "unknown option"),
                          (["--room", 'Kitchen"x', "--root", str(tmp_path)], "--room:")):
        r = subprocess.run([script, *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        errors = [line for line in r.stderr.splitlines() if "install-pi: error:" in line]
        assert len(errors) == 1 and message in errors[0], r.stderr
