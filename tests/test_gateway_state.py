"""Gateway choice with state: health and drain (USABLE), high-water marks
(ROOM), anycast gateways and load scores, in both fast paths."""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastredir import _fastpath, fallback
from fastredir.message import GatewayIdentity
from fastredir.selection import (
    ANYCAST,
    NO_GATEWAY,
    ROOM,
    USABLE,
    Gateway,
    GatewayState,
    build_table,
)
from fastredir.verdict import Verdict
from tests.captures import read_capture

REQUEST = read_capture("strongswan-v4-x25519.request.pcap")[0].payload
NAMES = ["192.0.2.11", "192.0.2.12", "192.0.2.13", "2001:db8::14", "gw5.example.net", "gw6.example.net"]


def table_with(count: int, flags, scores, overflow: bool = False, size: int = 1009):
    gateways = [Gateway(GatewayIdentity.from_text(name)) for name in NAMES[:count]]
    table = build_table(gateways, size=size)
    state = GatewayState.make(flags, scores, overflow)
    return table, state


def compile_both(table, state):
    compiled = []
    for module in (_fastpath, fallback):
        one = module.compile_table(table)
        one.update_state(state)
        compiled.append((module, one))
    return compiled


def addresses(count: int):
    return [ipaddress.IPv4Address(0xC6336400 + i).packed for i in range(count)]  # 198.51.100.0 up


def redirected_from(name: str) -> bytes:
    """REQUEST with REDIRECTED_FROM (RFC 5685 section 9.3) naming the IPv4
    address `name` appended as its last payload."""
    data = bytes((1, 4)) + ipaddress.IPv4Address(name).packed
    body = bytes((0, 0)) + struct.pack("!H", 16408) + data
    # The request's last payload is N(REDIRECT_SUPPORTED); find it to chain.
    position = 28
    while True:
        following = REQUEST[position]
        length = struct.unpack_from("!H", REQUEST, position + 2)[0]
        if following == 0:
            break
        position += length
    message = bytearray(REQUEST)
    message[position] = 41  # the old last payload is now followed by a Notify
    message += struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    struct.pack_into("!I", message, 24, len(message))
    return bytes(message)


def choose_all(table, state, datagram=REQUEST, count=400, unicast_only=False):
    """Run `count` clients through both implementations; return the
    verdicts and gateways, after checking that the two agree."""
    results = []
    for address in addresses(count):
        outcomes = [
            module.process(compiled, datagram, False, address, 500, unicast_only)
            for module, compiled in compile_both(table, state)
        ]
        assert outcomes[0] == outcomes[1]
        results.append((outcomes[0][0], outcomes[0][2]))
    return results


ALL = USABLE | ROOM


def test_equal_scores_follow_the_table():
    table, state = table_with(3, [ALL] * 3, [0, 0, 0])
    for address, (verdict, gateway) in zip(addresses(400), choose_all(table, state)):
        slot = fallback.client_hash(address, table.seed) % table.size
        assert verdict == Verdict.REDIRECTED
        assert gateway == table.gateway_at(slot)


def test_less_loaded_candidate_wins():
    table, state = table_with(3, [ALL] * 3, [0, 0, 1000])
    for address, (_, gateway) in zip(addresses(400), choose_all(table, state)):
        slot = fallback.client_hash(address, table.seed) % table.size
        candidates = {table.gateway_at(slot), table.alternate_at(slot)}
        if 2 in candidates:
            assert gateway == (candidates - {2}).pop()


def test_full_gateway_gets_no_clients():
    table, state = table_with(3, [ALL, USABLE, ALL], [10, 0, 10])
    chosen = Counter(gateway for _, gateway in choose_all(table, state))
    assert chosen[1] == 0
    assert chosen[0] > 0
    assert chosen[2] > 0


def test_unusable_gateway_gets_no_clients():
    table, state = table_with(3, [ALL, ROOM, ALL], [0, 0, 0])
    chosen = Counter(gateway for _, gateway in choose_all(table, state))
    assert chosen[1] == 0


def test_both_candidates_full_use_spare():
    # Gateways 0 and 1 are full; every client that hashes to them goes to 2.
    table, state = table_with(3, [USABLE, USABLE, ALL], [5, 5, 9])
    results = choose_all(table, state)
    assert {gateway for _, gateway in results} == {2}


def test_all_full_dropped():
    table, state = table_with(3, [USABLE] * 3, [5, 1, 9], overflow=False)
    assert {verdict for verdict, _ in choose_all(table, state)} == {Verdict.ALL_FULL}


def test_all_full_overflow_least_loaded():
    table, state = table_with(3, [USABLE] * 3, [5, 1, 9], overflow=True)
    results = choose_all(table, state)
    assert {verdict for verdict, _ in results} == {Verdict.REDIRECTED_OVERFLOW}
    assert {gateway for _, gateway in results} == {1}


def test_none_usable_no_gateway():
    table, state = table_with(3, [ROOM] * 3, [0, 0, 0], overflow=True)
    assert {verdict for verdict, _ in choose_all(table, state)} == {Verdict.NO_GATEWAY}


def test_anycast_listener_skips_anycast_gateway():
    table, state = table_with(3, [ALL | ANYCAST, ALL, ALL], [0, 0, 0])
    on_anycast = Counter(gateway for _, gateway in choose_all(table, state, unicast_only=True))
    on_unicast = Counter(gateway for _, gateway in choose_all(table, state, unicast_only=False))
    assert on_anycast[0] == 0
    assert on_unicast[0] > 0


def test_only_anycast_gateways_on_anycast_listener():
    table, state = table_with(2, [ALL | ANYCAST] * 2, [0, 0])
    verdicts = {verdict for verdict, _ in choose_all(table, state, unicast_only=True)}
    assert verdicts == {Verdict.NO_GATEWAY}


def test_redirected_from_never_chosen_through_spares():
    # Gateway 0 is named in REDIRECTED_FROM and is the least loaded spare;
    # 1 and 2 are full, so every client lands on a spare or overflow.
    table, state = table_with(3, [ALL, USABLE, USABLE], [0, 5, 9], overflow=True)
    results = choose_all(table, state, datagram=redirected_from("192.0.2.11"))
    assert 0 not in {gateway for _, gateway in results}
    assert {verdict for verdict, _ in results} == {Verdict.REDIRECTED_OVERFLOW}


def test_spares_ordered_by_score():
    state = GatewayState.make([ALL, ALL, USABLE, ALL | ANYCAST], [7, 3, 1, 0])
    assert state.spares[0] == (3, 1, 3, 2)
    assert state.spares[1] == (1, 0, 2, 1)
    lonely = GatewayState.make([ALL], [0])
    assert lonely.spares[0] == (0, NO_GATEWAY, 0, NO_GATEWAY)


flag_values = st.integers(0, 7)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 6),
    data=st.data(),
    overflow=st.booleans(),
    unicast_only=st.booleans(),
    exclude=st.sampled_from([None, "192.0.2.11", "192.0.2.12", "198.51.100.7"]),
    client=st.integers(0, 2**32 - 1),
)
def test_twins_agree_on_any_state(count, data, overflow, unicast_only, exclude, client):
    flags = data.draw(st.lists(flag_values, min_size=count, max_size=count))
    scores = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=count, max_size=count))
    table, state = table_with(count, flags, scores, overflow, size=101 if count <= 1 else 1009)
    datagram = REQUEST if exclude is None else redirected_from(exclude)
    address = ipaddress.IPv4Address(client).packed
    outcomes = [
        module.process(compiled, datagram, False, address, 500, unicast_only)
        for module, compiled in compile_both(table, state)
    ]
    assert outcomes[0] == outcomes[1]
    verdict, reply, gateway = outcomes[0]
    if gateway != NO_GATEWAY:
        assert flags[gateway] & USABLE
        assert not (unicast_only and flags[gateway] & ANYCAST)
        if exclude is not None:
            assert str(table.gateways[gateway].identity) != exclude
        if verdict == Verdict.REDIRECTED:
            assert flags[gateway] & ROOM
