"""What the MQTT programs' settings share on top of :mod:`homewatch.options`: the broker
URL, the MQTT password, client certificates, bundles' env files, device identities.

The generic machinery (``Option``, ``resolve``, ``run_program``, ...) lives in
:mod:`homewatch.options`, which loads no key; it is re-exported here for the programs'
convenience. Secrets are never options with values on the command line: only paths to
files, or env variables.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from homewatch.errors import ConfigError
from homewatch.options import (
    ENV_PREFIX,
    HEALTH_FILE_OPTION,
    LOG_LEVEL_OPTION,
    LOG_LEVELS,
    SHOW_SETTINGS_OPTION,
    OneLineParser,
    Option,
    ProgramSettings,
    build_parser,
    default_state_dir,
    describe,
    nonneg_float,
    parse_bool,
    path,
    positive_float,
    resolve,
    run_program,
    setup_logging,
)
from homewatch.secrets import Secret, read_secret_file
from homewatch.url import BrokerURL, parse_broker_url

__all__ = [
    "CLIENT_CERT_OPTIONS", "COMMON_OPTIONS", "ENV_PREFIX", "LOG_LEVELS", "URL_OPTION",
    "OneLineParser", "Option", "ProgramSettings", "broker_url", "build_parser",
    "client_certificate", "credentials_dir", "default_identity", "default_state_dir",
    "describe", "load_password", "nonneg_float", "parse_bool", "path", "positive_float",
    "program_parser", "read_env_file", "resolve", "run_program", "setup_logging",
]

# Options both programs have, in the place each program lists them.
URL_OPTION = Option("url", "broker URL mqtts://HOST:PORT/BASE")
CLIENT_CERT_OPTIONS = (
    Option("client-cert", "client certificate for mutual TLS (default client.crt in the "
           "identity directory, when present)", convert=path, metavar="FILE"),
    Option("client-key", "client certificate's private key", convert=path, metavar="FILE"),
)
COMMON_OPTIONS = (
    HEALTH_FILE_OPTION,
    Option("allow-plaintext", "allow mqtt:// without TLS to a loopback broker", default=False,
           flag=True),
    SHOW_SETTINGS_OPTION,
    LOG_LEVEL_OPTION,
)


def program_parser(prog: str, description: str,
                   options: Sequence[Option]) -> argparse.ArgumentParser:
    """A program's parser: the broker URL as positional argument, then every other option."""
    return build_parser(prog, description, [o for o in options if o.name != "url"],
                        positional=(("url", "broker URL mqtts://HOST:PORT/BASE "
                                     "[env HOMEWATCH_URL]"),))


def broker_url(values: Mapping[str, Any], prog: str) -> BrokerURL:
    """The resolved broker URL, required, with the plaintext rule applied."""
    if not values["url"]:
        raise ConfigError(f"missing broker URL: {prog} mqtts://HOST:8883/home "
                          "(or set HOMEWATCH_URL)")
    return parse_broker_url(values["url"], allow_plaintext=values["allow-plaintext"])


def credentials_dir(values: Mapping[str, Any]) -> Path | None:
    creds: Path | None = values["credentials"]
    if creds is not None and not creds.is_dir():
        raise ConfigError(f"credentials directory not found: {creds}")
    return creds


def read_env_file(path: Path) -> dict[str, str]:
    """``HOMEWATCH_*=value`` lines (a bundle's homewatch.env, systemd EnvironmentFile
    syntax without quoting); comments and other names are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name.startswith(ENV_PREFIX):
            values[name] = value.strip()
    return values


def load_password(password_file: Path | None, environ: Mapping[str, str]) -> Secret | None:
    """The MQTT password: ``HOMEWATCH_PASSWORD`` env, else the password file if it exists."""
    if ENV_PREFIX + "PASSWORD" in environ:
        return Secret(environ[ENV_PREFIX + "PASSWORD"])
    if password_file is None:
        return None
    return Secret(read_secret_file(password_file, "password"))


def client_certificate(cert: Path | None, key: Path | None,
                       identity_dir: Path) -> tuple[Path | None, Path | None]:
    """The client certificate and key: given explicitly (both), else client.crt/client.key
    in the identity directory when both exist (mutual TLS needs them; password mode
    ignores them)."""
    if (cert is None) != (key is None):
        raise ConfigError("--client-cert and --client-key go together")
    if cert is not None or key is not None:
        return cert, key
    if (identity_dir / "client.crt").is_file() and (identity_dir / "client.key").is_file():
        return identity_dir / "client.crt", identity_dir / "client.key"
    return None, None


def default_identity() -> str:
    """The device identity: this host's short name, lower-cased."""
    return socket.gethostname().split(".")[0].lower()
