"""The request the load generator replays: strongSwan 5.9.8's recorded
IKE_SA_INIT (Curve25519 key exchange, N(REDIRECT_SUPPORTED))."""

from __future__ import annotations

import pathlib
import struct

CAPTURE = "strongswan-v4-x25519.request.pcap"
HEADER_LENGTH = 28
PAYLOAD_NONCE = 40
# A REDIRECT naming an IPv4 gateway and echoing this request's 32-byte
# nonce: header, notify header, identity type and length, address, nonce.
ANSWER_LENGTH = 28 + 8 + 2 + 4 + 32


def load_request() -> bytes:
    """Return the recorded request (needs dpkt, from the test extras)."""
    try:
        from tests.captures import read_capture
    except ImportError as exc:
        raise RuntimeError(
            f"cannot read the recorded request ({exc}); run from the repository root "
            "with the test extras installed: pip install -e '.[test]'"
        ) from None
    return read_capture(CAPTURE)[0].payload


def nonce_span(message: bytes) -> tuple[int, int]:
    """Return the offset and length of the Nonce data in `message`."""
    next_payload = message[16]
    position = HEADER_LENGTH
    while next_payload != 0:
        following, _, length = struct.unpack_from("!BBH", message, position)
        if next_payload == PAYLOAD_NONCE:
            return position + 4, length - 4
        next_payload = following
        position += length
    raise ValueError("the request carries no Nonce payload")


def with_spi(message: bytes, spi: bytes) -> bytes:
    """Return `message` with its initiator SPI replaced by `spi` (8 bytes)."""
    return spi + message[8:]


def write_template(directory: pathlib.Path) -> tuple[pathlib.Path, int, int]:
    """Write the request to a file and return (path, nonce offset, nonce length)."""
    message = load_request()
    offset, length = nonce_span(message)
    path = directory / "request.bin"
    path.write_bytes(message)
    return path, offset, length
