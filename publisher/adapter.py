"""The Bluetooth adapter's recovery steps, through BlueZ's D-Bus API (org.bluez.Adapter1).

Used when the scanner has stalled (:mod:`publisher.stall`): BlueZ runs and the adapter is
powered, but no advertisement arrives. Two steps, the gentler first:

- :func:`restart_discovery`: a discovery session of our own, started and stopped. It
  makes bluetoothd ask the kernel to scan again, and clears bluetoothd's stale
  "discovering" flag, with which it answers StartDiscovery without scanning (BlueZ issue
  807, fixed in 5.88; bleak does the same when it meets it).
- :func:`power_cycle`: ``Powered`` false, then true (``bluetoothctl power off/on``): the
  controller is reset.

Each opens its own system-bus connection with dbus-fast (which bleak brings on Linux) and
closes it. Failures are :class:`ScannerError` with one line saying why.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from homewatch.errors import ScannerError

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
PROPERTIES = "org.freedesktop.DBus.Properties"
POWER_TIMEOUT = 10.0  # seconds for the adapter to report each power change


class _Bus:
    """One system-bus connection: method calls whose errors become ScannerError."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    @classmethod
    async def connect(cls) -> _Bus:
        try:
            from dbus_fast import BusType
            from dbus_fast.aio import MessageBus
        except ImportError:
            raise ScannerError("dbus-fast is not installed (pip install 'homewatch[ble]')"
                               ) from None
        try:
            return cls(await MessageBus(bus_type=BusType.SYSTEM).connect())
        except (OSError, EOFError) as exc:
            raise ScannerError(f"cannot reach the system D-Bus: {exc}") from None

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None) -> list[Any]:
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(Message(destination=BLUEZ, path=path,
                                             interface=interface, member=member,
                                             signature=signature, body=body or []))
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ScannerError(f"{member} on {path}: {reply.error_name}"
                               + (f" ({text})" if text else ""))
        return list(reply.body)

    def close(self) -> None:
        self._bus.disconnect()


async def _adapter_path(bus: _Bus, name: str | None) -> str:
    """The adapter bleak scans with: the one named, else the first powered one."""
    objects = (await bus.call("/", "org.freedesktop.DBus.ObjectManager",
                              "GetManagedObjects"))[0]
    adapters = sorted(str(p) for p, ifaces in objects.items() if ADAPTER in ifaces)
    if name:
        path = f"/org/bluez/{name}"
        if path not in adapters:
            raise ScannerError(f"{name} not found")
        return path
    for path in adapters:
        powered = objects[path][ADAPTER].get("Powered")
        if powered is not None and powered.value:
            return path
    raise ScannerError("no powered Bluetooth adapter")


async def restart_discovery(name: str | None) -> None:
    """Start and stop a discovery session of our own on the adapter."""
    bus = await _Bus.connect()
    try:
        path = await _adapter_path(bus, name)
        await bus.call(path, ADAPTER, "StartDiscovery")
        await bus.call(path, ADAPTER, "StopDiscovery")
    finally:
        bus.close()


async def power_cycle(name: str | None) -> None:
    """Power the adapter off, wait until it says so, then on again and wait likewise."""
    from dbus_fast import Variant

    bus = await _Bus.connect()
    try:
        path = await _adapter_path(bus, name)
        for on in (False, True):
            await bus.call(path, PROPERTIES, "Set", "ssv", [ADAPTER, "Powered",
                                                            Variant("b", on)])
            deadline = time.monotonic() + POWER_TIMEOUT
            while True:
                powered = (await bus.call(path, PROPERTIES, "Get", "ss",
                                          [ADAPTER, "Powered"]))[0].value
                if bool(powered) == on:
                    break
                if time.monotonic() > deadline:
                    raise ScannerError(f"{path} did not power {'on' if on else 'off'} "
                                       f"within {POWER_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)
    finally:
        bus.close()
