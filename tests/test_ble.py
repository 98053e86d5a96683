"""Presence with the real bleak against a mocked BlueZ on a private D-Bus: devices
appearing, RSSI changes, away debouncing, strangers never published, rotating addresses
resolved by IRK, active and passive scanning, and the adapter disappearing, powered off or
BlueZ restarting, then coming back. The last tests run the real publisher and subscriber
through the real broker with the mocked BlueZ, including a scanner that stalls (BlueZ
runs and discovers, but nothing is reported) and is recovered without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from homewatch.errors import ScannerError
from homewatch.history.sqlite import SqliteHistoryReader
from publisher import adapter as bluez_adapter
from publisher.presence import BleakScan, Known, PresenceTracker, ah, resolves
from tests.bluez import MockBlueZ
from tests.helpers import Broker, clean_env, python_m, running
from tests.test_end_to_end import wait_subscribed

pytestmark = pytest.mark.ble

PHONE = "88:29:9C:00:61:A9"
STRANGER = "DE:AD:BE:EF:00:01"
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")


def rpa(irk: bytes, prand: bytes) -> str:
    """A resolvable private address as a phone makes one (top bits 01)."""
    raw = prand + ah(irk, prand)
    return ":".join(f"{b:02X}" for b in raw)


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockBlueZ]:
    mock = MockBlueZ(tmp_path)
    mock.add_adapter()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
    yield mock
    mock.close()


def scan_while(action: Callable[[], None], duration: float = 1.5,
               delay: float = 0.4) -> dict[str, int | None]:
    """One real bleak scan window (a fresh event loop) with ``action`` done during it."""
    timer = threading.Timer(delay, action)
    timer.start()
    try:
        return asyncio.run(BleakScan(duration).scan())
    finally:
        timer.join()


def test_spec_sample_vector_for_the_address_hash() -> None:
    """ah() matches the Bluetooth Core Specification's sample data."""
    assert ah(IRK, bytes.fromhex("708194")).hex() == "0dfbaa"


def test_rotating_address_resolves_to_its_owner_only() -> None:
    """An RPA made with a known IRK resolves; one from another IRK or a public MAC not."""
    address = rpa(IRK, bytes.fromhex("708194"))
    assert resolves(IRK, address)
    assert not resolves(bytes(16), address)
    assert not resolves(IRK, PHONE)


def test_a_device_appearing_during_a_scan_is_seen_with_its_rssi(bluez: MockBlueZ) -> None:
    """InterfacesAdded during the window: bleak reports the device and its RSSI."""
    seen = scan_while(lambda: bluez.advertise(PHONE, -55))
    assert seen[PHONE] == -55


def test_rssi_changes_are_seen_and_the_strongest_is_kept(bluez: MockBlueZ) -> None:
    """PropertiesChanged(RSSI) during the window: the strongest reading counts."""
    def walk_closer() -> None:
        bluez.advertise(PHONE, -85)
        time.sleep(0.2)
        bluez.advertise(PHONE, -48)
        time.sleep(0.2)
        bluez.advertise(PHONE, -70)
    assert scan_while(walk_closer)[PHONE] == -48


def test_strangers_are_seen_but_never_reported(bluez: MockBlueZ) -> None:
    """A stranger in range is counted; the report has only known devices."""
    def both() -> None:
        bluez.advertise(PHONE, -60)
        bluez.advertise(STRANGER, -40)
    seen = scan_while(both)
    assert STRANGER in seen
    tracker = PresenceTracker(Known(macs={PHONE: "Franks Phone"}))
    for address, rssi in seen.items():
        tracker.observe(address, rssi)
    assert [d["name"] for d in tracker.report()] == ["Franks Phone"]
    assert STRANGER not in str(tracker.report())
    assert tracker.strangers == 1


def test_a_phone_with_a_rotating_address_is_recognised_by_its_irk(bluez: MockBlueZ) -> None:
    """A random resolvable address seen over BLE maps to the IRK's friendly name."""
    address = rpa(IRK, bytes.fromhex("4a1b2c"))
    seen = scan_while(lambda: bluez.advertise(address, -50))
    tracker = PresenceTracker(Known(irks=[(IRK, "Annas iPhone")]))
    for a, rssi in seen.items():
        tracker.observe(a, rssi)
    assert [(d["name"], d["state"]) for d in tracker.report()] == [("Annas iPhone", "home")]


def test_away_only_after_the_timeout_so_presence_does_not_flap(bluez: MockBlueZ) -> None:
    """Seen once, then silent scans: still home until the away timeout, then away;
    a weak signal below the threshold does not bring it home."""
    now = [1000.0]
    tracker = PresenceTracker(Known(macs={PHONE: "Franks Phone"}), rssi_threshold=-80,
                              away_after=60, clock=lambda: now[0])
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -60)).items():
        tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "home"
    now[0] += 30
    assert asyncio.run(BleakScan(0.5).scan()).get(PHONE) is None  # no advert this window
    assert not tracker.tick() and tracker.report()[0]["state"] == "home"
    now[0] += 31
    assert tracker.tick() and tracker.report()[0]["state"] == "away"
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -95)).items():
        tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "away"
    for address, rssi in scan_while(lambda: bluez.advertise(PHONE, -65)).items():
        assert tracker.observe(address, rssi)
    assert tracker.report()[0]["state"] == "home"


def test_adapter_lost_is_a_scanner_error_and_scanning_recovers_when_it_is_back(
        bluez: MockBlueZ) -> None:
    """The adapter vanishing makes the scan fail clearly; once it is back, scans work
    again in the same process."""
    bluez.remove_adapter()
    with pytest.raises(ScannerError):
        asyncio.run(BleakScan(0.5).scan())
    bluez.add_adapter()
    assert scan_while(lambda: bluez.advertise(PHONE, -58))[PHONE] == -58


async def scan_during(scanner: BleakScan, action: Callable[[], None] | None = None,
                      delay: float = 0.4) -> dict[str, int | None]:
    """One scan window in the running loop (as in the publisher), ``action`` done during it."""
    task = asyncio.ensure_future(scanner.scan())
    if action is not None:
        await asyncio.sleep(delay)
        await asyncio.to_thread(action)
    return await task


def in_one_loop(steps: Callable[[], Awaitable[None]]) -> None:
    """Every scan of a test in one event loop: bleak keeps one BlueZ manager per loop, so
    this is how the long-running publisher meets a power cycle or a BlueZ restart."""
    asyncio.run(steps())  # type: ignore[arg-type]


def test_active_scanning_uses_discovery(bluez: MockBlueZ) -> None:
    """The default: BlueZ discovery (StartDiscovery/StopDiscovery), no monitor."""
    seen = asyncio.run(scan_during(BleakScan(1.0), lambda: bluez.advertise(PHONE, -60)))
    assert seen[PHONE] == -60
    assert len(bluez.calls("StartDiscovery")) == 1 and len(bluez.calls("StopDiscovery")) == 1
    assert bluez.calls("RegisterMonitor") == []


def test_passive_scanning_only_listens_through_an_advertisement_monitor(
        bluez: MockBlueZ) -> None:
    """--scan-mode passive registers a BlueZ advertisement monitor (Flags patterns) and
    never starts discovery, so the Pi sends no scan requests; devices are still seen, and
    the monitor is unregistered when the window ends."""
    seen = asyncio.run(scan_during(BleakScan(1.0, mode="passive"),
                                   lambda: bluez.advertise(PHONE, -61)))
    assert seen[PHONE] == -61
    assert len(bluez.calls("RegisterMonitor")) == 1
    assert len(bluez.calls("UnregisterMonitor")) == 1
    assert bluez.calls("StartDiscovery") == []


def test_passive_scanning_on_a_bluez_without_monitors_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older BlueZ (or one not started --experimental) has no monitor API: the error
    names the fix instead of falling back to active scanning behind the user's back."""
    mock = MockBlueZ(tmp_path, {"enable_monitor_api": False})
    try:
        mock.add_adapter()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
        with pytest.raises(ScannerError) as err:
            asyncio.run(BleakScan(0.5, mode="passive").scan())
    finally:
        mock.close()
    assert "--experimental" in str(err.value) and "--scan-mode active" in str(err.value)


def test_adapter_powered_off_is_reported_and_scanning_resumes_when_powered_on(
        bluez: MockBlueZ) -> None:
    """bluetoothctl power off: the next window fails saying so; power on: scans work
    again in the same event loop, no restart."""
    errors: list[str] = []

    async def steps() -> None:
        scanner = BleakScan(0.8)
        assert (await scan_during(scanner, lambda: bluez.advertise(PHONE, -50)))[PHONE] == -50
        await asyncio.to_thread(bluez.power, False)
        await asyncio.sleep(0.2)
        with pytest.raises(ScannerError) as err:
            await scanner.scan()
        errors.append(str(err.value))
        await asyncio.to_thread(bluez.power, True)
        await asyncio.sleep(0.2)
        assert (await scan_during(scanner, lambda: bluez.advertise(PHONE, -52)))[PHONE] == -52

    in_one_loop(steps)
    assert errors == ["the Bluetooth adapter is powered off: bluetoothctl power on "
                      "(or rfkill unblock bluetooth)"]


def test_bluez_restart_is_reported_and_scanning_resumes(bluez: MockBlueZ) -> None:
    """bluetoothd stops (crash, upgrade, restart): the window fails saying BlueZ is not
    running; once it is back with its adapter, scans see devices again in the same loop."""
    errors: list[str] = []

    async def steps() -> None:
        scanner = BleakScan(0.8)
        assert PHONE in await scan_during(scanner, lambda: bluez.advertise(PHONE, -50))
        await asyncio.to_thread(bluez.stop_bluez)
        with pytest.raises(ScannerError) as err:
            await scanner.scan()
        errors.append(str(err.value))
        await asyncio.to_thread(bluez.start_bluez)
        await asyncio.sleep(0.2)
        assert (await scan_during(scanner, lambda: bluez.advertise(PHONE, -53)))[PHONE] == -53

    in_one_loop(steps)
    assert errors == ["BlueZ (bluetoothd) is not running: sudo systemctl start bluetooth"]


class Readings:
    """The subscriber's --json lines, collected by a thread, waited for by predicate, in
    order: each wait looks only after the record the previous wait matched."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.records: list[dict[str, Any]] = []
        self._cursor = 0
        self.raw: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.raw.append(line)
                if line.startswith("{"):
                    self.records.append(json.loads(line))
                self._cond.notify_all()

    def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool],
                 timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self._cursor, len(self.records)):
                    if match(self.records[i]):
                        self._cursor = i + 1
                        return self.records[i]
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} in {self.records[-5:]}"
                self._cond.wait(left)


@contextmanager
def advertising(bluez: MockBlueZ, *addresses: str) -> Iterator[None]:
    """Devices advertising every 0.3 s (RSSI alternating, so BlueZ signals each one)."""
    stop = threading.Event()

    def adverts() -> None:
        rssi = -60
        while not stop.wait(0.3):
            rssi = -60 if rssi == -61 else -61
            for address in addresses:
                with contextlib.suppress(Exception):  # BlueZ down or adapter off: no advert
                    bluez.advertise(address, rssi)

    thread = threading.Thread(target=adverts, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def clients(broker: Broker, workdir: Path, known: Path, state: Path,
            *extra: str) -> tuple[list[str], list[str]]:
    """The subscriber (--json) and the publisher (bleak scanner) command lines."""
    sub = python_m("subscriber", broker.url("localhost"), "--json", "--state-dir",
                   str(workdir / "sub-state"), "--client-id", f"sub-{uuid.uuid4().hex[:8]}")
    pub = python_m("publisher", broker.url("localhost"), "--device", "pi-kitchen",
                   "--temperature", "simulated", "--scanner", "bleak",
                   "--interval", "1", "--scan-duration", "0.8",
                   "--known-devices", str(known), "--state-dir", str(state), *extra)
    return sub, pub


def test_publisher_reports_scanner_health_and_hashes_strangers_only_when_asked(
        bluez: MockBlueZ, broker: Broker, workdir: Path) -> None:
    """The real publisher (bleak, mocked BlueZ) through the real broker to the real
    subscriber: a known phone is home; with --hash-strangers a stranger arrives only as a
    count and a keyed hash (its address never leaves the Pi); powering the adapter off
    and restarting BlueZ each publish a `scanner` error naming the cause, followed by
    `ok` when it is back, without restarting the publisher; while the scanner is down no
    `devices` reading is published (nobody is marked away for want of a scanner)."""
    known = workdir / "known"
    known.write_text(f"{PHONE} Franks Phone\n")
    state = workdir / "pub-state"
    sub_cmd, pub_cmd = clients(broker, workdir, known, state, "--hash-strangers")
    env = {"DBUS_SYSTEM_BUS_ADDRESS": bluez.address}

    def kind(k: str, **data: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r["kind"] == k and all(r["data"].get(f) == v for f, v in data.items())

    with (advertising(bluez, PHONE, STRANGER), running(sub_cmd, cwd=workdir) as sub,
          contextlib.ExitStack() as stack):
        wait_subscribed(sub)  # its session exists before the first reading is sent
        stack.enter_context(running(pub_cmd, cwd=workdir, env=env))
        readings = Readings(sub)
        readings.wait_for("scanner ok", kind("scanner", state="ok", scanner="bleak"))
        home = readings.wait_for("Franks Phone home", lambda r: r["kind"] == "devices"
                                 and r["data"] and r["data"][0]["state"] == "home")
        assert home["data"][0]["name"] == "Franks Phone"
        strangers = readings.wait_for("strangers", lambda r: r["kind"] == "strangers"
                                      and r["data"]["count"] == 1)
        bluez.power(False)
        off = readings.wait_for("powered off", kind("scanner", state="error"))
        assert "powered off" in off["data"]["detail"]
        bluez.power(True)
        back = readings.wait_for("scanner ok again", kind("scanner", state="ok"))
        between = readings.records[readings.records.index(off):readings.records.index(back)]
        assert "devices" not in [r["kind"] for r in between]  # nobody marked away meanwhile
        bluez.stop_bluez()
        down = readings.wait_for("BlueZ down", kind("scanner", state="error"))
        assert "not running" in down["data"]["detail"]
        bluez.start_bluez()
        readings.wait_for("scanner ok after BlueZ restart", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone still home", lambda r: r["kind"] == "devices"
                          and r["data"] and r["data"][0]["state"] == "home")
    key = bytes.fromhex((state / "stranger-hash.key").read_text().strip())
    assert (state / "stranger-hash.key").stat().st_mode & 0o077 == 0
    expected = hmac.new(key, STRANGER.encode(), hashlib.sha256).hexdigest()[:16]
    assert strangers["data"]["hashes"] == [expected]
    everything = "".join(readings.raw)
    assert STRANGER not in everything and STRANGER.replace(":", "") not in everything
    assert PHONE in everything


def test_by_default_strangers_never_leave_the_pi(bluez: MockBlueZ, broker: Broker,
                                                 workdir: Path) -> None:
    """Without --hash-strangers a stranger in range is neither published nor hashed: the
    subscriber gets temperature, scanner and devices readings only, and no key is made."""
    known = workdir / "known"
    known.write_text(f"{PHONE} Franks Phone\n")
    state = workdir / "pub-state"
    sub_cmd, pub_cmd = clients(broker, workdir, known, state, "--count", "4")
    with advertising(bluez, PHONE, STRANGER), running(sub_cmd, cwd=workdir) as sub:
        wait_subscribed(sub)  # its session exists before the first reading is sent
        readings = Readings(sub)
        pub = subprocess.run(pub_cmd, cwd=workdir, capture_output=True, text=True,
                             timeout=60, env=clean_env({"DBUS_SYSTEM_BUS_ADDRESS":
                                                        bluez.address}))
        assert pub.returncode == 0, pub.stderr
        assert "4 reading(s), 9 message(s) sent" in pub.stderr, pub.stderr
        for n in range(9):  # all of them arrive: wait for the 9th reading
            readings.wait_for(f"reading {n + 1} of 9", lambda r: r["kind"] != "status")
    kinds = [r["kind"] for r in readings.records if r["kind"] != "status"]
    assert sorted(kinds) == ["devices"] * 4 + ["scanner"] + ["temperature"] * 4
    assert any(d["name"] == "Franks Phone" for r in readings.records if r["kind"] == "devices"
               for d in r["data"])
    assert STRANGER not in "".join(readings.raw)
    assert not (state / "stranger-hash.key").exists()


def kind(k: str, **data: Any) -> Callable[[dict[str, Any]], bool]:
    """A reading of kind ``k`` whose data has these fields."""
    return lambda r: r["kind"] == k and all(r["data"].get(f) == v for f, v in data.items())


def phone_home(r: dict[str, Any]) -> bool:
    return r["kind"] == "devices" and any(
        d["name"] == "Franks Phone" and d["state"] == "home" for d in r["data"])


def history_scanner(db: Path, pi: str, state: str, timeout: float = 20.0) -> str:
    """Wait until the subscriber's history has ``pi``'s scanner in ``state``; its detail."""
    deadline = time.monotonic() + timeout
    while True:
        if db.exists():
            with SqliteHistoryReader(db) as history:
                found = [p for p in history.now(time.time()).pis if p.name == pi]
            if found and found[0].scanner_state == state:
                return found[0].scanner_detail
        assert time.monotonic() < deadline, f"{pi}'s scanner never {state} in the history"
        time.sleep(0.1)


@contextmanager
def radio(bluez: MockBlueZ, addresses: list[str], flowing: threading.Event) -> Iterator[None]:
    """``addresses`` (a list the test changes) advertising every 0.3 s while ``flowing``
    is set; cleared, nothing reaches BlueZ's clients although it runs and discovers: the
    silent stall Pi owners know."""
    stop = threading.Event()

    def adverts() -> None:
        rssi = -60
        while not stop.wait(0.3):
            rssi = -60 if rssi == -61 else -61
            if flowing.is_set():
                for address in list(addresses):
                    with contextlib.suppress(Exception):  # adapter off: no advert
                        bluez.advertise(address, rssi)

    thread = threading.Thread(target=adverts, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def stall_rig(bluez: MockBlueZ, broker: Broker, workdir: Path, addresses: list[str],
              flowing: threading.Event, *extra: str,
              ) -> Iterator[tuple[subprocess.Popen[str], Readings]]:
    """The real subscriber, then the real publisher scanning the mocked BlueZ (Franks
    Phone known) while ``addresses`` advertise as long as ``flowing`` is set."""
    known = workdir / "known"
    known.write_text(f"{PHONE} Franks Phone\n")
    sub_cmd, pub_cmd = clients(broker, workdir, known, workdir / "pub-state", *extra)
    flowing.set()
    with (radio(bluez, addresses, flowing), running(sub_cmd, cwd=workdir) as sub,
          contextlib.ExitStack() as stack):
        wait_subscribed(sub)
        pub = stack.enter_context(running(pub_cmd, cwd=workdir,
                                          env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address}))
        yield pub, Readings(sub)


def test_a_stalled_scanner_restarts_discovery_and_recovers_without_a_restart(
        bluez: MockBlueZ, broker: Broker, workdir: Path) -> None:
    """A neighbour's device alone keeps the scanner from counting as stalled; when nothing
    at all is heard for --stall-cycles windows while BlueZ still discovers, the publisher
    restarts discovery and publishes a `scanner` status `stalled` naming that action; when
    devices advertise again it publishes `ok` and the phone home, the same process
    throughout."""
    addresses, flowing = [PHONE, STRANGER], threading.Event()
    with stall_rig(bluez, broker, workdir, addresses, flowing, "--stall-cycles", "4") as (
            pub, readings):
        readings.wait_for("scanner ok", kind("scanner", state="ok", scanner="bleak"))
        readings.wait_for("Franks Phone home", phone_home)
        addresses.remove(PHONE)  # the phone leaves; a neighbour's device still advertises
        for n in range(9):  # twice --stall-cycles windows and more, hearing only strangers
            readings.wait_for(f"devices reading {n + 1}", kind("devices"))
        assert not [r for r in readings.records if r["kind"] == "scanner"
                    and r["data"]["state"] == "stalled"]
        assert bluez.discovery_restarts() == 0
        flowing.clear()  # silence: BlueZ runs, the adapter is powered and discovering
        stalled = readings.wait_for("scanner stalled", kind("scanner", state="stalled"))
        assert stalled["data"]["action"] == "restarted discovery"
        assert stalled["data"]["detail"] == ("no advertisement in 4 scans in a row; "
                                             "restarted discovery")
        assert bluez.discovery_restarts() >= 1  # a discovery session of its own
        assert history_scanner(workdir / "sub-state" / "history.db", "pi-kitchen",
                               "stalled") == stalled["data"]["detail"]  # the dashboard's
        addresses.append(PHONE)
        flowing.set()
        readings.wait_for("scanner ok again", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone home again", phone_home)
        assert pub.poll() is None  # never restarted


def test_a_stall_that_outlasts_a_discovery_restart_power_cycles_the_adapter(
        bluez: MockBlueZ, broker: Broker, workdir: Path) -> None:
    """Still nothing heard --stall-cycles windows after restarting discovery: the
    publisher sets the adapter's Powered false then true over BlueZ's D-Bus API and
    publishes `stalled` naming the power cycle; advertisements back, `ok` and the phone
    home, without a restart of the publisher."""
    addresses, flowing = [PHONE], threading.Event()
    with stall_rig(bluez, broker, workdir, addresses, flowing, "--stall-cycles", "3") as (
            pub, readings):
        readings.wait_for("scanner ok", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone home", phone_home)
        assert bluez.powered_sets() == []
        flowing.clear()
        first = readings.wait_for("stalled", kind("scanner", state="stalled"))
        assert first["data"]["action"] == "restarted discovery"
        second = readings.wait_for("stalled again", kind("scanner", state="stalled"))
        assert second["data"]["action"] == "power-cycled the adapter"
        assert second["data"]["detail"] == ("no advertisement in 3 scans in a row; "
                                            "power-cycled the adapter")
        assert bluez.powered_sets() == [False, True]
        flowing.set()
        readings.wait_for("scanner ok again", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone home again", phone_home)
        assert pub.poll() is None


def test_with_passive_scanning_the_first_step_is_the_power_cycle(bluez: MockBlueZ) -> None:
    """Passive scanning has no discovery to restart (starting one would transmit): the
    restart is refused without a StartDiscovery, so the stall watch goes on to the power
    cycle, which sets Powered false then true; scanning works after it, same loop."""
    async def steps() -> None:
        scanner = BleakScan(0.8, mode="passive")
        with pytest.raises(ScannerError, match="no discovery to restart"):
            await scanner.restart_discovery()
        await scanner.power_cycle()
        assert (await scan_during(scanner, lambda: bluez.advertise(PHONE, -57)))[PHONE] == -57

    in_one_loop(steps)
    assert bluez.calls("StartDiscovery") == []
    assert bluez.powered_sets() == [False, True]


def test_a_cancelled_power_cycle_still_powers_the_adapter_back_on(
        bluez: MockBlueZ, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (cancellation) right after Powered was set false: the cycle still sets it
    true before the cancellation goes on, so the adapter is not left off."""
    real_call = bluez_adapter._Bus.call
    off_sent = asyncio.Event()

    async def call(bus: Any, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None) -> list[Any]:
        reply = await real_call(bus, path, interface, member, signature, body)
        if member == "Set" and body is not None and body[2].value is False:
            off_sent.set()  # the test cancels before the cycle's next reply is read
        return reply

    monkeypatch.setattr(bluez_adapter._Bus, "call", call)

    async def steps() -> None:
        cycle = asyncio.ensure_future(BleakScan(0.8).power_cycle())
        await off_sent.wait()
        cycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cycle

    in_one_loop(steps)
    assert bluez.powered_sets() == [False, True]
    asyncio.run(BleakScan(0.5).scan())  # on: a scan works (off, it is a ScannerError)


def test_an_adapter_left_off_is_powered_on_at_start(
        bluez: MockBlueZ, broker: Broker, workdir: Path) -> None:
    """The adapter was left off (a power cycle cut short by a power loss): with no
    --adapter and none powered, the publisher takes the first adapter, powers it on at
    start and says so in its log; the phone is home, no stall needed."""
    bluez.power(False)
    addresses, flowing = [PHONE], threading.Event()
    with stall_rig(bluez, broker, workdir, addresses, flowing) as (
            pub, readings):
        readings.wait_for("scanner ok", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone home", phone_home)
        assert bluez.powered_sets() == [True]
        pub.terminate()
        _, err = pub.communicate(timeout=30)
    assert ("the Bluetooth adapter /org/bluez/hci0 was powered off (a power cycle cut "
            "short?): powered it on") in err


def test_a_passive_scanner_that_stalls_is_power_cycled_at_once(
        bluez: MockBlueZ, broker: Broker, workdir: Path) -> None:
    """With --scan-mode passive the discovery restart is refused, so the first stall
    already power-cycles the adapter; the `stalled` status says both, then `ok`."""
    addresses, flowing = [PHONE], threading.Event()
    with stall_rig(bluez, broker, workdir, addresses, flowing, "--stall-cycles", "3",
                   "--scan-mode", "passive") as (pub, readings):
        readings.wait_for("Franks Phone home", phone_home)
        flowing.clear()
        stalled = readings.wait_for("stalled", kind("scanner", state="stalled"))
        assert stalled["data"]["action"] == "power-cycled the adapter"
        assert stalled["data"]["detail"] == (
            "no advertisement in 3 scans in a row; restarting discovery failed: passive "
            "scanning has no discovery to restart; power-cycled the adapter")
        assert bluez.powered_sets() == [False, True] and bluez.calls("StartDiscovery") == []
        flowing.set()
        readings.wait_for("scanner ok again", kind("scanner", state="ok"))
        readings.wait_for("Franks Phone home again", phone_home)
        assert pub.poll() is None
