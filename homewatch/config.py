"""Settings resolution shared by both programs: defaults < ``HOMEWATCH_*`` env < CLI.

Each program declares its options once (name, env variable, converter, default, help);
``resolve()`` builds the argparse parser from them, applies the documented order and
returns plain values for the program's frozen settings dataclass. Secrets are never
options with values on the command line: only paths to files, or env variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

from homewatch.errors import ConfigError, HomewatchError
from homewatch.secrets import Secret, read_secret_file
from homewatch.url import BrokerURL, parse_broker_url

ENV_PREFIX = "HOMEWATCH_"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a single-line error message and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Option:
    """One setting: ``--flag`` on the command line, ``HOMEWATCH_<ENV>`` in the environment."""

    name: str
    help: str
    default: Any = None
    convert: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch (``--json``), env accepts 1/0/true/false/yes/no
    metavar: str | None = None
    choices: Sequence[str] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def cli(self) -> str:
        return "--" + self.name


def path(text: str) -> Path:
    return Path(text).expanduser()


# Options both programs have, in the place each program lists them.
URL_OPTION = Option("url", "broker URL mqtts://HOST:PORT/BASE")
CLIENT_CERT_OPTIONS = (
    Option("client-cert", "client certificate for mutual TLS (default client.crt in the "
           "identity directory, when present)", convert=path, metavar="FILE"),
    Option("client-key", "client certificate's private key", convert=path, metavar="FILE"),
)
LOG_LEVELS = ("debug", "info", "warning", "error")
COMMON_OPTIONS = (
    Option("health-file", "touch this file while connected (container health checks)",
           convert=path, metavar="FILE"),
    Option("allow-plaintext", "allow mqtt:// without TLS to a loopback broker", default=False,
           flag=True),
    Option("show-settings", "print the settings (secrets masked) and exit", default=False,
           flag=True),
    Option("log-level", "log level", default="info", choices=LOG_LEVELS),
)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use 1/0, true/false, yes/no)")


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {text}")
    return value


def build_parser(prog: str, description: str, options: Sequence[Option],
                 positional: Sequence[tuple[str, str]] = ()) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, help_text in positional:
        parser.add_argument(name, nargs="?", default=None, help=help_text)
    for opt in options:
        env_help = f" [env {opt.env}"
        env_help += f", default {opt.default}]" if opt.default not in (None, False) else "]"
        if opt.flag:
            parser.add_argument(opt.cli, action="store_const", const="1", default=None,
                                dest=opt.name, help=opt.help + env_help)
        else:
            parser.add_argument(opt.cli, dest=opt.name, default=None, metavar=opt.metavar,
                                choices=opt.choices, help=opt.help + env_help)
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    return parser


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


def resolve(options: Sequence[Option], args: argparse.Namespace,
            environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply defaults < env < CLI and convert every value; ConfigError on bad input."""
    values: dict[str, Any] = {}
    for opt in options:
        raw = getattr(args, opt.name, None)
        source = opt.cli
        if raw is None and opt.env in environ:
            raw = environ[opt.env]
            source = opt.env
        if raw is None:
            values[opt.name] = opt.default
            continue
        convert = parse_bool if opt.flag else opt.convert
        try:
            value = convert(raw)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if opt.choices is not None and value not in opt.choices:
            raise ConfigError(f"{source}: {raw!r} is not one of {', '.join(opt.choices)}")
        values[opt.name] = value
    return values


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


def default_state_dir(program: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "homewatch" / program


def describe(settings: object) -> str:
    """A settings object as ``name=value`` lines, secrets masked."""
    assert is_dataclass(settings)
    lines = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, BrokerURL):
            value = str(value)
        lines.append(f"{f.name}={value}")
    return "\n".join(lines)


class ProgramSettings(Protocol):
    @property
    def show_settings(self) -> bool: ...

    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=ProgramSettings)


def run_program(prog: str, argv: Sequence[str] | None,
                build: Callable[[Sequence[str] | None, Mapping[str, str]], S],
                body: Callable[[S], int]) -> int:
    """A program's main(): build settings, configure logging once, run ``body``, and turn
    Homewatch errors into one line on stderr and an exit code (2 settings, 1 runtime)."""

    def fail(exc: BaseException, code: int) -> int:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return code

    try:
        settings = build(argv, os.environ)
    except ConfigError as exc:
        return fail(exc, 2)
    if settings.show_settings:
        sys.stdout.write(describe(settings) + "\n")
        return 0
    setup_logging(settings.log_level)
    try:
        return body(settings)
    except ConfigError as exc:
        return fail(exc, 2)
    except HomewatchError as exc:
        return fail(exc, 1)
    except OSError as exc:
        sys.stderr.write(f"{prog}: error: {exc.filename or ''}: {exc.strerror}\n")
        return 1


def setup_logging(level: str) -> None:
    """Configure logging once, from a program's main()."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

