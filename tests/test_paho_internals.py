"""homewatch.mqtt._Client overrides parts of paho-mqtt's Client, some of them private.
These tests hold paho to what the overrides were written against: the installed paho is
the series pyproject pins and the tests ran on, the paho code each override replaces or
calls is the code it was written for (a hash of its source), and the private attributes
the overrides use are there with the shape they expect. A new paho fails here with a
message naming the override to re-check, instead of misbehaving at run time."""

from __future__ import annotations

import collections
import hashlib
import inspect
import re
import threading
import tomllib
from importlib.metadata import version

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, _ConnectionState

from homewatch.mqtt import PUBACK, _Client
from tests.helpers import ROOT

TESTED_SERIES = "2.2"  # paho-mqtt>=2.2,<2.3 in pyproject.toml

# paho's Client method -> (the start of the sha256 of its source, what relies on it)
PAHO_CODE: dict[str, tuple[str, str]] = {
    "_ssl_wrap_socket": ("a71513b1452dc33b", "_Client._ssl_wrap_socket replaces it (the "
                         "same steps, plus closing the socket when the handshake fails)"),
    "_create_socket": ("3043436f2eb23690", "_Client._ssl_wrap_socket (paho calls it with "
                       "the TCP socket)"),
    "_reconnect_wait": ("e5240fc3926374e6", "_Client._reconnect_wait replaces it (the same "
                        "backoff state, plus jitter)"),
    "reconnect_delay_set": ("4ff8fb1b8a64a35e", "_Client._reconnect_wait (the backoff state "
                            "it keeps)"),
    "loop_read": ("4fa11ca2d451dbec", "_Client.loop_read replaces it (the same steps for "
                  "up to READ_BATCH packets, then on_read_batch)"),
    "_packet_read": ("bbe32d8af1e37955", "_Client.loop_read (reads one packet, "
                     "MQTT_ERR_AGAIN when none is there)"),
    "_loop_rc_handle": ("ee5ad3b7849433a4", "_Client.loop_read (what a read error does)"),
    "_packet_write": ("d097b7b51bed128d", "_Client._packet_write (merges the PUBACKs at the "
                      "head of _out_packet, then calls it)"),
    "_packet_queue": ("e298fa9ab31e5f79", "_Client._packet_write (the packets it queues are "
                      "the dicts the merged one imitates)"),
    "loop_forever": ("4b19e7ecf7fe0463", "_Client.loop_forever wraps it (a failure in the "
                     "network thread is reported, not silent)"),
    "_thread_main": ("b6fbc762b2b50b9b", "_Client.loop_forever (the network thread runs "
                     "loop_forever)"),
}
RELIED_ON_ONLY = {"_create_socket", "reconnect_delay_set", "_packet_read", "_loop_rc_handle",
                  "_packet_queue", "_thread_main"}
# Private attributes the overrides read or write, as a fresh client has them.
PRIVATE_ATTRIBUTES = {
    "_ssl_context": type(None), "_host": str, "_connect_timeout": float, "_sock": type(None),
    "_reconnect_delay_mutex": type(threading.Lock()), "_reconnect_delay": type(None),
    "_reconnect_min_delay": int, "_reconnect_max_delay": int, "_thread_terminate": bool,
    "_state": _ConnectionState, "_out_packet": collections.deque,
}
OUT_PACKET_KEYS = ["command", "mid", "qos", "pos", "to_process", "packet", "info"]


def source_hash(name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(mqtt.Client, name)).encode()).hexdigest()


def test_installed_paho_is_the_pinned_and_tested_series() -> None:
    """pyproject pins paho-mqtt to the series the tests ran on, and that is installed."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("paho-mqtt"))
    major, minor = TESTED_SERIES.split(".")
    assert pin == f"paho-mqtt>={TESTED_SERIES},<{major}.{int(minor) + 1}", (
        f"pyproject pins {pin!r}: pin the tested series {TESTED_SERIES}.x (homewatch.mqtt "
        "overrides paho internals)")
    installed = version("paho-mqtt")
    assert re.match(rf"{re.escape(TESTED_SERIES)}(\.|$)", installed), (
        f"paho-mqtt {installed} is installed, the overrides in homewatch.mqtt._Client were "
        f"written and tested against {TESTED_SERIES}.x: re-check each against the new paho")


def test_paho_code_the_overrides_rely_on_is_unchanged() -> None:
    """Each paho method an override replaces or depends on has the source it was written
    against."""
    changed = [f"Client.{name} changed ({what})"
               for name, (digest, what) in PAHO_CODE.items()
               if not source_hash(name).startswith(digest)]
    assert not changed, (f"paho-mqtt {version('paho-mqtt')}: " + "; ".join(changed)
                         + ". Re-read each override against the new code, then record the "
                         "new hash here.")


def test_overrides_keep_paho_signatures() -> None:
    """Every method _Client overrides takes the same arguments as paho's."""
    overridden = [name for name, value in vars(_Client).items()
                  if inspect.isfunction(value) and hasattr(mqtt.Client, name)]
    assert set(overridden) == set(PAHO_CODE) - RELIED_ON_ONLY, (
        f"_Client overrides {sorted(overridden)}: record each paho method it replaces in "
        "PAHO_CODE")
    for name in overridden:
        ours = inspect.signature(getattr(_Client, name))
        theirs = inspect.signature(getattr(mqtt.Client, name))
        assert list(ours.parameters) == list(theirs.parameters), (
            f"_Client.{name}{ours} no longer matches paho's Client.{name}{theirs}")


def test_private_attributes_the_overrides_use_are_there() -> None:
    """The private attributes and states the overrides use exist with the expected types."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    missing = [f"{name} ({kind.__name__})" for name, kind in PRIVATE_ATTRIBUTES.items()
               if not isinstance(getattr(client, name, _MISSING), kind)]
    assert not missing, ("paho's Client lacks, or changed the type of, attributes "
                         "homewatch.mqtt._Client uses: " + ", ".join(missing))
    assert {"MQTT_CS_DISCONNECTING", "MQTT_CS_DISCONNECTED"} <= set(_ConnectionState.__members__)
    client._packet_queue(PUBACK, b"\x40\x02\x00\x01", 1, 1)  # (no socket: stays queued)
    assert list(client._out_packet[0]) == OUT_PACKET_KEYS, (
        "paho's queued packets changed shape; _Client._packet_write builds one like them")


_MISSING = object()
