"""Exceptions shared by the codec, both fast-path implementations and the CLI.

Faults in what a peer sent (`PeerError` and its subclasses) are kept apart
from faults in how this program is used or configured (`UsageError`,
`ConfigError`), so callers can drop the first silently and report the second.
"""

from __future__ import annotations


class FastredirError(Exception):
    """Base class of every exception this package raises on purpose."""


class PeerError(FastredirError, ValueError):
    """A received message is invalid.

    `notify` is the RFC 7296 error notify type that names the fault, for
    callers that keep IKE state and may answer with it; the stateless
    redirector never answers an invalid message.
    """

    notify: int = 7  # INVALID_SYNTAX

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte {offset})"
        super().__init__(message)
        self.offset = offset


class TruncatedMessage(PeerError):
    """The data ends before a fixed-size field or a declared length does."""


class InvalidLength(PeerError):
    """A length field is smaller than its structure's minimum or disagrees
    with the length of what encloses it."""


class TrailingData(PeerError):
    """Bytes remain after a structure that should have used them all."""


class UnsupportedVersion(PeerError):
    """The IKE header carries a major version other than 2."""

    notify = 5  # INVALID_MAJOR_VERSION


class UnsupportedCriticalPayload(PeerError):
    """A payload of an unknown type has its critical bit set."""

    notify = 1  # UNSUPPORTED_CRITICAL_PAYLOAD


class InvalidValue(PeerError):
    """A field has a value the protocol does not allow."""


class UsageError(FastredirError, ValueError):
    """This package was called with arguments it cannot encode or use."""


class ConfigError(FastredirError):
    """A configuration file or command-line override is invalid."""
