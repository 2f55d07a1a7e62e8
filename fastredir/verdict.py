"""What the fast path decided about one datagram.

Every received datagram gets exactly one verdict, so the per-verdict
counters add up to the datagrams received.  The numbers are part of the
contract between the two fast-path implementations; `_fastpath.pyx`
declares the same values and a test compares them.
"""

from __future__ import annotations

import enum


class Verdict(enum.IntEnum):
    REDIRECTED = 0  # a REDIRECT was built (and, in a socket loop, sent)
    TRUNCATED = 1  # shorter than the IKE header
    ESP = 2  # on port 4500 without the non-ESP marker: ESP, not IKE
    NAT_KEEPALIVE = 3  # the one-byte NAT-T keepalive
    BAD_SOURCE = 4  # source port 0, or an address no reply may go to
    UNSUPPORTED_VERSION = 5  # IKE major version other than 2 (IKEv1 too)
    LENGTH_MISMATCH = 6  # header Length differs from the datagram length
    SLOW_PATH = 7  # a well-framed message for the Python slow path
    UNSUPPORTED_EXCHANGE = 8  # an exchange type nothing here handles
    RESPONSE = 9  # an IKE_SA_INIT response
    NOT_INITIATOR = 10  # an IKE_SA_INIT request without the Initiator flag
    INVALID_SPI = 11  # initiator SPI zero or responder SPI non-zero
    INVALID_MESSAGE_ID = 12  # IKE_SA_INIT with a non-zero Message ID
    MALFORMED = 13  # a payload length under- or overruns, or trailing bytes
    UNSUPPORTED_CRITICAL = 14  # unknown payload with the critical bit
    INVALID_NONCE = 15  # no Nonce, more than one, or not 16 to 256 bytes
    INVALID_NOTIFY = 16  # a malformed or repeated REDIRECTED_FROM
    REDIRECT_NOT_SUPPORTED = 17  # neither REDIRECT_SUPPORTED nor REDIRECTED_FROM
    NO_GATEWAY = 18  # no gateway may take this client
    REPLY_TOO_LONG = 19  # the REDIRECT would be longer than the request
    OVERSIZE = 20  # larger than the receive buffer (socket loops only)
    SEND_FAILED = 21  # the kernel refused the reply (socket loops only)
    SLOW_PATH_FULL = 22  # slow-path queue full (socket loops only)
    ALL_FULL = 23  # every gateway that may take the client is full
    REDIRECTED_OVERFLOW = 24  # all full, sent to the least loaded anyway

    @property
    def is_answer(self) -> bool:
        return self in (Verdict.REDIRECTED, Verdict.REDIRECTED_OVERFLOW)

    @property
    def label(self) -> str:
        """The counter name used in logs and metrics."""
        return self.name.lower()


VERDICT_COUNT = len(Verdict)
