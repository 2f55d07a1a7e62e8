"""IKEv2 protocol numbers (RFC 7296 and RFC 5685), named as the RFCs name them.

The enums are open: decoders keep a value they do not know as a plain int,
because a peer may send private-use or newer values.
"""

from __future__ import annotations

import enum

IKE_HEADER_LENGTH = 28
GENERIC_PAYLOAD_HEADER_LENGTH = 4
NOTIFY_HEADER_LENGTH = 8  # generic header + Protocol ID, SPI Size, type
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
IKE_PORT = 500
NAT_T_PORT = 4500

MAJOR_VERSION = 2
# RFC 7296 section 3.9: a nonce is 16 to 256 octets.
NONCE_MIN_LENGTH = 16
NONCE_MAX_LENGTH = 256
# RFC 5685 section 9: the identity length is one octet.
FQDN_MAX_LENGTH = 255

FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20
CRITICAL_BIT = 0x80


class ExchangeType(enum.IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    IKE_SESSION_RESUME = 38  # RFC 5723
    IKE_INTERMEDIATE = 43  # RFC 9242
    IKE_FOLLOWUP_KE = 44  # RFC 9370


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    GSPM = 49  # RFC 6467
    SKF = 53  # RFC 7383
    PS = 54  # RFC 8019


# Payload types this implementation recognizes.  RFC 7296 section 2.5: an
# unrecognized payload with the critical bit set makes the message invalid.
KNOWN_PAYLOAD_TYPES = frozenset(int(p) for p in PayloadType if p != PayloadType.NONE)


class NotifyType(enum.IntEnum):
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    TEMPORARY_FAILURE = 43
    INITIAL_CONTACT = 16384
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    REDIRECT_SUPPORTED = 16406
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431


class GatewayIdentityType(enum.IntEnum):
    """RFC 5685 section 9: Gateway Identity Types."""

    IPV4 = 1
    IPV6 = 2
    FQDN = 3


def name_of(enum_class: type[enum.IntEnum], value: int) -> str:
    """Return the RFC name of `value`, or the number for an unknown value."""
    try:
        return enum_class(value).name
    except ValueError:
        return str(value)
