"""Settings machinery every program shares: defaults < ``HOMEWATCH_*`` env < CLI.

Each program declares its options once (name, env variable, converter, default, help);
``resolve()`` builds the argparse parser from them, applies the documented order and
returns plain values for the program's frozen settings dataclass; ``run_program()`` is
the body of a program's ``main()``. Secrets are never options with values on the command
line: only paths to files, or env variables.

This module imports nothing that loads keys or talks MQTT, so the LAN-facing dashboard
can use it; :mod:`homewatch.config` adds what the MQTT programs need on top.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

from homewatch.errors import ConfigError, HomewatchError

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


LOG_LEVELS = ("debug", "info", "warning", "error")
HEALTH_FILE_OPTION = Option("health-file", "touch this file while connected (container health "
                            "checks)", convert=path, metavar="FILE")
SHOW_SETTINGS_OPTION = Option("show-settings", "print the settings (secrets masked) and exit",
                              default=False, flag=True)
LOG_LEVEL_OPTION = Option("log-level", "log level", default="info", choices=LOG_LEVELS)


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


def default_state_dir(program: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "homewatch" / program


def describe(settings: object) -> str:
    """A settings object as ``name=value`` lines, secrets masked (they mask themselves)."""
    assert is_dataclass(settings)
    return "\n".join(f"{f.name}={getattr(settings, f.name)}" for f in fields(settings))


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
