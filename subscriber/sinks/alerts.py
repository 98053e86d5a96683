"""The alerts sink: the rules of the alerts file (:mod:`subscriber.alert_rules`) over the
accepted readings, statuses, rejections and people; alerts are logged, recorded in the
history and POSTed to the webhook (:mod:`subscriber.webhook`).

Called in paho's network thread, it never blocks there: an event only runs the rules
(:mod:`subscriber.alert_engine`, in memory, under a lock) and hands what they raised to
this sink's own thread, which also runs the rules' timer (``for`` durations need time
to pass without messages), records each alert in the history (a writer of its own on
the same file, committing each alert at once) and queues it for the webhook's thread.
Nothing here is part of a reading's acknowledgement: ``flush()`` has nothing to make
durable, and a history write that fails for an alert is logged, not fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from homewatch.envelope import Reading
from homewatch.errors import StorageError
from homewatch.history import AlertDelivery, Simulated
from subscriber.alert_engine import Alert, Engine
from subscriber.alert_rules import AlertsConfig
from subscriber.rooms import Person
from subscriber.webhook import Webhook

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between the timer's evaluations
GRACE = 3.0  # seconds pending deliveries get when the subscriber stops


class AlertStore(Protocol):
    """What the sink needs of a history writer (:class:`homewatch.history.HistoryWriter`)."""

    def alert(self, rule: str, kind: str, message: str, at: float, subject: str = "", *,
              delivery: AlertDelivery = "pending", simulated: Simulated = None) -> int: ...

    def alert_delivery(self, alert_id: int, delivery: AlertDelivery, at: float) -> None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class AlertsSink:
    """Rules -> alerts -> history + webhook, never blocking the caller."""

    def __init__(self, config: AlertsConfig, *, store: AlertStore | None = None,
                 room_of: Callable[[str], str] = lambda pi: pi,
                 clock: Callable[[], float] = time.time, tick: float = TICK,
                 grace: float = GRACE) -> None:
        self.config = config
        self.engine = Engine(config.rules, room_of=room_of)
        self.store = store
        self.clock = clock
        self.grace = grace
        self.raised = 0
        self._lock = threading.Lock()  # the engine and the hand-over list
        self._store_lock = threading.Lock()  # the store: this thread and the webhook's
        self._new: list[Alert] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.webhook = Webhook(config.webhook, on_result=self._delivered, clock=clock) \
            if config.webhook is not None else None
        self._thread = threading.Thread(target=self._run, args=(tick,), name="alerts",
                                        daemon=True)
        self._thread.start()

    # -- the sink interface (paho's thread: in memory only) --------------------------

    def reading(self, reading: Reading) -> None:
        if reading.kind not in ("temperature", "scanner"):
            return
        at = reading.taken_at if reading.taken_at is not None else float(reading.sent_at)
        with self._lock:
            self._hand_over(self.engine.reading(reading.device, reading.kind, reading.data,
                                                at, reading.simulated))

    def status(self, topic: str, device: str, status: str) -> None:
        with self._lock:
            self._hand_over(self.engine.status(device, status == "online", self.clock()))

    def rejected(self, topic: str, device: str | None, reason: str) -> None:
        with self._lock:
            self._hand_over(self.engine.rejected(device, reason, self.clock()))

    def person(self, person: Person) -> None:
        with self._lock:
            self._hand_over(self.engine.person(person))

    def flush(self) -> None:
        """Alerts are not part of the acknowledgement: nothing to make durable here."""

    def close(self) -> None:
        """Raise what is due, record it, then give pending deliveries a short grace."""
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)
        if self.webhook is not None:
            self.webhook.close(self.grace)
        if self.store is not None:
            with self._store_lock:
                self.store.close()

    # -- this sink's thread ----------------------------------------------------------

    def _hand_over(self, alerts: list[Alert]) -> None:
        if alerts:
            self._new.extend(alerts)
            self._wake.set()

    def _run(self, tick: float) -> None:
        while True:
            stopping = self._wake.wait(tick) and self._stop.is_set()
            self._wake.clear()
            with self._lock:
                alerts, self._new = self._new, []
                alerts += self.engine.tick(self.clock())
            for alert in alerts:
                self._raise(alert)
            if stopping or self._stop.is_set():
                return

    def _raise(self, alert: Alert) -> None:
        self.raised += 1
        log.warning("alert (%s): %s", alert.rule, alert.message)
        ref = self._record(alert)
        if self.webhook is not None:
            self.webhook.send(alert, ref)

    def _record(self, alert: Alert) -> int | None:
        if self.store is None:
            return None
        sim: Simulated = "demo" if alert.simulated == "demo" else (
            "simulated" if alert.simulated else None)
        try:
            with self._store_lock:
                ref = self.store.alert(alert.rule, alert.kind, alert.message[:512],
                                       alert.at, alert.subject[:64],
                                       delivery="pending" if self.webhook else "none",
                                       simulated=sim)
                self.store.commit()
            return ref
        except (StorageError, ValueError) as exc:
            log.error("alert (%s) not recorded in the history: %s", alert.rule, exc)
            return None

    def _delivered(self, ref: int | None, delivery: AlertDelivery, at: float) -> None:
        """The webhook's thread: what became of a delivery."""
        if self.store is None or ref is None:
            return
        try:
            with self._store_lock:
                self.store.alert_delivery(ref, delivery, at)
                self.store.commit()
        except (StorageError, ValueError) as exc:
            log.error("alert delivery not recorded in the history: %s", exc)
