"""Who may see the dashboard: one household password, sessions, a login rate limit.

- :class:`Password`: the household password's salted scrypt hash
  (:mod:`homewatch.passwords`, ``certs/dashboard/password.hash``, written by
  ``homewatch dashboard password``); the dashboard never sees the password itself, only
  what a login form sends. The file is re-read when it changes, and a new hash ends
  every session. Checks (about 0.1 s and 32 MiB each) run one at a time on a thread of
  their own, never on the event loop.
- :class:`WatchedFile`: a one-line file re-read when it changes (the hash, the metrics
  token); a missing, unreadable or empty one lets nobody in (fail closed).
- :class:`Sessions`: random tokens held in memory only (a restart logs everyone out),
  ending after an idle time, a maximum lifetime, a logout or a password change.
- :class:`LoginLimiter`: token buckets per client address and overall. Each attempt
  takes a token from both before the password is checked (so a burst of parallel
  attempts is cut off too) and a successful login gives it back; without one, the
  attempt is refused at once (429 with Retry-After). The addresses are a bounded LRU
  table (:class:`TokenBuckets`): rotating addresses cost O(1) each and no memory
  beyond its cap.
- :class:`KnownBrowsers`: a browser that logged in before carries a signed cookie, and
  only its own failures can refuse its logins (no lock-out by others).

Nothing here logs or returns a password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from homewatch.passwords import verify_password

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SESSION_COOKIE = "__Host-homewatch"  # __Host-: Secure, Path=/ and no Domain, enforced
LOGIN_COOKIE = "__Host-homewatch-login"  # the login form's CSRF token (double submit)
BROWSER_COOKIE = "__Host-homewatch-browser"  # a browser that logged in before
MAX_LIFETIME = 30 * 86400.0  # a session ends after this, however active
MAX_SESSIONS = 1000
BROWSER_LIFETIME = 90 * 86400  # a known browser's cookie, from its last login
MAX_BROWSERS = 1000  # known browsers whose failed logins are remembered


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def same_secret(a: str, b: str) -> bool:
    """Constant time, whatever the lengths (both are hashed first)."""
    return hmac.compare_digest(_digest(a), _digest(b))


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file does, a chmod or chown included."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class WatchedFile:
    """A one-line file, re-read whenever its inode, size, mtime or ctime changes (a
    chmod, or contents written in place with the mtime put back, change only the
    ctime), and at every look while it cannot be read; a change of its contents starts
    a new :attr:`generation`."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.generation = 0
        self._key: tuple[int, ...] | None = None
        self._value: str | None = None
        self._problem: str | None = None

    def load(self) -> str | None:
        """Read the file now (at start): what is wrong with it, or None. An OSError from
        the first look is the caller's to report."""
        self._read(self.path.stat(), report=False)
        return self._problem

    def current(self) -> str | None:
        """The contents now (stripped; one stat, a read only if the file changed); None
        while the file is missing or empty."""
        try:
            st = self.path.stat()
        except OSError as exc:
            self._set(None, f"{self.what} {self.path}: {exc.strerror}", None)
            return None
        if _stamp(st) != self._key:
            self._read(st)
        return self._value

    def _read(self, st: os.stat_result, *, report: bool = True) -> None:
        key = _stamp(st)
        try:
            value = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:  # tried again at the next look
            self._set(None, f"{self.what} {self.path}: {exc.strerror}", None, report)
            return
        except UnicodeDecodeError:
            self._set(None, f"{self.what} {self.path}: not UTF-8 text", key, report)
            return
        if not value:
            self._set(None, f"{self.what} {self.path} is empty", key, report)
            return
        if st.st_mode & stat.S_IWOTH:
            log.warning("%s %s can be changed by every user; run: chmod o-w %s", self.what,
                        self.path, self.path)
        self._set(value, None, key, report)

    def _set(self, value: str | None, problem: str | None,
             key: tuple[int, ...] | None, report: bool = True) -> None:
        self._key = key
        if report and problem is not None and problem != self._problem:
            log.error("%s: nobody can log in with it until it is fixed", problem)
        self._problem = problem
        if value != self._value:
            if self._value is not None:
                log.info("%s %s changed", self.what, self.path)
            self._value = value
            self.generation += 1

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` is the file's contents (constant time)."""
        value = self.current()
        return value is not None and same_secret(candidate, value)


class PasswordUnavailable(Exception):
    """The password hash is missing or damaged: no password can be checked."""


class Password:
    """The household password, as the scrypt hash in ``path``."""

    def __init__(self, path: Path) -> None:
        self.file = WatchedFile(path, "password hash file")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="password")

    @property
    def generation(self) -> int:
        """Changes whenever the hash does: sessions of another generation are over."""
        self.file.current()
        return self.file.generation

    async def check(self, password: str) -> bool:
        stored = self.file.current()
        if stored is None:
            raise PasswordUnavailable(f"{self.file.what} {self.file.path} is missing or empty")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, verify_password, password, stored)
        except ValueError as exc:
            raise PasswordUnavailable(f"{self.file.what} {self.file.path} is damaged ({exc}); "
                                      "run: make dashboard-password") from None

    def close(self) -> None:
        self._pool.shutdown()


class KnownBrowsers:
    """OWASP's "device cookie": a browser that logged in carries a signed cookie naming
    it (a random id and an expiry, HMAC-SHA256), and its login attempts are limited by
    a bucket of its own instead of its address's and everyone's (:class:`LoginLimiter`),
    so nobody on the LAN can lock it out by failing logins from elsewhere, nor from
    behind the same address (a Docker proxy, a shared NAT).

    The signing key is derived from the password hash (an HMAC keyed by the hash file's
    line), not held in memory nor kept on disk as a secret of its own: cookies survive
    a restart, and a new password revokes every one of them, as it ends every session.
    Who could forge one holds the hash, and could guess the password offline faster
    than through any login form.
    """

    LABEL = b"homewatch known-browser cookie v1"
    MAX_COOKIE = 200

    def __init__(self, secret: Callable[[], str | None], *,
                 lifetime: int = BROWSER_LIFETIME, clock: Clock = time.time) -> None:
        self._secret, self.lifetime, self._clock = secret, lifetime, clock

    def _mac(self, body: str) -> str | None:
        secret = self._secret()
        if secret is None:
            return None
        key = hmac.new(secret.encode("utf-8"), self.LABEL, hashlib.sha256).digest()
        mac = hmac.new(key, body.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def issue(self, browser: str | None = None) -> str | None:
        """A cookie for ``browser`` (a new one when None), valid for :attr:`lifetime`
        from now; None while there is no password hash to sign with."""
        body = f"{browser or secrets.token_urlsafe(16)}.{int(self._clock()) + self.lifetime}"
        mac = self._mac(body)
        return None if mac is None else f"{body}.{mac}"

    def verify(self, cookie: str | None) -> str | None:
        """The browser a cookie names if we signed it under the current password and it
        has not expired; else None (the attempt is judged as any other)."""
        if not cookie or len(cookie) > self.MAX_COOKIE:
            return None
        body, _, mac = cookie.rpartition(".")
        browser, _, expires = body.partition(".")
        expected = self._mac(body)
        if not (browser and expires.isascii() and expires.isdigit() and expected
                and same_secret(mac, expected)):
            return None
        return browser if int(expires) > self._clock() else None


@dataclass
class Session:
    csrf: str  # the token its forms (logout) carry
    created: float
    last_used: float


@dataclass
class Sessions:
    """Sessions in memory, keyed by the SHA-256 of their token (lookups leak nothing
    usable about a token through timing). All of them end when the password's
    generation changes."""

    idle: float
    lifetime: float = MAX_LIFETIME
    clock: Clock = time.monotonic
    _by_digest: dict[bytes, Session] = field(default_factory=dict)
    _generation: int | None = None

    def create(self, generation: int) -> str:
        """A new session under the password of ``generation``; returns its token."""
        self._sync(generation)
        if len(self._by_digest) >= MAX_SESSIONS:  # drop the least recently used
            oldest = min(self._by_digest, key=lambda d: self._by_digest[d].last_used)
            del self._by_digest[oldest]
        token = secrets.token_urlsafe(32)
        now = self.clock()
        self._by_digest[_digest(token)] = Session(csrf=secrets.token_urlsafe(24), created=now,
                                                  last_used=now)
        return token

    def get(self, token: str | None, generation: int) -> Session | None:
        """The live session of ``token`` (renewing its idle time), or None."""
        self._sync(generation)
        session = self._by_digest.get(_digest(token)) if token else None
        if session is None:
            return None
        session.last_used = self.clock()
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def count(self) -> int:
        return len(self._by_digest)

    def _sync(self, generation: int) -> None:
        """Forget every session of another password and every expired one."""
        if generation != self._generation:
            self._by_digest.clear()
            self._generation = generation
        now = self.clock()
        for d, s in list(self._by_digest.items()):
            if now - s.last_used > self.idle or now - s.created > self.lifetime:
                del self._by_digest[d]


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets by key (a client address): ``capacity`` tokens at once, then one
    every ``every`` seconds. At most ``cap`` keys are kept: beyond that the least
    recently used is forgotten (an OrderedDict, so each look is O(1) however many
    addresses come and go), and comes back, if it does, with a full bucket. A key is
    added only when a token is taken from it, so attempts refused by another limit
    take no room."""

    def __init__(self, capacity: int, every: float, cap: int) -> None:
        self.capacity, self.every, self.cap = capacity, every, cap
        self._by_key: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def _known(self, key: str, now: float) -> _Bucket | None:
        bucket = self._by_key.get(key)
        if bucket is not None:
            self._by_key.move_to_end(key)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) / self.every)
            bucket.at = now
        return bucket

    def _get(self, key: str, now: float) -> _Bucket:
        bucket = self._known(key, now)
        if bucket is None:
            bucket = self._by_key[key] = _Bucket(self.capacity, now)
            if len(self._by_key) > self.cap:
                self._by_key.popitem(last=False)
        return bucket

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now)."""
        bucket = self._known(key, now)
        tokens = self.capacity if bucket is None else bucket.tokens
        return (1 - tokens) * self.every if tokens < 1 else 0.0

    def take(self, key: str, now: float) -> None:
        self._get(key, now).tokens -= 1

    def give_back(self, key: str, now: float) -> None:
        bucket = self._get(key, now)
        bucket.tokens = min(self.capacity, bucket.tokens + 1)


@dataclass
class LoginLimiter:
    """Failed logins allowed: ``per_client`` at once per address, then one every
    ``client_every`` seconds; ``overall`` at once from everyone, then one every
    ``overall_every`` seconds. An attempt from a known browser (:class:`KnownBrowsers`)
    is judged by that browser's bucket alone, as many at once and as often as an
    address's: others' failures never refuse it. At most ``max_clients`` addresses and
    ``max_browsers`` browsers are remembered (the least recently seen forgotten first).

    What bounds the scrypt work: checks run one at a time (:class:`Password`); without
    the password nobody can make a known browser, so strangers get no more attempts
    than the address and overall buckets allow."""

    per_client: int = 5
    client_every: float = 30.0
    overall: int = 20
    overall_every: float = 10.0
    max_clients: int = 10_000
    max_browsers: int = MAX_BROWSERS
    clock: Clock = time.monotonic
    clients: TokenBuckets = field(init=False)
    browsers: TokenBuckets = field(init=False)
    _all: TokenBuckets = field(init=False)
    refused: int = 0  # attempts refused by the limit (metrics)
    failed_total: int = 0  # wrong passwords (metrics)

    def __post_init__(self) -> None:
        self.clients = TokenBuckets(self.per_client, self.client_every, self.max_clients)
        self.browsers = TokenBuckets(self.per_client, self.client_every, self.max_browsers)
        self._all = TokenBuckets(self.overall, self.overall_every, 1)

    def _buckets(self, client: str, browser: str | None) -> list[tuple[TokenBuckets, str]]:
        if browser is not None:
            return [(self.browsers, browser)]
        return [(self.clients, client), (self._all, "")]

    def attempt(self, client: str, browser: str | None = None) -> float:
        """Take a token for a login attempt by ``client``, from a known ``browser`` or
        None: 0 when it may go ahead, else the seconds to wait (and nothing is taken)."""
        now = self.clock()
        buckets = self._buckets(client, browser)
        wait = max(table.wait(key, now) for table, key in buckets)
        if wait > 0:
            self.refused += 1
            return wait
        for table, key in buckets:
            table.take(key, now)
        return 0.0

    def succeeded(self, client: str, browser: str | None = None) -> None:
        """A successful login gives its token back: only failures count."""
        now = self.clock()
        for table, key in self._buckets(client, browser):
            table.give_back(key, now)

    def failed(self) -> None:
        self.failed_total += 1
