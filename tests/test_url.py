"""Broker URLs: mqtts:// is TLS; plain mqtt:// only to loopback with --allow-plaintext."""

import pytest

from homewatch.errors import ConfigError
from homewatch.url import parse_broker_url


def test_mqtts_url_gives_host_port_and_base() -> None:
    """mqtts://HOST:PORT/BASE parses into its parts, with TLS on."""
    url = parse_broker_url("mqtts://server.lan:8883/home")
    assert (url.host, url.port, url.base, url.tls) == ("server.lan", 8883, "home", True)
    assert str(url) == "mqtts://server.lan:8883/home"


def test_defaults_are_port_8883_and_base_home() -> None:
    """Without a port or base, TLS port 8883 and base topic 'home' are used."""
    url = parse_broker_url("mqtts://server.lan")
    assert (url.port, url.base) == (8883, "home")


def test_multi_level_base_and_ipv6_host() -> None:
    """A base topic may have several levels; IPv6 hosts work in brackets."""
    url = parse_broker_url("mqtts://[::1]:9000/flat/3b")
    assert (url.host, url.port, url.base) == ("::1", 9000, "flat/3b")


def test_plain_mqtt_to_a_remote_host_is_refused_even_when_allowed() -> None:
    """Plain mqtt:// to a non-loopback host is refused whatever the flags."""
    with pytest.raises(ConfigError, match="use mqtts://"):
        parse_broker_url("mqtt://broker.example.com/home", allow_plaintext=True)


def test_plain_mqtt_to_loopback_needs_allow_plaintext() -> None:
    """Plain mqtt:// to loopback is refused unless --allow-plaintext is given."""
    with pytest.raises(ConfigError, match="--allow-plaintext"):
        parse_broker_url("mqtt://127.0.0.1:1883/home")
    url = parse_broker_url("mqtt://localhost/home", allow_plaintext=True)
    assert (url.tls, url.port) == (False, 1883)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://server/home", "not supported"),
        ("server:8883", "not supported"),
        ("mqtts://user:pw@server/home", "credentials"),
        ("mqtts:///home", "missing host"),
        ("mqtts://server:99999/home", "port"),
        ("mqtts://server/home/#", "no '\\+', '#'"),
        ("mqtts://server/home/+/x", "no '\\+', '#'"),
        ("mqtts://server/a//b", "no empty level"),
        ("mqtts://server/$SYS", "'\\$'"),
    ],
)
def test_bad_urls_are_refused_with_a_clear_message(text: str, message: str) -> None:
    """Malformed URLs, credentials in URLs and wildcard base topics are refused."""
    with pytest.raises(ConfigError, match=message):
        parse_broker_url(text)
