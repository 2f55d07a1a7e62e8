"""Gateway selection: the Maglev table, its alternates and exclusion keys."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from fastredir.exceptions import UsageError
from fastredir.message import GatewayIdentity
from fastredir.selection import (
    DEFAULT_TABLE_SIZE,
    MAX_GATEWAYS,
    NO_GATEWAY,
    Gateway,
    KeyMode,
    build_alternates,
    build_table,
    client_hash,
    exclusion_key,
)


def fqdn_gateway(name: str, **options) -> Gateway:
    return Gateway(GatewayIdentity.from_text(name), **options)


def make_gateways(count: int, weights: list[int] | None = None) -> list[Gateway]:
    weights = weights or [1] * count
    return [Gateway(GatewayIdentity.from_text(f"gw{i}.example.net"), weight=weights[i]) for i in range(count)]


def slots_of(table) -> list[int]:
    return [table.gateway_at(slot) for slot in range(table.size)]


def alternates_of(table) -> list[int]:
    return [table.alternate_at(slot) for slot in range(table.size)]


@pytest.fixture(scope="module")
def five_table():
    return build_table(make_gateways(5))


# ---------------------------------------------------------------------------
# Slots
# ---------------------------------------------------------------------------


def test_default_size():
    assert DEFAULT_TABLE_SIZE == 65537


def test_every_slot_filled(five_table):
    assert five_table.size == 65537
    assert len(five_table.slots) == 2 * 65537
    counts = Counter(slots_of(five_table))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert sum(counts.values()) == 65537


@pytest.mark.parametrize("weights", [[1, 2, 3, 4], [1, 1, 100], [7, 7, 7, 7, 7, 7, 7], [65535, 1]])
def test_weights_honoured(weights):
    table = build_table(make_gateways(len(weights), weights))
    counts = Counter(slots_of(table))
    total = sum(weights)
    for index, weight in enumerate(weights):
        expected = table.size * weight / total
        # Within 3% of the weight's share, and at least one slot each.
        assert counts[index] >= 1
        assert abs(counts[index] - expected) <= max(0.03 * expected, 1), f"gateway {index}: {counts[index]} slots"


def test_single_gateway_all_slots():
    table = build_table(make_gateways(1), size=1009)
    assert set(slots_of(table)) == {0}


def test_build_repeatable():
    first = build_table(make_gateways(6, [1, 2, 3, 1, 2, 3]))
    second = build_table(make_gateways(6, [1, 2, 3, 1, 2, 3]))
    assert first == second
    assert first.slots == second.slots
    assert first.alternates == second.alternates


def test_seed_changes_table():
    first = build_table(make_gateways(4), seed=1)
    second = build_table(make_gateways(4), seed=2)
    assert first.seed == 1
    assert second.seed == 2
    assert first.slots != second.slots


def test_name_case_ignored():
    # Slot order follows the lower-cased name, as DNS names compare without case.
    lower = build_table([fqdn_gateway("a.example.net"), fqdn_gateway("b.example.net")])
    upper = build_table([fqdn_gateway("A.EXAMPLE.NET"), fqdn_gateway("b.example.net")])
    assert lower.slots == upper.slots


@pytest.mark.parametrize("count", [3, 5, 10])
def test_removal_moves_few(count):
    gateways = make_gateways(count)
    before = build_table(gateways)
    names_before = [g.name for g in gateways]
    for removed in range(count):
        remaining = [g for i, g in enumerate(gateways) if i != removed]
        after = build_table(remaining)
        kept = moved = 0
        for slot in range(before.size):
            owner = before.gateway_at(slot)
            if owner == removed:
                continue
            kept += 1
            if remaining[after.gateway_at(slot)].name != names_before[owner]:
                moved += 1
        assert moved / kept <= 1.2 / count, f"removing gateway {removed} of {count} moved {moved} of {kept}"


def test_removed_gateway_slots_reassigned():
    gateways = make_gateways(4)
    after = build_table(gateways[:3])
    assert set(slots_of(after)) == {0, 1, 2}


# ---------------------------------------------------------------------------
# Alternates
# ---------------------------------------------------------------------------


def test_alternates_differ(five_table):
    slots = slots_of(five_table)
    alternates = alternates_of(five_table)
    for slot in range(five_table.size):
        assert alternates[slot] != slots[slot], f"slot {slot}"
        assert alternates[slot] < 5, f"slot {slot}"


def nearest_different(slots: list[int], slot: int) -> int:
    for step in range(1, len(slots)):
        candidate = slots[(slot + step) % len(slots)]
        if candidate != slots[slot]:
            return candidate
    return NO_GATEWAY


@pytest.mark.parametrize("size", [13, 101, 1009])
def test_alternates_nearest_following(size):
    table = build_table(make_gateways(3, [1, 5, 2]), size=size)
    slots = slots_of(table)
    alternates = alternates_of(table)
    for slot in range(size):
        assert alternates[slot] == nearest_different(slots, slot), f"slot {slot}"


def test_alternates_two_gateways():
    table = build_table(make_gateways(2, [1, 50]), size=1009)
    slots = slots_of(table)
    for slot, alternate in enumerate(alternates_of(table)):
        assert alternate == 1 - slots[slot]


def test_alternates_one_gateway():
    table = build_table(make_gateways(1), size=1009)
    assert set(alternates_of(table)) == {NO_GATEWAY}


@pytest.mark.parametrize(
    "slots, expected",
    [
        ([0, 0, 1, 1, 2], [1, 1, 2, 2, 0]),
        ([0, 1], [1, 0]),
        ([2, 2, 2], [NO_GATEWAY] * 3),
        ([1, 0, 0, 0], [0, 1, 1, 1]),
        ([5], [NO_GATEWAY]),
        ([], []),
    ],
)
def test_build_alternates_cases(slots, expected):
    assert build_alternates(slots) == expected


def test_empty_table():
    table = build_table([])
    assert table.size == 0
    assert table.gateways == ()
    assert table.exclusions == ()


# ---------------------------------------------------------------------------
# Exclusion keys
# ---------------------------------------------------------------------------


def test_exclusion_key_fqdn_lower():
    # Type octet 3 (FQDN, RFC 5685 section 9) and the name in lower case.
    assert exclusion_key(GatewayIdentity.from_text("VPN.Example.NET")) == b"\x03vpn.example.net"


def test_exclusion_key_addresses():
    assert exclusion_key(GatewayIdentity.from_text("192.0.2.1")) == b"\x01\xc0\x00\x02\x01"
    v6 = ipaddress.IPv6Address("2001:db8::1")
    assert exclusion_key(GatewayIdentity.from_text("2001:DB8::1")) == b"\x02" + v6.packed


def test_exclusions_table():
    gateways = [
        fqdn_gateway("VPN.Example.NET", aliases=(GatewayIdentity.from_text("198.51.100.3"),)),
        Gateway(GatewayIdentity.from_text("2001:db8::11")),
    ]
    table = build_table(gateways, size=1009)
    expected = {
        b"\x01" + bytes((198, 51, 100, 3)): 0,
        b"\x02" + ipaddress.IPv6Address("2001:db8::11").packed: 1,
        b"\x03vpn.example.net": 0,
    }
    assert dict(table.exclusions) == expected
    assert list(table.exclusions) == sorted(table.exclusions)


def test_exclusion_shared_alias_first():
    # Two gateways claiming one address: the first gateway keeps it.
    shared = GatewayIdentity.from_text("198.51.100.7")
    gateways = [
        Gateway(GatewayIdentity.from_text("a.example.net"), aliases=(shared,)),
        Gateway(GatewayIdentity.from_text("b.example.net"), aliases=(shared,)),
    ]
    table = build_table(gateways, size=1009)
    assert dict(table.exclusions)[b"\x01" + shared.raw] == 0


def test_encoded_identities():
    gateways = [Gateway(GatewayIdentity.from_text("192.0.2.11")), fqdn_gateway("Vpn.Example.Net")]
    table = build_table(gateways, size=1009)
    # RFC 5685 section 9: GW Ident Type, GW Ident Len and the identity.
    # The name keeps its case on the wire.
    assert table.encoded_identities() == [b"\x01\x04\xc0\x00\x02\x0b", b"\x03\x0fVpn.Example.Net"]


# ---------------------------------------------------------------------------
# Invalid input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4, 1000, 65536, 4294967311])
def test_invalid_size(size):
    with pytest.raises(UsageError):
        build_table(make_gateways(2), size=size)


@pytest.mark.parametrize("weight", [0, -1, 65536])
def test_invalid_weight(weight):
    with pytest.raises(UsageError):
        build_table(make_gateways(2, [1, weight]), size=1009)


def test_duplicate_names():
    gateways = [fqdn_gateway("a.example.net"), fqdn_gateway("A.Example.Net")]
    with pytest.raises(UsageError):
        build_table(gateways, size=1009)


def test_too_many_gateways():
    addresses = [ipaddress.IPv4Address(0x0A000000 + i) for i in range(MAX_GATEWAYS + 1)]
    gateways = [Gateway(GatewayIdentity.from_address(address)) for address in addresses]
    with pytest.raises(UsageError):
        build_table(gateways, size=65537)


def test_small_prime_sizes():
    for size in (2, 3, 5, 7):
        table = build_table(make_gateways(2), size=size)
        assert table.size == size
        assert set(slots_of(table)) <= {0, 1}


# ---------------------------------------------------------------------------
# Clients over the table
# ---------------------------------------------------------------------------


def test_key_mode_stored():
    table = build_table(make_gateways(2), size=1009, key_mode=KeyMode.ADDRESS_SPI)
    assert table.key_mode == KeyMode.ADDRESS_SPI


def test_clients_spread_by_weight():
    weights = [1, 2, 3, 4]
    table = build_table(make_gateways(4, weights))
    counts = Counter()
    clients = 40000
    for i in range(clients):
        address = ipaddress.IPv4Address(0x0A000000 + i).packed
        counts[table.gateway_at(client_hash(address, table.seed) % table.size)] += 1
    for index, weight in enumerate(weights):
        expected = clients * weight / sum(weights)
        assert abs(counts[index] - expected) <= 0.05 * expected, f"gateway {index}: {counts[index]} clients"
