"""The Bluetooth adapter's recovery steps, through BlueZ's D-Bus API (org.bluez.Adapter1).

Used when the scanner has stalled (:mod:`publisher.stall`): BlueZ runs and the adapter is
powered, but no advertisement arrives. Two steps, the gentler first:

- :func:`restart_discovery`: a discovery session of our own, started and stopped. It
  makes bluetoothd ask the kernel to scan again, and clears bluetoothd's stale
  "discovering" flag, with which it answers StartDiscovery without scanning (BlueZ issue
  807, fixed in 5.88; bleak does the same when it meets it).
- :func:`power_cycle`: ``Powered`` false, then true (``bluetoothctl power off/on``): the
  controller is reset. Once false was asked for, true is asked for too, also when the
  cycle times out or is cancelled: a cycle cut short must not leave the adapter off.

And at start, :func:`power_on`: an adapter left off (by a cycle cut short by a power
loss) is powered on; a scanner that fails is never counted as stalled, so nothing else
would. With no adapter named and none powered, the first adapter is the one.

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
    """The adapter bleak scans with: the one named, else the first powered one, else
    (none powered: a power cycle cut short leaves it off) the first one."""
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
    if not adapters:
        raise ScannerError("no Bluetooth adapter")
    return adapters[0]


async def restart_discovery(name: str | None) -> None:
    """Start and stop a discovery session of our own on the adapter."""
    bus = await _Bus.connect()
    try:
        path = await _adapter_path(bus, name)
        await bus.call(path, ADAPTER, "StartDiscovery")
        await bus.call(path, ADAPTER, "StopDiscovery")
    finally:
        bus.close()


async def power_on(name: str | None) -> str | None:
    """At start: power the adapter on if it is off (a power cycle cut short by a power
    loss leaves it off, and a scanner that fails is never counted as stalled). The
    adapter's path when it was off, else None."""
    bus = await _Bus.connect()
    try:
        path = await _adapter_path(bus, name)
        if await _powered(bus, path):
            return None
        await _power(bus, path, True)
        return path
    finally:
        bus.close()


async def power_cycle(name: str | None) -> None:
    """Power the adapter off, wait until it says so, then on again and wait likewise.
    Once off was asked for, on is always asked for too: also when the wait for off timed
    out, and when the cycle is cancelled (a stop): then on is asked for and the
    cancellation goes on, without waiting for the adapter."""
    bus = await _Bus.connect()
    try:
        path = await _adapter_path(bus, name)
        try:
            await _power(bus, path, False)
        except asyncio.CancelledError:
            await _set_powered(bus, path, True)
            raise
        except ScannerError:
            await _power(bus, path, True)
            raise
        await _power(bus, path, True)
    finally:
        bus.close()


async def _powered(bus: _Bus, path: str) -> bool:
    return bool((await bus.call(path, PROPERTIES, "Get", "ss", [ADAPTER, "Powered"]))[0].value)


async def _set_powered(bus: _Bus, path: str, on: bool) -> None:
    from dbus_fast import Variant

    await bus.call(path, PROPERTIES, "Set", "ssv", [ADAPTER, "Powered", Variant("b", on)])


async def _power(bus: _Bus, path: str, on: bool) -> None:
    """Set Powered to ``on`` and wait until the adapter says so."""
    await _set_powered(bus, path, on)
    deadline = time.monotonic() + POWER_TIMEOUT
    while await _powered(bus, path) != on:
        if time.monotonic() > deadline:
            raise ScannerError(f"{path} did not power {'on' if on else 'off'} "
                               f"within {POWER_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)
