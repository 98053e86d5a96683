"""Proven on ARM: the publisher installed the way a Pi owner installs it (scripts/install-pi.sh,
offline from a directory of wheels) into an emulated Debian bookworm, the Raspberry Pi's
architecture (qemu-user, made by scripts/ci/arm-rootfs.sh): 64-bit arm64, and 32-bit armhf
with the README's recipe (Debian's cffi and dbus-fast); then run there as its unit runs
it, its real bleak scanning a mocked BlueZ, against the real broker until the real
subscriber shows its readings.

The project's own wheel is built on the host; its dependencies are PyPI's ARM wheels,
downloaded on the host for Python 3.11 (the emulated Debian needs no network of its own)."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from homewatch.provision import Layout, make_bundle
from tests.bluez import MockBlueZ
from tests.helpers import Broker, copy_source_tree, running
from tests.test_end_to_end import is_status, subscriber_cmd, wait_subscribed

SETUP = "sudo scripts/ci/arm-rootfs.sh --arch {arch}"
AARCH64 = ["manylinux2014_aarch64", "manylinux_2_28_aarch64"]
ARMV7L = ["manylinux2014_armv7l", "manylinux_2_28_armv7l", "manylinux_2_31_armv7l",
          "linux_armv7l"]
EM_AARCH64, EM_ARM = 183, 40  # ELF e_machine of 64-bit and 32-bit ARM code
# 32-bit: what pip finds on PyPI for armv7l (cffi 2 and dbus-fast 4 have no wheel there),
# each the newest release and the newest one Debian's cffi 1.15 / dbus-fast 1.84 satisfy:
# pip, told --only-binary=cffi,dbus-fast by install-pi.sh, must pick the second of each.
ARMHF_WHEELS = (["paho-mqtt>=2.2,<2.3"], ["typing-extensions>=4.7"],
                ["cryptography>=42"], ["cryptography>=42,<46"],
                ["bleak>=0.22"], ["bleak>=0.22,<3"])
LINE = re.compile(r"^Topic:home/pi-kitchen/(temperature|devices|scanner),Payload:(.*)$")
PHONE = "88:29:9C:00:61:A9"


def rootfs(arch: str) -> Path:
    """The emulated Debian for ``arch``; the test FAILS, saying how to make it, when it
    or its emulator is missing (CI's .ci/run makes it)."""
    root = Path(os.environ.get("HOMEWATCH_ARM_ROOT", "/opt/arm-rootfs")) / arch
    qemu = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}[arch]
    binfmt = Path("/proc/sys/fs/binfmt_misc") / qemu
    if not (root / ".homewatch-arm-rootfs").is_file():
        pytest.fail(f"no emulated Debian {arch} in {root}: run `{SETUP.format(arch=arch)}` "
                    "(CI's .ci/run does; HOMEWATCH_ARM_ROOT=DIR for another place)",
                    pytrace=False)
    if not binfmt.is_file() or binfmt.read_text().splitlines()[0] != "enabled":
        pytest.fail(f"{qemu} is not registered with binfmt_misc: run "
                    f"`{SETUP.format(arch=arch)}`", pytrace=False)
    shutil.copy("/etc/hosts", root / "etc" / "hosts")  # localhost, as on the host
    return root


def chroot(root: Path, *cmd: str, timeout: float = 600,
           **env: str) -> subprocess.CompletedProcess[str]:
    """A command in the emulated Debian, as root, with a login-like environment."""
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", *login_env(env), *cmd],
                          capture_output=True, text=True, timeout=timeout)


def login_env(extra: dict[str, str]) -> list[str]:
    """NAME=VALUE words for env -i: a root login's environment, plus ``extra``."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}
    return [f"{k}={v}" for k, v in env.items()]


def host_wheels(out: Path, source: Path, platforms: list[str],
                *groups: list[str]) -> Path:
    """The project's wheel built on the host from ``source``, and PyPI's wheels for
    ``platforms`` and CPython 3.11 in ``out``: its dependencies (resolved by pip), or
    without their dependencies each group of requirements given."""
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [project] = out.glob("homewatch-*.whl")
    download = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                *[a for p in platforms for a in ("--platform", p)],
                "--python-version", "3.11", "--implementation", "cp", "-d", str(out)]
    for cmd in ([[*download, f"{project}[ble]"]] if not groups else
                [[*download, "--no-deps", *group] for group in groups]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    return out


def elf_machine(path: Path) -> int:
    """The e_machine field of an ELF file (little-endian)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def rss_kib(pid: int) -> tuple[int, int]:
    """The RSS of an emulated process, in KiB, from /proc on the host: all of it, and the
    emulator's own share of it (qemu-user's translated-code cache, the one rwx mapping; its
    malloc heap; its binary's pages). The rest is the guest's memory: the ARM program's own
    view, which qemu-user keeps inside the same process."""
    total = emulator = 0
    mapping: list[str] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            mapping = line.split()
        elif line.startswith("Rss:"):
            kib = int(line.split()[1])
            total += kib
            name = mapping[5] if len(mapping) > 5 else ""
            if (mapping[1] == "rwxp" and not name) or name == "[heap]" \
                    or re.search(r"/qemu-[a-z0-9]+-static$", name):
                emulator += kib
    return total, emulator


def idle_python_kib(root: Path) -> int:
    """The RSS of the emulated Debian's python3 doing nothing, the emulator's share left
    out: what the bare interpreter takes."""
    cmd = ["chroot", str(root), "python3", "-c",
           "import time; print('ready', flush=True); time.sleep(30)"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            total, emulator = rss_kib(proc.pid)
            return total - emulator
        finally:
            proc.kill()


def service_layout(root: Path, work: str) -> tuple[dict[str, str], str, str]:
    """What systemd does at start, done in the emulated Debian: each LoadCredential=
    NAME:PATH of the installed unit copied to WORK/credentials/NAME, EnvironmentFile= and
    the room drop-in read; returns that environment, the program and the credentials
    directory (as seen inside)."""
    unitdir = root / "etc" / "systemd" / "system"
    unit = (unitdir / "homewatch-publisher.service").read_text()
    credentials = root / work.lstrip("/") / "credentials"
    credentials.mkdir(mode=0o700)
    for name, path in re.findall(r"^LoadCredential=([^:]+):(\S+)$", unit, re.M):
        shutil.copy(root / path.lstrip("/"), credentials / name)
    env_file = re.search(r"^EnvironmentFile=(\S+)$", unit, re.M)
    assert env_file
    env = dict(line.split("=", 1) for line in (root / env_file.group(1).lstrip("/"))
               .read_text().splitlines() if line and not line.startswith("#"))
    drop_in = unitdir / "homewatch-publisher.service.d" / "room.conf"
    env.update(line.split("=", 1) for line in re.findall(r'^Environment="([^"]+)"$',
                                                         drop_in.read_text(), re.M))
    exec_start = re.search(r"^ExecStart=(\S+) --credentials %d$", unit, re.M)
    assert exec_start
    return env, exec_start.group(1), f"{work}/credentials"


def clean_install(root: Path) -> None:
    """No earlier install in the emulated Debian: the program, credentials and unit."""
    for path in ("opt/homewatch", "etc/homewatch",
                 "etc/systemd/system/homewatch-publisher.service",
                 "etc/systemd/system/homewatch-publisher.service.d",
                 "etc/systemd/system/multi-user.target.wants/homewatch-publisher.service"):
        target = root / path
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)


@pytest.fixture
def emulated(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """The emulated Debian for the architecture the test is parametrized with, with no
    earlier install in it, and a work directory of this test's inside it (its path as
    seen inside); both cleaned up afterwards."""
    root = rootfs(request.param)
    clean_install(root)
    work = f"/tmp/homewatch-test-{uuid.uuid4().hex[:8]}"
    (root / work.lstrip("/")).mkdir(mode=0o700)
    try:
        yield root, work
    finally:
        clean_install(root)
        shutil.rmtree(root / work.lstrip("/"), ignore_errors=True)


def prepare(root: Path, work: str, certs: Path, broker: Broker, platforms: list[str],
            *groups: list[str]) -> Path:
    """What the Pi owner has before installing, in the work directory: the source (what
    `git clone` gives), a directory of wheels for the Pi, the device bundle and a
    known-devices file."""
    inside = root / work.lstrip("/")
    copy_source_tree(inside / "homewatch-src")
    host_wheels(inside / "wheels", inside / "homewatch-src", platforms, *groups)
    make_bundle(Layout(certs), "pi-kitchen", url=broker.url("localhost"), out_dir=inside)
    (inside / "known-devices").write_text(f"{PHONE}  Franks Phone\n")
    return inside


def install(root: Path, work: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`sudo scripts/install-pi.sh BUNDLE --known-devices ... --room Kitchen`, offline from
    the wheels (--wheels), in the emulated Debian; with how long it took."""
    started = time.monotonic()
    r = chroot(root, f"{work}/homewatch-src/scripts/install-pi.sh", f"{work}/pi-kitchen.tar.gz",
               "--known-devices", f"{work}/known-devices", "--room", "Kitchen",
               "--source", "homewatch[ble]", "--wheels", f"{work}/wheels", **env)
    return r, time.monotonic() - started


INSPECT = """import json, platform, sys, cryptography, paho.mqtt, bleak.backends.bluezdbus.scanner
from importlib.metadata import version
print(json.dumps({"machine": platform.machine(), "python": sys.version.split()[0],
                  "cryptography": cryptography.__version__, "where": cryptography.__file__,
                  **{name: version(name) for name in ("cffi", "paho-mqtt", "bleak", "dbus-fast")}}))
"""


def installed(root: Path) -> dict[str, str]:
    """What the installed program's Python is and holds, asked inside (bleak's BlueZ
    backend imported with its dbus-fast)."""
    r = chroot(root, "/opt/homewatch/bin/python", "-c", INSPECT)
    assert r.returncode == 0, r.stderr
    info: dict[str, str] = json.loads(r.stdout)
    assert info["python"].startswith("3.11."), info
    return info


def run_as_the_unit(root: Path, work: str, broker: Broker,
                    workdir: Path) -> tuple[dict[str, list[Any]], int, int]:
    """The installed publisher run in the emulated Debian as its unit runs it (credentials
    as LoadCredential= hands them over, its default scanner: bleak), a mocked BlueZ on a
    D-Bus socket inside the emulated Debian where a phone keeps advertising, and a real
    subscriber on the host. Returns the readings the subscriber showed, by kind, once a
    temperature and the phone at home are among them, and the publisher's RSS and the
    emulator's share of it (KiB)."""
    inside = root / work.lstrip("/")
    zone = inside / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("48312\n")  # the SoC's thermal zone, as on every Pi
    (inside / "bluez").mkdir()
    bluez = MockBlueZ(inside / "bluez")
    env, program, credentials = service_layout(root, work)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={work}/bluez/system_bus_socket"
    publisher = ["chroot", str(root), "/usr/bin/env", "-i", *login_env(env), program,
                 "--credentials", credentials, "--interval", "2",
                 "--sysfs", f"{work}/sys", "--state-dir", f"{work}/state"]
    stop = threading.Event()

    def advertise() -> None:  # bleak reports what advertises during its scan
        rssi = -55
        while not stop.wait(0.3):
            bluez.advertise(PHONE, rssi)
            rssi = -111 - rssi  # -55, -56, -55, ...: a change BlueZ signals

    readings: dict[str, list[Any]] = {}

    def done() -> bool:
        return bool(readings.get("temperature")) and any(
            d["state"] == "home" for devices in readings.get("devices", [])
            for d in devices)

    advertiser = threading.Thread(target=advertise, daemon=True)
    try:
        bluez.add_adapter()
        advertiser.start()
        with running(subscriber_cmd(broker, workdir), cwd=workdir) as sub:
            wait_subscribed(sub)
            with running(publisher, cwd=workdir) as pub:
                for line in lines_until(sub, done, timeout=180):
                    m = LINE.match(line)
                    assert m and not line.endswith("[simulated]"), line
                    readings.setdefault(m.group(1), []).append(json.loads(m.group(2)))
                assert pub.poll() is None, pub.stderr.read() if pub.stderr else ""
                rss, emulator = rss_kib(pub.pid)  # the qemu-user process: guest + emulator
    finally:
        stop.set()
        advertiser.join()
        bluez.close()
    return readings, rss, emulator


def lines_until(proc: subprocess.Popen[str], done: Callable[[], bool],
                timeout: float) -> Iterator[str]:
    """The reading lines a running subscriber prints (availability lines left out), until
    ``done()`` holds after one of them; fails after ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if is_status(line):
            continue
        seen.append(line)
        yield line
        if done():
            return
    raise AssertionError(f"not there within {timeout} s; the subscriber showed {seen}")


def check_readings(readings: dict[str, list[Any]], scanner: str = "bleak") -> None:
    """Measured readings from the emulated Pi: the SoC's temperature from its sysfs, the
    phone at home as bleak heard it, the scanner ok; the room from the unit's drop-in."""
    temperatures = readings["temperature"]
    assert {t["temperature"] for t in temperatures} == {48.31}, readings
    assert {t["room"] for t in temperatures} == {"Kitchen"}, readings
    assert {"state": "ok", "scanner": scanner} in readings["scanner"], readings
    home = [d for devices in readings["devices"] for d in devices
            if d["state"] == "home"]
    assert home, readings
    assert {(d["name"], d["mac"], d["room"]) for d in home} == {
        ("Franks Phone", PHONE, "Kitchen")}, readings
    assert {d["rssi"] for d in home} <= {-55, -56}, readings


def report(arch: str, root: Path, seconds: float, info: dict[str, str], rss: int,
           emulator: int, capsys: pytest.CaptureFixture[str]) -> None:
    """The figures, printed in the test output whatever the capture setting."""
    idle = idle_python_kib(root)
    with capsys.disabled():
        print(f"\nemulated {arch} (qemu-user on {os.uname().machine}, {os.cpu_count()} "
              f"cores): install-pi.sh {seconds:.0f} s (Python {info['python']}, cryptography "
              f"{info['cryptography']}, cffi {info['cffi']}, bleak {info['bleak']}); "
              f"publisher RSS {(rss - emulator) / 1024:.0f} MiB ({rss / 1024:.0f} MiB with "
              f"qemu-user's own {emulator / 1024:.0f} MiB; an idle python3 there: "
              f"{idle / 1024:.0f} MiB)")


@pytest.mark.broker
@pytest.mark.parametrize("emulated", ["arm64"], indirect=True)
def test_publisher_installed_and_run_on_emulated_arm64(
        emulated: tuple[Path, str], certs: Path, broker: Broker, workdir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """install-pi.sh installs the publisher offline from PyPI's aarch64 wheels into an
    emulated arm64 Debian bookworm; its Python and cryptography's native code really are
    aarch64; run there as the unit runs it (bleak scanning a mocked BlueZ), its readings,
    the phone at home among them, reach the subscriber decrypted and verified."""
    root, work = emulated
    prepare(root, work, certs, broker, AARCH64)
    r, seconds = install(root, work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "credentials for pi-kitchen" in r.stdout, r.stdout
    assert "enabled for the next boot" in r.stdout, r.stdout  # no systemd running in a chroot
    assert (root / "etc/systemd/system/multi-user.target.wants/homewatch-publisher.service"
            ).is_symlink()
    info = installed(root)
    assert info["machine"] == "aarch64", info
    [rust] = (root / info["where"].lstrip("/")).parent.glob("hazmat/bindings/_rust.abi3.so")
    assert elf_machine(rust) == EM_AARCH64  # PyPI's aarch64 wheel, not a pure-Python stand-in
    readings, rss, emulator = run_as_the_unit(root, work, broker, workdir)
    check_readings(readings)
    report("arm64", root, seconds, info, rss, emulator, capsys)


@pytest.mark.broker
@pytest.mark.parametrize("emulated", ["armhf"], indirect=True)
def test_publisher_installed_and_run_on_emulated_armhf(
        emulated: tuple[Path, str], certs: Path, broker: Broker, workdir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """On 32-bit armhf, install-pi.sh first refuses in one line without Debian's cffi and
    dbus-fast, installing nothing; with them (the README's recipe) it installs offline:
    pip keeps Debian's cffi and dbus-fast, picks the newest cryptography and bleak that
    accept them; run as the unit runs it (bleak scanning a mocked BlueZ), the publisher's
    readings, the phone at home among them, reach the subscriber decrypted and verified."""
    root, work = emulated
    prepare(root, work, certs, broker, ARMV7L, *ARMHF_WHEELS)

    # A python3 without Debian's cffi and dbus-fast: a venv that does not see them.
    bare = chroot(root, "python3", "-m", "venv", f"{work}/bare")
    assert bare.returncode == 0, bare.stderr
    r, _ = install(root, work, PATH=f"{work}/bare/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "install-pi: error: 32-bit ARM (armv7l): PyPI has no cffi wheel for it; first run: "
        "sudo apt install python3-cffi python3-dbus-fast"], r.stderr
    assert not (root / "etc" / "homewatch").exists() and not (root / "opt/homewatch").exists()

    r, seconds = install(root, work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "credentials for pi-kitchen" in r.stdout, r.stdout
    info = installed(root)
    assert info["machine"] == "armv7l", info
    assert info["cffi"].startswith("1.15.") and info["dbus-fast"].startswith("1.84."), info
    assert info["cryptography"].startswith("45."), info  # the newest that accepts cffi 1.15
    assert info["bleak"].startswith("2."), info  # the newest that accepts dbus-fast 1.84
    [rust] = (root / info["where"].lstrip("/")).parent.glob("hazmat/bindings/_rust.abi3.so")
    assert elf_machine(rust) == EM_ARM
    readings, rss, emulator = run_as_the_unit(root, work, broker, workdir)
    check_readings(readings)
    report("armhf", root, seconds, info, rss, emulator, capsys)


def test_pypi_has_no_armv7l_wheel_of_cffi_nor_of_dbus_fast_4(tmp_path: Path) -> None:
    """Why 32-bit needs the README's recipe: PyPI has armv7l wheels of cryptography but
    none of cffi nor of dbus-fast 4 (which bleak 3 needs), and no armv6l wheel of
    cryptography (when one appears, this fails and the README can say so)."""
    def wheel(requirement: str, platforms: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             *[a for p in platforms for a in ("--platform", p)], "--python-version", "3.11",
             "--implementation", "cp", "-d", str(tmp_path), requirement],
            capture_output=True, text=True, timeout=300)
    assert wheel("cryptography>=42", ARMV7L).returncode == 0
    armv6l = ["linux_armv6l"]  # what pip asks for on a Pi Zero or Pi 1
    for requirement, platforms in (("cffi", ARMV7L), ("dbus-fast>=4", ARMV7L),
                                   ("cryptography>=42", armv6l)):
        r = wheel(requirement, platforms)
        assert r.returncode != 0 and "No matching distribution" in r.stderr, requirement
