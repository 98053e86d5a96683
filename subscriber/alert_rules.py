"""The alerts file: which events raise an alert, and where alerts are sent.

One small TOML file on the server (read with :mod:`tomllib`), by default
``alerts.toml`` in the subscriber's identity directory (``certs/clients/subscriber/``),
which the Compose stack already mounts read-only into the subscriber. It may hold a
secret (a webhook URL whose path is a token, an ntfy topic, an access token): keep it
0600 (0640 to the app's group in Docker); it is never logged, and URLs are logged with
their path and query masked (:func:`mask_url`). The README's "Alerts" section is the
user's reference; a bad file is one :class:`~homewatch.errors.ConfigError` line naming
the line, so the subscriber exits 2::

    [webhook]
    url = "https://ntfy.sh/my-secret-topic"
    format = "ntfy"                # or "json" (default): the documented payload

    [[rule]]
    when = "arrives"               # arrives, leaves, everyone-left, temperature-above,
    person = "Annas Watch"         # temperature-below, offline, scanner-error,
                                   # rejected-burst

    [[rule]]
    when = "temperature-above"
    room = "kitchen"               # or pi = "pi-kitchen"; neither: every Pi
    celsius = 28
    for = "10m"
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from homewatch.errors import ConfigError
from homewatch.secrets import Secret
from homewatch.url import is_loopback

KINDS = ("arrives", "leaves", "everyone-left", "temperature-above", "temperature-below",
         "offline", "scanner-error", "rejected-burst")
FORMATS = ("json", "ntfy")
MAX_RULES = 100
MAX_NAME = 64
DEFAULT_OFFLINE_FOR = 300.0
DEFAULT_HYSTERESIS = 0.5
DEFAULT_BURST = 20
DEFAULT_WINDOW = 60.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_FOR = 900.0
DEFAULT_QUEUE = 100

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*\"?([A-Za-z0-9_-]+)\"?\s*=")
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

# Which keys each kind takes (besides ``when`` and ``name``).
_KEYS: dict[str, frozenset[str]] = {
    "arrives": frozenset({"person"}),
    "leaves": frozenset({"person"}),
    "everyone-left": frozenset(),
    "temperature-above": frozenset({"pi", "room", "celsius", "for", "hysteresis"}),
    "temperature-below": frozenset({"pi", "room", "celsius", "for", "hysteresis"}),
    "offline": frozenset({"pi", "for"}),
    "scanner-error": frozenset({"pi"}),
    "rejected-burst": frozenset({"count", "within"}),
}
_WEBHOOK_KEYS = frozenset({"url", "format", "ca", "allow_http", "token", "timeout",
                           "retry_for", "queue"})


def mask_url(url: str) -> str:
    """``scheme://host[:port]/***``: what a log may say of a webhook URL (its path or
    query may be the secret, e.g. an ntfy topic)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<an unparsable URL>"
    host = f"[{host}]" if ":" in host else host
    hidden = "/***" if parts.path not in ("", "/") or parts.query else "/"
    return f"{parts.scheme}://{host}{port}{hidden}"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One rule of the file (see the README's "Alerts" for each kind)."""

    name: str
    kind: str
    line: int | None = None  # where it starts in the file
    person: str | None = None
    pi: str | None = None
    room: str | None = None
    celsius: float | None = None
    duration: float = 0.0  # "for": seconds the condition must hold
    hysteresis: float = DEFAULT_HYSTERESIS
    count: int = DEFAULT_BURST
    within: float = DEFAULT_WINDOW


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """Where alerts are POSTed. ``url`` and ``token`` are secrets."""

    url: Secret
    format: str = "json"
    ca: Path | None = None
    allow_http: bool = False
    token: Secret | None = None
    timeout: float = DEFAULT_TIMEOUT
    retry_for: float = DEFAULT_RETRY_FOR
    queue: int = DEFAULT_QUEUE

    @property
    def masked(self) -> str:
        return mask_url(self.url.reveal())


@dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    """The parsed file. Prints without its secrets."""

    path: Path
    rules: tuple[Rule, ...]
    webhook: WebhookSettings | None

    def __str__(self) -> str:
        where = f"webhook {self.webhook.masked} ({self.webhook.format})" if self.webhook \
            else "no webhook"
        return f"{self.path} ({len(self.rules)} rule(s), {where})"

    __repr__ = __str__


class _Lines:
    """Where tables and keys are in the file's text, for error messages (tomllib says
    where a syntax error is, not where a wrong value is)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str, bool]] = []  # (line index, name, array?)
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if m:
                self.headers.append((i, m.group(2), m.group(1) == "[["))

    def table(self, name: str, index: int = 0) -> tuple[int, int] | None:
        """The line range (start, end) of table ``name`` (its ``index``-th for [[...]])."""
        found = [i for i, (_, n, _a) in enumerate(self.headers) if n == name]
        if index >= len(found):
            return None
        h = found[index]
        start = self.headers[h][0]
        end = self.headers[h + 1][0] if h + 1 < len(self.headers) else len(self.lines)
        return start, end

    def line_of(self, name: str, index: int = 0, key: str | None = None) -> int | None:
        """1-based line of table ``name`` or of ``key`` in it."""
        span = self.table(name, index)
        if span is None:
            return None
        if key is not None:
            for i in range(span[0] + 1, span[1]):
                m = _KEY.match(self.lines[i])
                if m and m.group(1) == key:
                    return i + 1
        return span[0] + 1


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a string like ``90s``, ``10m``, ``1.5h``, ``1d``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration like 600, \"90s\", \"10m\" or \"1h\"")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{what} must be a duration like 600, \"90s\", \"10m\" or \"1h\"")
    if not (math.isfinite(seconds) and 0 <= seconds <= 366 * 86400):
        raise ValueError(f"{what} must be between 0 and 366 days")
    return seconds


def _name(value: Any, what: str) -> str:
    if not (isinstance(value, str) and 0 < len(value.strip()) <= MAX_NAME):
        raise ValueError(f"{what} must be a name of 1 to {MAX_NAME} characters")
    return value.strip()


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{what} must be a number from {low:g} to {high:g}")
    return float(value)


def _rule(raw: Any, index: int, lines: _Lines) -> Rule:
    where = lines.line_of("rule", index)

    def fail(message: str, key: str | None = None) -> ConfigError:
        at = lines.line_of("rule", index, key) if key else where
        return ConfigError(f"{'line ' + str(at) + ': ' if at else ''}rule {index + 1}: "
                           f"{message}")

    if not isinstance(raw, dict):
        raise fail("must be a table ([[rule]])")
    kind = raw.get("when")
    if kind not in KINDS:
        raise fail(f"when must be one of {', '.join(KINDS)}", "when")
    unknown = set(raw) - _KEYS[kind] - {"when", "name"}
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"{key!r} does not belong in a {kind} rule (it takes: "
                   f"{', '.join(sorted(_KEYS[kind])) or 'nothing more'})", key)
    values: dict[str, Any] = {}
    key = "name"
    try:
        for key in ("person", "pi", "room"):
            if key in raw:
                values[key] = _name(raw[key], key)
        key = "person"
        if kind in ("arrives", "leaves") and "person" not in values:
            raise ValueError(f"a {kind} rule needs person = \"NAME\" (a name from a "
                             "known-devices file)")
        key = "room"
        if "pi" in values and "room" in values:
            raise ValueError("give pi or room, not both")
        key = "celsius"
        if kind.startswith("temperature"):
            if "celsius" not in raw:
                raise ValueError(f"a {kind} rule needs celsius = NUMBER")
            values["celsius"] = _number(raw["celsius"], "celsius", -100, 200)
            key = "hysteresis"
            if "hysteresis" in raw:
                values["hysteresis"] = _number(raw["hysteresis"], "hysteresis", 0, 50)
        key = "for"
        if "for" in raw:
            values["duration"] = parse_duration(raw["for"], "for")
        elif kind == "offline":
            values["duration"] = DEFAULT_OFFLINE_FOR
        key = "count"
        if "count" in raw:
            values["count"] = int(_number(raw["count"], "count", 1, 100_000))
            if raw["count"] != values["count"]:
                raise ValueError("count must be a whole number")
        key = "within"
        if "within" in raw:
            values["within"] = parse_duration(raw["within"], "within")
            if values["within"] <= 0:
                raise ValueError("within must be more than 0 seconds")
        key = "name"
        name = _name(raw["name"], "name") if "name" in raw else _default_name(kind, values)
    except ValueError as exc:
        raise fail(str(exc), key) from None
    return Rule(name=name, kind=kind, line=where, **values)


def _default_name(kind: str, v: dict[str, Any]) -> str:
    where = v.get("room") or v.get("pi") or "any Pi"
    if kind in ("arrives", "leaves"):
        return f"{v['person']} {kind}"[:MAX_NAME]
    if kind.startswith("temperature"):
        side = "above" if kind.endswith("above") else "below"
        return f"{where} {side} {v['celsius']:g} °C"[:MAX_NAME]
    if kind in ("offline", "scanner-error"):
        return f"{where} {kind}"[:MAX_NAME]
    return kind


def _webhook(raw: Any, lines: _Lines) -> WebhookSettings:
    def fail(message: str, key: str | None = None) -> ConfigError:
        at = lines.line_of("webhook", 0, key)
        return ConfigError(f"{'line ' + str(at) + ': ' if at else ''}webhook: {message}")

    if not isinstance(raw, dict):
        raise fail("must be a table ([webhook])")
    unknown = set(raw) - _WEBHOOK_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(f"unknown key {key!r} (known: {', '.join(sorted(_WEBHOOK_KEYS))})", key)
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise fail("url = \"https://...\" is required", "url")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        raise fail("url is not a valid URL", "url") from None
    allow_http = raw.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise fail("allow_http must be true or false", "allow_http")
    if parts.scheme not in ("https", "http") or not host:
        raise fail(f"url must be https://HOST/... (not {mask_url(url)})", "url")
    if parts.scheme == "http" and not (allow_http or is_loopback(host)):
        raise fail("a plain http:// URL is allowed only to this machine (loopback), or "
                   "with allow_http = true (a LAN server: alerts and the URL then cross "
                   "the LAN unencrypted); use https://", "url")
    if parts.username or parts.password:
        raise fail("put no user or password in the url: use token = \"...\"", "url")
    fmt = raw.get("format", "json")
    if fmt not in FORMATS:
        raise fail(f"format must be one of {', '.join(FORMATS)}", "format")
    topic = parts.path.strip("/")
    if fmt == "ntfy" and (not topic or "/" in topic or parts.query):
        raise fail("an ntfy url is the server and the topic: https://HOST/TOPIC", "url")
    ca = raw.get("ca")
    if ca is not None:
        if not isinstance(ca, str) or not ca:
            raise fail("ca must be the path of a CA certificate file", "ca")
        if not Path(ca).is_file():
            raise fail(f"ca file not found: {ca}", "ca")
    token = raw.get("token")
    if token is not None and not (isinstance(token, str) and token.strip() and
                                  token.isprintable() and len(token) <= 512):
        raise fail("token must be a non-empty string", "token")
    key = "timeout"
    try:
        timeout = _number(raw.get("timeout", DEFAULT_TIMEOUT), "timeout", 0.1, 120)
        key = "retry_for"
        retry_for = parse_duration(raw.get("retry_for", DEFAULT_RETRY_FOR), "retry_for")
        key = "queue"
        queue = _number(raw.get("queue", DEFAULT_QUEUE), "queue", 1, 10_000)
    except ValueError as exc:
        raise fail(str(exc), key) from None
    return WebhookSettings(url=Secret(url), format=fmt, ca=Path(ca) if ca else None,
                           allow_http=allow_http, token=Secret(token.strip()) if token else None,
                           timeout=timeout, retry_for=retry_for, queue=int(queue))


def parse_alerts(text: str, path: Path) -> AlertsConfig:
    """The file's content; ConfigError (``alerts file PATH: line N: ...``) when wrong."""
    try:
        return _parse(text, path)
    except ConfigError as exc:
        raise ConfigError(f"alerts file {path}: {exc}") from None


def _parse(text: str, path: Path) -> AlertsConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_AT.search(message)
        if m:
            message = f"line {m.group(1)}: {message[:m.start()]} (column {m.group(2)})"
        raise ConfigError(message) from None
    lines = _Lines(text)
    unknown = set(data) - {"rule", "webhook"}
    if unknown:
        key = sorted(unknown)[0]
        at = next((i + 1 for i, line in enumerate(lines.lines)
                   if (m := _HEADER.match(line) or _KEY.match(line)) and
                   key in m.groups()), None)
        raise ConfigError(f"{'line ' + str(at) + ': ' if at else ''}unknown table or key "
                          f"{key!r} (the file has [webhook] and [[rule]] tables)")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError("rule must be an array of tables: write each as [[rule]]")
    if len(raw_rules) > MAX_RULES:
        raise ConfigError(f"at most {MAX_RULES} rules")
    rules = tuple(_rule(raw, i, lines) for i, raw in enumerate(raw_rules))
    names = [r.name for r in rules]
    for i, rule in enumerate(rules):
        if rule.name in names[:i]:
            raise ConfigError(f"{'line ' + str(rule.line) + ': ' if rule.line else ''}"
                              f"rule {i + 1}: another rule is named {rule.name!r} "
                              "(give it a name = \"...\" of its own)")
    webhook = _webhook(data["webhook"], lines) if "webhook" in data else None
    return AlertsConfig(path=path, rules=rules, webhook=webhook)


def load_alerts(path: Path) -> AlertsConfig:
    """Read and parse the alerts file (ConfigError: one line, for exit code 2)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        hint = " (in Docker it must be readable by the app group: make up fixes it, " \
               "or chmod 640)" if isinstance(exc, PermissionError) else ""
        raise ConfigError(f"alerts file {path}: {detail}{hint}") from None
    return parse_alerts(text, path)
