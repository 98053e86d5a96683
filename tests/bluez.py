"""A mocked BlueZ on a private system-style D-Bus, for real bleak to scan against.

python-dbusmock's ``bluez5`` template provides the adapter; devices are added with the
generic ``AddObject`` (the template's own ``AddDevice`` types ManufacturerData wrongly
for bleak) plus the ``InterfacesAdded`` signal BlueZ sends, and RSSI changes with
``UpdateProperties`` (a ``PropertiesChanged`` signal), as a real BlueZ does while scanning.
The adapter can be powered off and on, and BlueZ itself restarted (its bus name drops and
comes back with a fresh adapter, as when bluetoothd restarts).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dbus

from tests.helpers import stop_process

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_type="method_call"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""
DEVICE = "org.bluez.Device1"
START_TIMEOUT = 30.0  # seconds; generous: the test machine's cores are shared


class MockBlueZ:
    """``parameters`` go to the template: ``{"enable_monitor_api": False}`` is a BlueZ
    without advertisement monitors (older than 5.56, or not started --experimental)."""

    def __init__(self, workdir: Path, parameters: dict[str, object] | None = None) -> None:
        self.parameters = parameters or {}
        self.socket = workdir / "system_bus_socket"
        self.log = workdir / "bluez.log"  # dbusmock's log: every call, property Set too
        conf = workdir / "bus.conf"
        conf.write_text(BUS_CONF.format(socket=self.socket))
        self.address = f"unix:path={self.socket}"
        self.daemon = subprocess.Popen(["dbus-daemon", "--config-file", str(conf), "--nofork"])
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if time.monotonic() > deadline:
                stop_process(self.daemon, 5)  # never left running behind a failed start
                raise AssertionError("dbus-daemon did not start")
            time.sleep(0.05)
        self.bus = dbus.bus.BusConnection(self.address)
        self.mock = self._start_bluez()

    def _start_bluez(self) -> subprocess.Popen[bytes]:
        env = {"DBUS_SYSTEM_BUS_ADDRESS": self.address, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system",
                                 "--template", "bluez5", "--logfile", str(self.log),
                                 "--parameters", json.dumps(self.parameters)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.bus.name_has_owner("org.bluez"):
            if time.monotonic() > deadline:
                stop_process(proc, 5)
                raise AssertionError("the mocked BlueZ did not start")
            time.sleep(0.05)
        return proc

    def stop_bluez(self) -> None:
        """bluetoothd goes away (crash or restart): its bus name and objects vanish."""
        self.mock.terminate()
        self.mock.wait(5)
        deadline = time.monotonic() + 10
        while self.bus.name_has_owner("org.bluez"):
            assert time.monotonic() < deadline, "the mocked BlueZ did not stop"
            time.sleep(0.05)

    def start_bluez(self, adapter: str = "hci0") -> None:
        """bluetoothd is back, with its adapter (and no devices yet)."""
        self.mock = self._start_bluez()
        self.add_adapter(adapter)

    def power(self, on: bool, adapter: str = "hci0") -> None:
        """``bluetoothctl power on|off``: the adapter's Powered property changes."""
        self._iface(f"/org/bluez/{adapter}", "org.freedesktop.DBus.Mock").UpdateProperties(
            "org.bluez.Adapter1", {"Powered": dbus.Boolean(on)})

    def calls(self, method: str, adapter: str = "hci0") -> list[object]:
        """The calls bleak made to ``method`` on the adapter (dbusmock's call log)."""
        return list(self._iface(f"/org/bluez/{adapter}",
                                "org.freedesktop.DBus.Mock").GetMethodCalls(method))

    def all_calls(self, adapter: str = "hci0") -> list[tuple[str, list[object]]]:
        """The methods called on the adapter with their arguments, in order."""
        return [(str(c[1]), list(c[2])) for c in self._iface(
            f"/org/bluez/{adapter}", "org.freedesktop.DBus.Mock").GetCalls()]

    def discovery_restarts(self, adapter: str = "hci0") -> int:
        """StartDiscovery calls not right after setting a discovery filter: bleak sets
        its (non-empty) filter before each scan window's StartDiscovery and clears it
        after the window; the publisher's stall recovery sets none."""
        calls = self.all_calls(adapter)
        return sum(1 for i, (name, _) in enumerate(calls) if name == "StartDiscovery"
                   and not (i > 0 and calls[i - 1][0] == "SetDiscoveryFilter"
                            and calls[i - 1][1] and calls[i - 1][1][0]))

    def powered_sets(self, adapter: str = "hci0") -> list[bool]:
        """The values the adapter's Powered property was Set to (over D-Bus), in order."""
        prefix = f"Set /org/bluez/{adapter} org.bluez.Adapter1.Powered "
        return [line.split(prefix, 1)[1].strip() == "True"
                for line in self.log.read_text().splitlines() if prefix in line]

    def _iface(self, path: str, iface: str) -> dbus.Interface:
        return dbus.Interface(self.bus.get_object("org.bluez", path), iface)

    def add_adapter(self, name: str = "hci0") -> None:
        self._iface("/org/bluez", "org.bluez.Mock").AddAdapter(name, "homewatch-test")

    def remove_adapter(self, name: str = "hci0") -> None:
        self._iface("/org/bluez", "org.bluez.Mock").RemoveAdapterWithDevices(name)

    @staticmethod
    def path(address: str, adapter: str = "hci0") -> str:
        return f"/org/bluez/{adapter}/dev_{address.replace(':', '_').upper()}"

    def advertise(self, address: str, rssi: int, adapter: str = "hci0") -> None:
        """A device appears (InterfacesAdded) or, if known to BlueZ, its RSSI changes."""
        path = self.path(address, adapter)
        try:
            self._iface(path, "org.freedesktop.DBus.Mock").UpdateProperties(
                DEVICE, {"RSSI": dbus.Int16(rssi)})
            return
        except dbus.DBusException:
            pass
        props = dbus.Dictionary({
            "Address": dbus.String(address), "AddressType": dbus.String("random"),
            "Alias": dbus.String(address.replace(":", "-")),
            "Adapter": dbus.ObjectPath(f"/org/bluez/{adapter}"),
            "Paired": dbus.Boolean(False), "Connected": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False), "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False), "ServicesResolved": dbus.Boolean(False),
            "UUIDs": dbus.Array([], signature="s"), "RSSI": dbus.Int16(rssi),
            "ManufacturerData": dbus.Dictionary({}, signature="qv"),
            "ServiceData": dbus.Dictionary({}, signature="sv"),
        }, signature="sv")
        root = self._iface("/", "org.freedesktop.DBus.Mock")
        root.AddObject(path, DEVICE, props, [])
        root.EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}",
                        dbus.Array([dbus.ObjectPath(path),
                                    dbus.Dictionary({DEVICE: props}, signature="sa{sv}")],
                                   signature="v"))

    def close(self) -> None:
        self.bus.close()
        for p in (self.mock, self.daemon):
            stop_process(p, 5)
