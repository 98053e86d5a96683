"""The history store: what the subscriber accepted, kept for people to look back at.

One small interface with two sides, so that another database can follow SQLite later:

- :class:`HistoryWriter`: the subscriber's history sink calls it for every accepted
  reading and status, then :meth:`HistoryWriter.commit` once per batch, *before* the
  batch is acknowledged to the broker (a reading is acknowledged only once it is shown
  and recorded). A write that fails (full disk, read-only volume, locked database)
  raises :class:`~homewatch.errors.StorageError`; nothing is dropped silently.
- :class:`HistoryReader`: the dashboard opens the same database read-only and asks for
  what its pages show. It needs no key, no MQTT credential: this package imports
  neither (``tests/test_history.py`` checks it).

Times are Unix seconds (float, UTC). A reading is filed under when it was *taken*
(``Reading.taken_at``, else when it was sent), so readings that arrive late after an
outage land where they belong. Invented readings keep their mark (``"simulated"`` or
``"demo"``) all the way to the page that shows them.

Device (Pi) and person names come from Pis: whoever displays them escapes them.

Implementations: :mod:`homewatch.history.sqlite` (the default, embedded):
``SqliteHistory(path)`` writes, ``open_reader(path)`` reads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Simulated = Literal["simulated", "demo"] | None
RANGES: Mapping[str, float] = {"24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0,
                               "1y": 365 * 86400.0}
DEFAULT_RETENTION_DAYS = 400  # raw points and 5-minute rollups; hourly, daily: for good


@dataclass(frozen=True, kw_only=True)
class Sighting:
    """One known device (a person's phone, watch, tag) in a Pi's presence report."""

    name: str
    state: Literal["home", "away"]
    last_seen: float | None = None
    rssi: int | None = None


class HistoryWriter(Protocol):
    """The subscriber's side. Calls between two commits form one transaction: a
    StorageError from any call (or from commit) rolls back everything since the last
    commit, so acknowledge none of it."""

    def temperature(self, device: str, at: float, celsius: float, *,
                    simulated: Simulated = None) -> None:
        """A temperature reading of ``device`` (a Pi), taken at ``at``."""

    def presence(self, device: str, at: float, sightings: Sequence[Sighting], *,
                 simulated: Simulated = None) -> None:
        """A Pi's full presence report; the store keeps changes (arrived, left) and
        the latest state per (Pi, person), not every report."""

    def scanner(self, device: str, at: float, state: str, detail: str = "", *,
                simulated: Simulated = None) -> None:
        """A Pi's scanner status (``ok`` / ``error`` with a detail); kept as changes."""

    def availability(self, device: str, at: float, online: bool) -> None:
        """The broker-kept ``online``/``offline`` status of a Pi; kept as changes. An
        offline Pi no longer vouches for the people it had home (see
        :class:`PersonNow`); the first report after it is kept as a change even when it
        repeats the last one, so that the reader sees when it vouches again."""

    def key_rings(self, devices: Collection[str], at: float) -> None:
        """The Pis that have a key ring now: any other Pi the store knows was removed,
        and is recorded ``offline`` at ``at`` (unless it is already)."""

    def rejected(self, device: str | None, reason: str, at: float) -> None:
        """A rejected message, counted per day, device (None: not a known device) and
        reason."""

    def key_updated(self, device: str, at: float) -> None:
        """When ``device``'s key ring was last written (provisioned or rotated)."""

    def pi_room(self, device: str, at: float, room: str) -> None:
        """Pi ``device`` says it stands in ``room`` (its readings name it)."""

    def person_room(self, name: str, at: float, room: str | None,
                    device: str | None = None) -> None:
        """Person ``name`` is in ``room`` from ``at`` on, the Pi ``device`` hearing them
        best there (None, None: not home); kept as changes."""

    def alert(self, rule: str, kind: str, message: str, at: float, subject: str = "", *,
              delivery: AlertDelivery = "pending", simulated: Simulated = None) -> int:
        """An alert raised (see :mod:`subscriber.sinks.alerts`); its id, for
        :meth:`alert_delivery`. ValueError (nothing written) for a time out of range or
        an empty or too long rule, kind, message or subject."""

    def alert_delivery(self, alert_id: int, delivery: AlertDelivery, at: float) -> None:
        """What became of alert ``alert_id``'s delivery (``delivered`` at ``at``)."""

    def commit(self) -> None:
        """Make everything written since the last commit durable (raises StorageError)."""

    def close(self) -> None: ...


PresenceState = Literal["home", "away", "unknown"]
AlertDelivery = Literal["pending", "delivered", "failed", "dropped", "none"]
ALERT_DELIVERIES: tuple[AlertDelivery, ...] = ("pending", "delivered", "failed", "dropped",
                                              "none")


@dataclass(frozen=True, kw_only=True)
class AlertRecord:
    """An alert the subscriber raised: which rule, what it said, about whom (a person or
    a Pi), and whether its webhook took it (``delivery``; ``none``: no webhook)."""

    id: int
    at: float
    rule: str
    kind: str
    message: str
    subject: str
    delivery: AlertDelivery
    delivered_at: float | None = None
    simulated: Simulated = None


@dataclass(frozen=True, kw_only=True)
class PersonNow:
    """A known person (device name from the known-devices files) right now.

    A Pi vouches for its latest report only while it is online (or no status of it was
    ever received) and has reported since it last went offline. ``state`` is ``home``
    while a vouching Pi has the person home; ``unknown`` while only Pis that no longer
    vouch (``unconfirmed_by``: offline, or back and not reported yet) last had them home:
    not seen, but nobody saw them leave; else ``away``."""

    name: str
    state: PresenceState
    home: bool  # state == "home" (False also while unknown: read state)
    since: float | None  # when the state began (unknown: when the last Pi that had them
    # home stopped vouching), if known
    seen_by: tuple[str, ...]  # the vouching Pis whose latest report has them home
    last_seen: float | None
    unconfirmed_by: tuple[str, ...] = ()  # unknown: the Pis that last had them home
    simulated: Simulated = None
    room: str | None = None  # home: the room they are in (the Pi that hears them best)
    room_since: float | None = None  # when they came into it


@dataclass(frozen=True, kw_only=True)
class PiNow:
    """A Pi right now."""

    name: str
    online: bool | None  # None: no status received yet
    status_since: float | None
    temperature: float | None
    temperature_at: float | None
    last_reading_at: float | None  # any reading, when it was received
    scanner_state: str | None
    scanner_detail: str
    simulated: Simulated = None  # the mark of its latest reading
    room: str | None = None  # the room it says it stands in (None: it has not said)


@dataclass(frozen=True, kw_only=True)
class Now:
    at: float
    people: tuple[PersonNow, ...]
    pis: tuple[PiNow, ...]


@dataclass(frozen=True, kw_only=True)
class Bucket:
    """Temperature over [start, end): min, max and mean of ``count`` readings."""

    start: float
    end: float
    min: float
    max: float
    mean: float
    count: int
    simulated: Simulated = None  # set when any reading in the bucket was invented


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A stretch of one state (``home``, ``away``, ``unknown``: see :class:`PersonNow`):
    [start, end), end None while it lasts."""

    start: float
    end: float | None
    state: PresenceState
    seen_by: tuple[str, ...] = ()  # home: the Pis that had them home during it
    unconfirmed_by: tuple[str, ...] = ()  # unknown: the Pis that last had them home
    simulated: Simulated = None


@dataclass(frozen=True, kw_only=True)
class DeviceReport:
    """A Pi on the Devices page."""

    name: str
    first_seen: float | None
    last_seen: float | None
    key_updated_at: float | None
    online: bool | None
    readings: int
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> count


class HistoryReader(Protocol):
    """The dashboard's side: read-only."""

    def now(self, at: float) -> Now: ...

    def temperature(self, device: str, start: float, end: float, *,
                    max_points: int = 400) -> list[Bucket]:
        """At most about ``max_points`` buckets over [start, end), from the coarsest
        resolution that still gives that many (raw, 5-minute, hourly, daily rollups)."""

    def presence(self, start: float, end: float) -> Mapping[str, list[Interval]]:
        """Per person, their intervals over [start, end), all Pis fused: home while a
        Pi that vouches (see :class:`PersonNow`) has them home, unknown from when the last
        such Pi went offline until a Pi reports them again, else away."""

    def people(self) -> list[str]:
        """The known people's names."""

    def warm(self, person: str) -> int:
        """Work out ``person``'s presence timeline now, as :meth:`presence` would, and
        keep it, so that the next presence() only adds what is new; returns how many
        people's timelines the reader keeps."""

    def devices(self) -> list[DeviceReport]: ...

    def rejections(self) -> Mapping[tuple[str | None, str], int]:
        """Rejected messages since the history began, per (device, reason)."""

    def alerts(self, limit: int = 20) -> list[AlertRecord]:
        """The latest ``limit`` alerts, newest first."""

    def close(self) -> None: ...
