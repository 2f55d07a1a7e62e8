"""Gateway selection: the lookup table the fast path indexes.

Python builds the table; both fast-path implementations only index it, so
there is no Python call per packet.  The table is a Maglev table (Eisenbud
et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
NSDI 2016): `size` slots, a prime, each holding a gateway index.  Each
gateway fills slots in the order of its own permutation of the slots, so
the table depends only on the gateway names, weights and the seed.  Two
nodes with the same configuration therefore build the same table, and
removing a gateway moves few clients that were not on it.

A client's slot is `client_hash(key) % size`.  The key is the client's
address (4 or 16 bytes), followed by the initiator SPI when the key mode
is "address+spi".  Beside each slot the table keeps an alternate: the
gateway of the nearest following slot that holds a different gateway.  A
client that must not go to the slot's gateway (REDIRECTED_FROM names it)
goes to the alternate, in constant time whatever the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Sequence

from fastredir.exceptions import UsageError
from fastredir.ikev2 import GatewayIdentityType
from fastredir.message import GatewayIdentity

DEFAULT_TABLE_SIZE = 65537
DEFAULT_SEED = 0x6661737472656469  # "fastredi"
MAX_GATEWAYS = 4096
NO_GATEWAY = 0xFFFF

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


class KeyMode(IntEnum):
    ADDRESS = 0
    ADDRESS_SPI = 1


def client_hash(key: bytes, seed: int) -> int:
    """Hash `key` to 64 bits: FNV-1a seeded with `seed`, then the
    MurmurHash3 fmix64 finalizer to spread the low bits.

    The Cython fast path computes the same function; tests compare them.
    """
    h = (_FNV_OFFSET ^ seed) & _MASK64
    for byte in key:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    h ^= h >> 33
    return h


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


@dataclass(frozen=True)
class Gateway:
    """A redirect target: its identity, weight and the addresses that
    REDIRECTED_FROM may name it by (its own address, if it is one).

    `counter_id` names the gateway's counters; it stays the same across
    table rebuilds while the gateway index in a table does not.
    """

    identity: GatewayIdentity
    weight: int = 1
    aliases: tuple[GatewayIdentity, ...] = ()
    anycast: bool = False
    counter_id: int = -1  # -1: the gateway's index in the table

    @property
    def name(self) -> str:
        return str(self.identity)

    def match_keys(self) -> list[bytes]:
        """Return the keys under which REDIRECTED_FROM names this gateway."""
        return [exclusion_key(i) for i in (self.identity, *self.aliases)]


def normalize_fqdn(raw: bytes) -> bytes:
    """Return a DNS name in the form names are compared in: lower case
    (RFC 4343) and without the trailing dot of the root."""
    raw = raw.lower()
    return raw[:-1] if raw.endswith(b".") else raw


def exclusion_key(identity: GatewayIdentity) -> bytes:
    """Return type octet + identity bytes, FQDNs normalized."""
    raw = identity.raw
    if identity.type == GatewayIdentityType.FQDN:
        raw = normalize_fqdn(raw)
    return bytes((identity.type,)) + raw


# Bits of GatewayState.flags, one byte per gateway.
USABLE = 0x01  # up and not drained
ROOM = 0x02  # below its high-water mark
ANYCAST = 0x04  # an anycast address: never a target from an anycast listener
MAX_SCORE = 0xFFFFFFFF


@dataclass(frozen=True)
class GatewayState:
    """What changes without a table rebuild: per-gateway flags and load
    scores (lower is less loaded, up to MAX_SCORE), and what to do when
    no candidate has room.

    `spares[u]` holds, for unicast_only u = 0 or 1, the two least-loaded
    usable gateways with room and then the two least-loaded usable
    gateways regardless of room (NO_GATEWAY where there are fewer), for
    clients whose table candidates cannot take them.
    """

    flags: bytes
    scores: tuple[int, ...]
    overflow_least_loaded: bool = False
    spares: tuple[tuple[int, int, int, int], tuple[int, int, int, int]] = (
        (NO_GATEWAY,) * 4,
        (NO_GATEWAY,) * 4,
    )

    @classmethod
    def make(cls, flags: Sequence[int], scores: Sequence[int], overflow_least_loaded: bool = False) -> GatewayState:
        """Build a state and its spares from per-gateway flags and scores."""
        if len(flags) != len(scores):
            raise UsageError("flags and scores must have one entry per gateway")
        scores = tuple(min(max(int(s), 0), MAX_SCORE) for s in scores)
        spares = []
        for unicast_only in (False, True):
            allowed = [
                index
                for index, flag in enumerate(flags)
                if flag & USABLE and not (unicast_only and flag & ANYCAST)
            ]
            allowed.sort(key=lambda index: (scores[index], index))
            with_room = [index for index in allowed if flags[index] & ROOM]
            pick = (with_room + [NO_GATEWAY] * 2)[:2] + (allowed + [NO_GATEWAY] * 2)[:2]
            spares.append(tuple(pick))
        return cls(bytes(flags), scores, overflow_least_loaded, (spares[0], spares[1]))  # type: ignore[arg-type]

    @classmethod
    def all_usable(cls, gateways: Sequence[Gateway]) -> GatewayState:
        flags = [USABLE | ROOM | (ANYCAST if g.anycast else 0) for g in gateways]
        return cls.make(flags, [0] * len(gateways))


@dataclass(frozen=True)
class GatewayTable:
    """The data both fast paths index: gateways, slots, exclusion keys and
    the gateways' current state."""

    gateways: tuple[Gateway, ...]
    slots: bytes  # `size` little-endian uint16 gateway indexes
    alternates: bytes  # `size` little-endian uint16, NO_GATEWAY if none
    size: int
    seed: int
    key_mode: KeyMode
    exclusions: tuple[tuple[bytes, int], ...]  # sorted (key, gateway index)
    state: GatewayState | None = None  # None: every gateway usable with room

    def current_state(self) -> GatewayState:
        return self.state if self.state is not None else GatewayState.all_usable(self.gateways)

    def counter_ids(self) -> list[int]:
        return [g.counter_id if g.counter_id >= 0 else index for index, g in enumerate(self.gateways)]

    def gateway_at(self, slot: int) -> int:
        return int.from_bytes(self.slots[2 * slot : 2 * slot + 2], "little")

    def alternate_at(self, slot: int) -> int:
        return int.from_bytes(self.alternates[2 * slot : 2 * slot + 2], "little")

    def encoded_identities(self) -> list[bytes]:
        return [g.identity.encode() for g in self.gateways]


def _permutation(name: str, size: int, seed: int) -> tuple[int, int]:
    raw = name.lower().encode("ascii")
    offset = client_hash(raw, seed ^ 0x1) % size
    skip = client_hash(raw, seed ^ 0x2) % (size - 1) + 1
    return offset, skip


def build_slots(names: Sequence[str], weights: Sequence[int], size: int, seed: int) -> list[int]:
    """Fill a Maglev table of `size` slots; gateway i gets a share of the
    slots proportional to weights[i]."""
    count = len(names)
    if count == 0:
        return []
    permutations = [_permutation(n, size, seed) for n in names]
    next_index = [0] * count
    credit = [0] * count
    max_weight = max(weights)
    table = [-1] * size
    filled = 0
    while True:
        for i in range(count):
            credit[i] += weights[i]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            offset, skip = permutations[i]
            slot = (offset + next_index[i] * skip) % size
            while table[slot] >= 0:
                next_index[i] += 1
                slot = (offset + next_index[i] * skip) % size
            table[slot] = i
            next_index[i] += 1
            filled += 1
            if filled == size:
                return table


def build_alternates(slots: Sequence[int]) -> list[int]:
    """Return, for each slot, the gateway of the nearest following slot
    (cyclically) that differs from it, or NO_GATEWAY when all are equal."""
    size = len(slots)
    alternates = [NO_GATEWAY] * size
    # Start just after a boundary between two different gateways and walk
    # backwards once around, carrying the last different gateway seen.
    start = next((s for s in range(size) if slots[s] != slots[s - 1]), None)
    if start is None:
        return alternates
    last_different = NO_GATEWAY
    following = slots[start]
    for step in range(1, size + 1):
        slot = (start - step) % size
        if slots[slot] != following:
            last_different = following
        alternates[slot] = last_different
        following = slots[slot]
    return alternates


def _pack(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(2, "little") for v in values)


def build_table(
    gateways: Sequence[Gateway],
    *,
    size: int = DEFAULT_TABLE_SIZE,
    seed: int = DEFAULT_SEED,
    key_mode: KeyMode = KeyMode.ADDRESS,
) -> GatewayTable:
    """Build the lookup table for `gateways` (which may be empty)."""
    if not is_prime(size) or size > 0xFFFFFFFF:
        raise UsageError(f"table size must be a prime below 2**32, not {size}")
    if len(gateways) > MAX_GATEWAYS:
        raise UsageError(f"at most {MAX_GATEWAYS} gateways, not {len(gateways)}")
    names = [g.name for g in gateways]
    if len({exclusion_key(g.identity) for g in gateways}) != len(names):
        raise UsageError("gateway names must be unique")
    for gateway in gateways:
        if not 1 <= gateway.weight <= 0xFFFF:
            raise UsageError(f"gateway {gateway.name}: weight must be 1 to 65535")
    slots = build_slots(names, [g.weight for g in gateways], size, seed)
    exclusions: dict[bytes, int] = {}
    for index, gateway in enumerate(gateways):
        for key in gateway.match_keys():
            exclusions.setdefault(key, index)
    return GatewayTable(
        gateways=tuple(gateways),
        slots=_pack(slots),
        alternates=_pack(build_alternates(slots)),
        size=size if gateways else 0,
        seed=seed & _MASK64,
        key_mode=key_mode,
        exclusions=tuple(sorted(exclusions.items())),
    )
