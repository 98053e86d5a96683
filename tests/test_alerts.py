"""Alerts without a broker: the rules file (good and bad, with line numbers), the rules
firing once per event with the readings' own times, the history's record of alerts, and
the webhook's delivery thread against a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homewatch.errors import ConfigError
from homewatch.history.sqlite import SqliteHistory, SqliteHistoryReader
from subscriber.alert_engine import STALE, Alert, Engine
from subscriber.alert_rules import mask_url, parse_alerts, parse_duration
from subscriber.rooms import Person
from subscriber.webhook import Webhook

GOOD = """\
# every kind once
[webhook]
url = "https://ntfy.example/secret-topic"
format = "ntfy"
timeout = 5
retry_for = "2m"

[[rule]]
when = "arrives"
person = "Anna"

[[rule]]
when = "leaves"
person = "Anna"

[[rule]]
when = "everyone-left"

[[rule]]
name = "kitchen hot"
when = "temperature-above"
room = "kitchen"
celsius = 28
for = "10m"

[[rule]]
when = "temperature-below"
pi = "pi-garage"
celsius = 5

[[rule]]
when = "offline"
for = "5m"

[[rule]]
when = "scanner-error"

[[rule]]
when = "rejected-burst"
count = 3
within = 60
"""


def parse(text: str) -> object:
    return parse_alerts(text, Path("alerts.toml"))


def test_a_good_file_gives_every_rule_and_hides_the_webhook_url() -> None:
    """Every kind parses with its values and defaults; durations take units; printing
    the config masks the URL's path (an ntfy topic is a secret)."""
    cfg = parse_alerts(GOOD, Path("alerts.toml"))
    kinds = [r.kind for r in cfg.rules]
    assert kinds == ["arrives", "leaves", "everyone-left", "temperature-above",
                     "temperature-below", "offline", "scanner-error", "rejected-burst"]
    hot = cfg.rules[3]
    assert (hot.name, hot.room, hot.celsius, hot.duration, hot.hysteresis) == (
        "kitchen hot", "kitchen", 28.0, 600.0, 0.5)
    assert cfg.rules[0].name == "Anna arrives" and cfg.rules[0].line == 8
    assert cfg.rules[5].duration == 300.0 and cfg.rules[7].count == 3
    assert cfg.webhook is not None and cfg.webhook.retry_for == 120.0
    assert "secret-topic" not in str(cfg) and "secret-topic" not in repr(cfg)
    assert "https://ntfy.example/***" in str(cfg)
    assert mask_url("http://127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/***"
    assert [parse_duration(d, "for") for d in (600, "90s", "10m", "1.5h", "1d")] == [
        600, 90, 600, 5400, 86400]


@pytest.mark.parametrize(("text", "expected"), [
    ("[[rule]]\nwhen = \"arrives\"\nperson = \n", "line 3: Invalid value (column 10)"),
    ("[[rule]]\nwhen = \"arrives\"\nperson = \"A\"\n\n[[rule]]\nwhen = \"explodes\"\n",
     "line 6: rule 2: when must be one of arrives"),
    ("[[rule]]\nwhen = \"arrives\"\n", "line 1: rule 1: a arrives rule needs person"),
    ("[[rule]]\nwhen = \"temperature-above\"\ncelsius = \"hot\"\n",
     "line 3: rule 1: celsius must be a number"),
    ("[[rule]]\nwhen = \"offline\"\nfor = \"5 weeks\"\n",
     "line 3: rule 1: for must be a duration"),
    ("[[rule]]\nwhen = \"offline\"\nperson = \"Anna\"\n",
     "line 3: rule 1: 'person' does not belong in a offline rule"),
    ("[webhook]\nformat = \"json\"\nurl = \"http://hooks.example/x\"\n",
     "line 3: webhook: a plain http:// URL is allowed only to this machine"),
    ("[webhook]\nurl = \"https://ntfy.example/\"\nformat = \"ntfy\"\n",
     "line 2: webhook: an ntfy url is the server and the topic"),
    ("[hooks]\nurl = 1\n", "line 1: unknown table or key 'hooks'"),
])
def test_a_bad_file_is_one_line_naming_the_line(text: str, expected: str) -> None:
    """Syntax errors and wrong values each give one ConfigError line with the line
    number of what is wrong (exit 2 in the subscriber)."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("alerts file alerts.toml: " + expected), message
    assert "\n" not in message


def test_plain_http_to_a_lan_host_needs_the_explicit_opt_in() -> None:
    """http:// to loopback is allowed; to a LAN host only with allow_http = true."""
    parse("[webhook]\nurl = \"http://127.0.0.1:9/x\"\n")
    cfg = parse_alerts("[webhook]\nurl = \"http://ntfy.lan/t\"\nallow_http = true\n",
                       Path("a"))
    assert cfg.webhook is not None and cfg.webhook.allow_http


def person(name: str, state: str, at: float, sim: str | None = None) -> Person:
    home = state == "home"
    return Person(name, "home" if home else "away", "kitchen" if home else None,
                  "pi-kitchen" if home else None, at, sim)


def engine(text: str) -> Engine:
    return Engine(parse_alerts(text, Path("a")).rules,
                  room_of=lambda pi: {"pi-kitchen": "kitchen"}.get(pi, pi))


def test_arrivals_and_departures_fire_once_per_change_not_at_the_first_state() -> None:
    """The first state of a person after the start is a baseline; each later change
    fires its rule once; a room change alone fires nothing; demo data says so."""
    e = engine('[[rule]]\nwhen = "arrives"\nperson = "Anna"\n'
               '[[rule]]\nwhen = "leaves"\nperson = "Anna"\n')
    assert e.person(person("Anna", "home", 100)) == []
    assert e.person(Person("Anna", "home", "hall", "pi-hall", 110)) == []
    (left,) = e.person(person("Anna", "away", 200))
    assert (left.rule, left.at, left.person, left.message) == ("Anna leaves", 200, "Anna",
                                                               "Anna left")
    (came,) = e.person(person("Anna", "home", 300, "demo"))
    assert came.rule == "Anna arrives" and came.simulated == "demo"
    assert came.message == "Anna arrived (kitchen, seen by pi-kitchen) [demo data, not measured]"
    assert came.payload()["demo"] is True and left.payload()["demo"] is False
    assert e.person(person("Bob", "home", 310)) == []


def test_a_person_only_an_offline_pi_had_home_neither_leaves_nor_arrives() -> None:
    """"unknown" (only Pis that no longer vouch had them home) is no departure, and being
    seen again after it is no arrival: nobody knows they left."""
    e = engine('[[rule]]\nwhen = "arrives"\nperson = "Anna"\n'
               '[[rule]]\nwhen = "leaves"\nperson = "Anna"\n'
               '[[rule]]\nwhen = "everyone-left"\n')
    e.person(person("Anna", "home", 100))
    assert e.person(Person("Anna", "unknown", None, None, 200)) == []
    assert e.person(person("Anna", "home", 300)) == []
    assert e.person(Person("Anna", "unknown", None, None, 400)) == []
    assert [a.rule for a in e.person(person("Anna", "away", 500))] == [
        "Anna leaves", "everyone-left"]


def test_everyone_left_fires_when_the_last_person_leaves_and_rearms_on_a_return() -> None:
    """everyone-left fires once when nobody is home any more, again only after someone
    came back and everyone left again."""
    e = engine('[[rule]]\nwhen = "everyone-left"\n')
    e.person(person("Anna", "home", 1))
    e.person(person("Bob", "home", 2))
    assert e.person(person("Anna", "away", 10)) == []
    (alert,) = e.person(person("Bob", "away", 20))
    assert "the last to leave: Bob" in alert.message
    assert e.person(person("Bob", "away", 30)) == []
    e.person(person("Anna", "home", 40))
    assert len(e.person(person("Anna", "away", 50))) == 1


def test_temperature_above_for_a_duration_fires_once_by_the_readings_times() -> None:
    """Readings above 28 °C for 10 minutes fire once (at start + 10 min), not again
    while it stays hot or dips less than the hysteresis; a reading 0.5 °C below re-arms;
    another Pi's room does not match; the timer fires without a new reading, but not
    beyond STALE after the last reading."""
    e = engine('[[rule]]\nwhen = "temperature-above"\nroom = "kitchen"\ncelsius = 28\n'
               'for = "10m"\n')
    assert e.reading("pi-garage", "temperature", {"temperature": 40}, 0) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 29}, 1000) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 30}, 1300) == []
    (alert,) = e.reading("pi-kitchen", "temperature", {"temperature": 29.5}, 1600)
    assert (alert.at, alert.device, alert.room) == (1600, "pi-kitchen", "kitchen")
    assert alert.message == "kitchen (pi-kitchen): 29.5 °C, above 28 °C for 10 min"
    assert e.reading("pi-kitchen", "temperature", {"temperature": 31}, 1700) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 27.8}, 1800) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 29}, 1900) == []
    assert e.tick(1900 + 700) == []  # (not re-armed: 27.8 is within the hysteresis)
    assert e.reading("pi-kitchen", "temperature", {"temperature": 27.5}, 2000) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 28.5}, 2100) == []
    assert e.reading("pi-kitchen", "temperature", {"temperature": 29}, 2650) == []
    assert e.tick(2699) == []
    (again,) = e.tick(2700)  # the timer: 10 minutes passed since 2100, no new reading
    assert again.at == 2700 and e.tick(5000) == []
    e2 = engine('[[rule]]\nwhen = "temperature-below"\ncelsius = 5\nfor = "1h"\n')
    e2.reading("pi-garage", "temperature", {"temperature": 4}, 0)
    assert e2.tick(10_000) == []  # the Pi went quiet: counts only STALE past its reading
    assert STALE < 3600


def test_a_condition_lasting_across_a_restart_is_alerted_once_more_after_its_duration(
        ) -> None:
    """The rules' state is in memory: after a restart (a new engine), a Pi still offline
    (its retained status) is alerted once more when the duration has passed again."""
    rules = '[[rule]]\nwhen = "offline"\nfor = 300\n'
    before = engine(rules)
    before.status("pi-porch", False, 1000)
    assert len(before.tick(1300)) == 1
    after = engine(rules)  # the subscriber restarted at 5000; the Pi is still offline
    assert after.status("pi-porch", False, 5000) == [] and after.tick(5299) == []
    (again,) = after.tick(5300)
    assert again.message == "pi-porch offline for 5 min"
    assert after.tick(9000) == []


def test_offline_scanner_and_rejected_bursts_fire_once_and_rearm() -> None:
    """A Pi offline fires after its duration on the timer, once; online re-arms. A
    scanner error or stall fires once (a new detail, or stalled then error, does not fire
    again), ok re-arms. N rejections
    within the window fire once; fewer in the window re-arms."""
    e = engine('[[rule]]\nwhen = "offline"\nfor = 300\n[[rule]]\nwhen = "scanner-error"\n'
               '[[rule]]\nwhen = "rejected-burst"\ncount = 3\nwithin = 60\n')
    e.reading("demo-pi", "temperature", {"temperature": 20}, 0, "demo")
    assert e.status("demo-pi", False, 1000) == []
    assert e.tick(1299) == []
    (off,) = e.tick(1300)
    assert off.message == "demo-pi offline for 5 min [demo data, not measured]"
    assert e.tick(2000) == [] and e.status("demo-pi", False, 2100) == []
    e.status("demo-pi", True, 2200)
    e.status("demo-pi", False, 2300)
    assert len(e.tick(2600)) == 1
    (err,) = e.reading("pi-kitchen", "scanner", {"state": "error", "detail": "no hci0"}, 10)
    assert err.message == "pi-kitchen: Bluetooth scanner error: no hci0"
    assert e.reading("pi-kitchen", "scanner", {"state": "error", "detail": "other"}, 20) == []
    e.reading("pi-kitchen", "scanner", {"state": "ok"}, 30)
    assert len(e.reading("pi-kitchen", "scanner", {"state": "error"}, 40)) == 1
    e.reading("pi-kitchen", "scanner", {"state": "ok"}, 50)  # a stall is a scanner problem
    (stall,) = e.reading("pi-kitchen", "scanner", {"state": "stalled", "detail": "no "
                         "advertisement in 6 scans in a row; restarted discovery"}, 60)
    assert stall.message == ("pi-kitchen: Bluetooth scanner stalled: no advertisement in 6 "
                             "scans in a row; restarted discovery")
    assert e.reading("pi-kitchen", "scanner", {"state": "stalled", "detail": "power"}, 70) == []
    assert e.reading("pi-kitchen", "scanner", {"state": "error"}, 75) == []  # same trouble
    assert e.rejected(None, "decrypt", 100) == [] and e.rejected(None, "decrypt", 110) == []
    (burst,) = e.rejected("pi-kitchen", "replay", 120)
    assert burst.message == ("3 messages rejected within 1 min: a possible attack (2 decrypt "
                             "from an unknown sender, 1 replay from pi-kitchen)")
    assert e.rejected(None, "decrypt", 130) == []
    e.tick(165)  # 110, 120, 130 remain: still a burst
    assert e.rejected(None, "decrypt", 166) == []
    e.tick(400)  # the window emptied: re-armed
    e.rejected(None, "decrypt", 401)
    e.rejected(None, "decrypt", 402)
    assert len(e.rejected(None, "decrypt", 403)) == 1


def test_the_history_records_alerts_and_refuses_out_of_range_ones(tmp_path: Path) -> None:
    """alert() keeps rule, kind, message, subject, demo mark and delivery; its delivery
    is updated; bad inputs are ValueError before anything is written."""
    db = tmp_path / "h.db"
    with SqliteHistory(db) as w:
        first = w.alert("Anna arrives", "arrives", "Anna arrived", 1000.0, "Anna")
        w.alert("hot", "temperature-above", "x", 2000.0, "demo-pi", simulated="demo",
                delivery="none")
        w.commit()
        w.alert_delivery(first, "delivered", 1001.0)
        w.commit()
        for bad in (dict(at=-1.0), dict(rule=""), dict(message="m" * 513),
                    dict(subject="s" * 65), dict(delivery="lost")):
            args = {"rule": "r", "kind": "k", "message": "m", "at": 1.0, "subject": "",
                    **bad}
            with pytest.raises(ValueError):
                w.alert(args.pop("rule"), args.pop("kind"), args.pop("message"),
                        args.pop("at"), args.pop("subject"), **args)  # type: ignore[arg-type]
        w.commit()
    with SqliteHistoryReader(db) as r:
        hot, arrived = r.alerts()
        assert (hot.rule, hot.subject, hot.simulated, hot.delivery) == (
            "hot", "demo-pi", "demo", "none")
        assert (arrived.delivery, arrived.delivered_at) == ("delivered", 1001.0)
        assert len(r.alerts(limit=1)) == 1


class Receiver:
    """A real HTTP server on loopback that records the JSON bodies POSTed to it; each
    request answers the next status from ``statuses`` (then 200), or hangs while
    ``hang`` is set."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self.paths: list[str] = []
        self.statuses: list[int] = []
        self.started = 0  # requests received (answered or not)
        self.hang = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.started += 1
                if receiver.hang.is_set():
                    receiver.release.wait(30)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                    receiver.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait(self, n: int, timeout: float = 20.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.bodies) >= n, self.bodies
        return self.bodies

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def an_alert(rule: str = "r") -> Alert:
    return Alert(rule=rule, kind="arrives", message=f"{rule} happened", at=1.0,
                 person="Anna", simulated="demo")


def test_ntfy_format_posts_to_the_root_with_the_topic(receiver: Receiver) -> None:
    """format = "ntfy": the JSON body goes to the server's root with the URL's path as
    its topic, the rule as title and the demo mark as a tag."""
    cfg = parse_alerts(f'[webhook]\nurl = "{receiver.url}/my-topic"\nformat = "ntfy"\n',
                       Path("a"))
    assert cfg.webhook is not None
    hook = Webhook(cfg.webhook)
    hook.send(an_alert("Anna arrives"))
    (body,) = receiver.wait(1)
    hook.close(1)
    assert receiver.paths == ["/"]
    assert body == {"topic": "my-topic", "title": "Homewatch: Anna arrives",
                    "message": "Anna arrives happened", "tags": ["house", "demo"],
                    "priority": 3}


def test_a_full_queue_drops_the_oldest_undelivered_and_counts_it(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """While the webhook hangs, a queue of 2 keeps the 2 newest alerts: the oldest
    waiting ones are dropped, counted and logged; the rest are delivered afterwards."""
    cfg = parse_alerts(f'[webhook]\nurl = "{receiver.url}/hook/secret"\nqueue = 2\n'
                       'timeout = 30\n', Path("a"))
    assert cfg.webhook is not None
    results: list[tuple[int | None, str]] = []
    receiver.hang.set()
    hook = Webhook(cfg.webhook, on_result=lambda ref, state, at: results.append((ref, state)))
    hook.send(an_alert("a0"), 0)
    deadline = time.monotonic() + 10
    while hook.pending() != 1 or hook._queue:  # a0 is being posted (and hangs)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for i in range(1, 5):
        hook.send(an_alert(f"a{i}"), i)
    assert hook.dropped == 2 and results == [(1, "dropped"), (2, "dropped")]
    assert "dropped the oldest undelivered alert (a1" in caplog.text
    assert "secret" not in caplog.text
    receiver.hang.clear()
    receiver.release.set()
    bodies = receiver.wait(3)
    hook.close(2)
    assert [b["rule"] for b in bodies] == ["a0", "a3", "a4"]


def test_a_redirect_is_a_failure_never_followed_and_a_stop_waits_only_its_grace(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """A 302 answer is a failed delivery (logged, not followed; with retry_for 0 given
    up and reported failed); at close, an alert stuck in a hanging POST gets the grace
    period, then is recorded as failed (not left pending)."""
    cfg = parse_alerts(f'[webhook]\nurl = "{receiver.url}/hook"\nretry_for = 0\n'
                       'timeout = 30\n', Path("a"))
    assert cfg.webhook is not None
    results: list[tuple[int | None, str]] = []
    hook = Webhook(cfg.webhook, on_result=lambda ref, state, at: results.append((ref, state)))
    receiver.statuses = [302]
    hook.send(an_alert("moved"), 1)
    until_true(lambda: results == [(1, "failed")])
    assert "failed (HTTP 302); given up" in caplog.text and receiver.started == 1
    receiver.hang.set()
    hook.send(an_alert("stuck"), 2)
    until_true(lambda: receiver.started == 2)
    hook.close(0.5)
    assert receiver.bodies == []  # close returned while the POST still hangs
    assert "1 alert(s) not delivered when stopping: recorded as failed" in caplog.text
    assert results == [(1, "failed"), (2, "failed")]  # never left "pending" for good
    receiver.release.set()  # the hanging POST ends after the stop: not recorded again
    time.sleep(0.5)
    assert results == [(1, "failed"), (2, "failed")]


def until_true(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def read_request(conn: socket.socket) -> bytes:
    """One whole HTTP request (headers and its Content-Length of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_answer_that_is_not_http_is_a_failed_try_and_deliveries_go_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """A webhook port that answers something other than HTTP (a wrong port, a captive
    portal) is one failed, logged try; the delivery thread lives on, and the next alert
    is delivered once the port answers HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        for answer in (b"SSH-2.0-OpenSSH_9.2\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"):
            conn, _ = server.accept()
            with conn:
                received.append(read_request(conn))
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    cfg = parse_alerts(f'[webhook]\nurl = "http://127.0.0.1:{port}/hook"\nretry_for = 0\n',
                       Path("a"))
    assert cfg.webhook is not None
    results: list[tuple[int | None, str]] = []
    hook = Webhook(cfg.webhook, on_result=lambda ref, state, at: results.append((ref, state)))
    try:
        hook.send(an_alert("garbled"), 1)
        until_true(lambda: results == [(1, "failed")])
        assert "failed (BadStatusLine); given up" in caplog.text
        hook.send(an_alert("next"), 2)
        until_true(lambda: results == [(1, "failed"), (2, "delivered")])
        assert b'"rule": "next"' in received[1]
    finally:
        hook.close(1)
        server.close()
