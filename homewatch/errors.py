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
