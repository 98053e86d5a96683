"""Broker URLs as in the tutorial: ``mqtts://HOST:8883/BASE``.

``mqtts://`` means TLS and is the only scheme accepted by default. ``mqtt://`` (plain
TCP) is refused unless the host is loopback *and* the caller allows plaintext.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from homewatch.errors import ConfigError

DEFAULT_BASE = "home"
TLS_PORT = 8883
PLAIN_PORT = 1883

_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, kw_only=True)
class BrokerURL:
    """A parsed, validated broker URL."""

    host: str
    port: int
    base: str
    tls: bool

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{url_host(self.host)}:{self.port}/{self.base}"


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_base(base: str) -> str:
    """Check a base topic: one or more plain levels, no wildcards, no ``$``."""
    levels = base.split("/")
    for level in levels:
        if not _LEVEL.match(level):
            raise ConfigError(
                f"base topic {base!r}: each level must be letters, digits, '_', '.' or '-' "
                "(no empty level, no '+', '#' or '$')"
            )
    return base


def parse_broker_url(text: str, *, allow_plaintext: bool = False) -> BrokerURL:
    """Parse ``mqtts://HOST[:PORT][/BASE]``; raise ConfigError with one clear line."""
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtts", "mqtt"):
        raise ConfigError(
            f"broker URL {text!r}: expected mqtts://HOST:PORT/BASE "
            f"(scheme {parts.scheme or 'missing'!r} is not supported)"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "broker URL: do not put credentials in the URL; "
            "use --password-file or HOMEWATCH_PASSWORD"
        )
    if "#" in text or "?" in text:
        raise ConfigError(f"broker URL {text!r}: the base topic may not contain '?' or '#' "
                          "(no '+', '#' wildcards: the base is a plain topic prefix)")
    host = parts.hostname
    if not host:
        raise ConfigError(f"broker URL {text!r}: missing host name")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"broker URL {text!r}: port must be a number 1-65535") from None
    tls = scheme == "mqtts"
    if port is None:
        port = TLS_PORT if tls else PLAIN_PORT
    if port == 0:
        raise ConfigError(f"broker URL {text!r}: port must be a number 1-65535")
    if not tls:
        if not is_loopback(host):
            raise ConfigError(
                f"broker URL {text!r}: plain mqtt:// sends passwords and metadata in clear "
                "text; use mqtts:// (plaintext is only possible to a loopback host)"
            )
        if not allow_plaintext:
            raise ConfigError(
                f"broker URL {text!r}: plain mqtt:// is refused; use mqtts://, or pass "
                "--allow-plaintext to talk to a loopback broker without TLS"
            )
    base = parts.path.strip("/") or DEFAULT_BASE
    validate_base(base)
    return BrokerURL(host=host, port=port, base=base, tls=tls)
