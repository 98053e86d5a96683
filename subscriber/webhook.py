"""Alert delivery: a JSON POST per alert, on a thread of its own, from a bounded queue.

Never blocks the caller: :meth:`Webhook.send` only appends to the queue (when it is
full, the oldest undelivered alert is dropped, counted and logged). The delivery thread
POSTs with a timeout; a failure (no connection, timeout, a non-2xx answer, a redirect,
which is never followed) is logged in one line with the URL masked and retried with
exponential backoff (1 s doubling to 60 s) for up to ``retry_for`` seconds, then given
up (logged). HTTPS is verified against the system CAs or the configured ``ca`` file;
proxy settings from the environment are not used.

Formats: ``json`` POSTs :meth:`Alert.payload` to the URL; ``ntfy`` POSTs ntfy's JSON
publishing body (``topic``, ``title``, ``message``, ``tags``, ``priority``) to the
server's root URL, the topic being the URL's path (ntfy publishes a JSON body with a
``topic`` field sent to its root; a JSON body sent to ``/<topic>`` would be shown as
raw text). ``token`` is sent as ``Authorization: Bearer`` (an ntfy access token).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from homewatch.history import AlertDelivery
from subscriber.alert_engine import Alert
from subscriber.alert_rules import WebhookSettings

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
MAX_ANSWER = 64 * 1024  # bytes of an answer read (and thrown away)
NTFY_PRIORITY = {"rejected-burst": 4, "offline": 4, "scanner-error": 4}


@dataclass
class _Pending:
    alert: Alert
    ref: int | None  # the history's id of the alert
    first_try: float | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: never follow one (it could lead to plain http)."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int,
                         msg: str, headers: object, newurl: str) -> None:
        return None


def _body(settings: WebhookSettings, alert: Alert) -> tuple[str, bytes]:
    """(URL to POST to, JSON body)."""
    url = settings.url.reveal()
    if settings.format == "ntfy":
        parts = urlsplit(url)
        tags = ["house"] + ([alert.simulated] if alert.simulated else [])
        body = {"topic": parts.path.strip("/"), "title": f"Homewatch: {alert.rule}",
                "message": alert.message, "tags": tags,
                "priority": NTFY_PRIORITY.get(alert.kind, 3)}
        url = urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    else:
        body = alert.payload()
    return url, json.dumps(body, ensure_ascii=False).encode("utf-8")


class Webhook:
    """The delivery thread and its bounded queue. ``on_result(ref, delivered, at)`` is
    called from the delivery thread once an alert is delivered or given up."""

    def __init__(self, settings: WebhookSettings, *,
                 on_result: Callable[[int | None, AlertDelivery, float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.on_result = on_result
        self.clock = clock
        self.delivered = 0
        self.dropped = 0
        self.given_up = 0
        self.failures = 0
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stop = threading.Event()  # abandon retries (after the grace period)
        self._current: _Pending | None = None  # the alert being delivered
        self._closed = False
        context = ssl.create_default_context(
            cafile=str(settings.ca) if settings.ca else None)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context),
            _NoRedirect())
        self._thread = threading.Thread(target=self._run, name="alerts-webhook",
                                         daemon=True)
        self._thread.start()

    def send(self, alert: Alert, ref: int | None = None) -> None:
        """Queue an alert (never blocks)."""
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self.settings.queue:
                old = self._queue.popleft()
                self.dropped += 1
                log.warning("alert queue full (%d): dropped the oldest undelivered alert "
                            "(%s, %s); %d dropped so far", self.settings.queue,
                            old.alert.rule, _when(old.alert.at), self.dropped)
                self._result(old.ref, "dropped")
            self._queue.append(_Pending(alert, ref))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._current is not None)

    def close(self, grace: float = 3.0) -> None:
        """Stop taking alerts; deliver what is queued for up to ``grace`` seconds."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(grace)
        self._stop.set()
        with self._cond:
            self._cond.notify()
        self._thread.join(1.0)
        with self._cond:
            left = list(self._queue) + ([self._current] if self._current else [])
            self._queue.clear()
            self._closed = True  # a POST still hanging may end later: it is not recorded
        if left:
            log.warning("%d alert(s) not delivered when stopping: recorded as failed",
                        len(left))
            for item in left:
                self._record_result(item.ref, "failed")

    def _result(self, ref: int | None, state: AlertDelivery) -> None:
        with self._cond:
            if self._closed:
                return
        self._record_result(ref, state)

    def _record_result(self, ref: int | None, state: AlertDelivery) -> None:
        if self.on_result is not None:
            try:
                self.on_result(ref, state, self.clock())
            except Exception:  # the history's trouble must not stop deliveries
                log.exception("recording an alert's delivery failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._stop.is_set():
                    return
                item = self._queue.popleft()
                self._current = item
            try:
                self._deliver(item)
            except Exception:  # never let one alert end every later delivery
                log.exception("delivering an alert failed unexpectedly; going on")
            finally:
                with self._cond:
                    self._current = None

    def _deliver(self, item: _Pending) -> None:
        item.first_try = self.clock() if item.first_try is None else item.first_try
        backoff = BACKOFF_FIRST
        while True:
            problem = self._post(item.alert)
            if problem is None:
                self.delivered += 1
                log.info("alert delivered to %s: %s", self.settings.masked, item.alert.rule)
                self._result(item.ref, "delivered")
                return
            self.failures += 1
            if self.clock() - item.first_try + backoff > self.settings.retry_for:
                self.given_up += 1
                log.error("alert delivery to %s failed (%s); given up after %.0f s: %s",
                          self.settings.masked, problem, self.clock() - item.first_try,
                          item.alert.rule)
                self._result(item.ref, "failed")
                return
            log.warning("alert delivery to %s failed (%s); retrying in %g s",
                        self.settings.masked, problem, backoff)
            if self._stop.wait(backoff):
                with self._cond:  # put it back: counted as not delivered at close
                    self._queue.appendleft(item)
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _post(self, alert: Alert) -> str | None:
        """One POST; None when delivered, else what went wrong (no secret in it)."""
        url, body = _body(self.settings, alert)
        headers = {"Content-Type": "application/json", "User-Agent": "homewatch-alerts"}
        if self.settings.token is not None:
            headers["Authorization"] = f"Bearer {self.settings.token.reveal()}"
        # (the scheme was checked when the file was read: https, or http as allowed)
        request = urllib.request.Request(url, data=body, headers=headers,  # noqa: S310
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.timeout) as answer:
                answer.read(MAX_ANSWER)
                status = answer.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            return type(reason).__name__ if not isinstance(reason, str) else reason[:100]
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # timeouts, resets, an answer that is not HTTP (a wrong port, a captive
            # portal, a proxy cutting the body: BadStatusLine, IncompleteRead, ...)
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
