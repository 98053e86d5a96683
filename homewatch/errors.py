"""The error hierarchy. Third-party exceptions are translated where they enter;
only a program's ``main()`` turns these into exit codes and messages."""

from __future__ import annotations


class HomewatchError(Exception):
    """Base of every error Homewatch raises on purpose."""


class ConfigError(HomewatchError):
    """A setting, file or command-line value is wrong. Exit code 2."""


class ConnectError(HomewatchError):
    """The broker could not be reached or refused us for good. Exit code 1."""


class AuthError(ConnectError):
    """The broker refused our credentials (CONNACK not authorized)."""


class TLSError(ConnectError):
    """TLS failed: untrusted broker certificate, host name mismatch, protocol error."""


class StorageError(HomewatchError):
    """Writing the program's own output or state failed (a full or read-only disk, a
    broken output). The program stops with exit code 1 and acknowledges nothing it
    could not write, so a restart loses nothing."""


class StoppedError(HomewatchError):
    """A program stopped itself after a failure in one of its threads or tasks, so that
    Docker or systemd restarts it. Exit code 1."""

    def __init__(self, failure: Exception, consequence: str) -> None:
        what = str(failure) if isinstance(failure, HomewatchError) else (
            f"{type(failure).__name__}: {failure}")
        super().__init__(f"stopped after a failure: {what}; {consequence}")


class ProvisionError(HomewatchError):
    """Provisioning an identity failed (bad name, existing files without --force)."""


class SensorError(HomewatchError):
    """A sensor could not be read this time (missing file, CRC failure)."""


class ScannerError(HomewatchError):
    """The Bluetooth scanner failed (no adapter, BlueZ gone)."""


class EnvelopeError(HomewatchError):
    """A message was rejected by the subscriber.

    ``reason`` is a short stable word used as the rejection counter's key:
    ``decrypt``, ``malformed``, ``topic``, ``device``, ``expired``, ``future``,
    ``replay``, ``unknown-device``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
