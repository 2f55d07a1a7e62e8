"""Tests of the bounded Reader and the Writer in fastredir.wire."""

from __future__ import annotations

import struct

import pytest

from fastredir.exceptions import PeerError, TrailingData, TruncatedMessage
from fastredir.wire import Reader, Writer

# Each pull method with the number of bytes it consumes.
PULLS = [
    ("pull_uint8", lambda reader: reader.pull_uint8(), 1),
    ("pull_uint16", lambda reader: reader.pull_uint16(), 2),
    ("pull_uint32", lambda reader: reader.pull_uint32(), 4),
    ("pull_bytes(3)", lambda reader: reader.pull_bytes(3), 3),
]


def test_reader_pulls_network_order():
    reader = Reader(bytes.fromhex("01 0203 04050607 08090a"))

    assert reader.pull_uint8() == 0x01
    assert reader.pull_uint16() == 0x0203
    assert reader.pull_uint32() == 0x04050607
    assert reader.pull_bytes(2) == b"\x08\x09"
    assert reader.position == 9
    assert reader.remaining == 1
    assert reader.pull_rest() == b"\x0a"
    assert reader.remaining == 0
    reader.expect_end()


@pytest.mark.parametrize("name, pull, size", PULLS, ids=[p[0] for p in PULLS])
def test_reader_pull_at_boundary(name, pull, size):
    # With one byte too few the pull raises and leaves the cursor in place;
    # with exactly enough it succeeds and reaches the end.
    short = Reader(bytes(size - 1))
    with pytest.raises(TruncatedMessage):
        pull(short)
    assert short.position == 0
    assert short.remaining == size - 1

    exact = Reader(bytes(size))
    pull(exact)
    assert exact.remaining == 0
    with pytest.raises(TruncatedMessage):
        pull(exact)


@pytest.mark.parametrize("name, pull, size", PULLS, ids=[p[0] for p in PULLS])
def test_reader_respects_explicit_end(name, pull, size):
    # The bytes after `end` exist in the buffer but must stay out of reach.
    data = bytes(range(1, 20))
    reader = Reader(data, start=2, end=2 + size - 1)
    with pytest.raises(TruncatedMessage):
        pull(reader)


def test_reader_truncation_is_peer_error():
    with pytest.raises(PeerError) as caught:
        Reader(b"\x01", what="test data").pull_uint16("the field")

    message = str(caught.value)
    assert "test data" in message
    assert "the field" in message
    assert caught.value.offset == 0


def test_reader_pull_bytes_copies_exactly():
    data = bytearray(b"abcdef")
    reader = Reader(data)
    copied = reader.pull_bytes(3)
    data[0:3] = b"xyz"

    assert isinstance(copied, bytes)
    assert copied == b"abc"


def test_reader_pull_zero_bytes_at_end():
    reader = Reader(b"ab")
    reader.pull_bytes(2)

    assert reader.pull_bytes(0) == b""
    assert reader.pull_rest() == b""


def test_sub_reader_bounds():
    data = bytes.fromhex("aa 0102 0304 bb")
    outer = Reader(data)
    assert outer.pull_uint8() == 0xAA

    inner = outer.sub_reader(4, "inner part")
    assert outer.position == 5
    assert inner.position == 1
    assert inner.remaining == 4
    assert inner.pull_uint16() == 0x0102
    assert inner.pull_uint16() == 0x0304
    with pytest.raises(TruncatedMessage) as caught:
        inner.pull_uint8()
    assert "inner part" in str(caught.value)
    inner.expect_end()

    # The outer reader continues after the sub-reader's bytes.
    assert outer.pull_uint8() == 0xBB
    outer.expect_end()


def test_sub_reader_longer_than_rest():
    reader = Reader(bytes(5))
    reader.pull_uint8()

    with pytest.raises(TruncatedMessage):
        reader.sub_reader(5, "part")
    assert reader.position == 1
    assert reader.sub_reader(4, "part").remaining == 4


def test_sub_reader_pull_rest_stays_inside():
    reader = Reader(b"12345678")
    inner = reader.sub_reader(3, "part")

    assert inner.pull_rest() == b"123"
    assert reader.pull_rest() == b"45678"


def test_expect_end_raises_trailing_data():
    reader = Reader(b"\x01\x02\x03", what="test data")
    reader.pull_uint8()

    with pytest.raises(TrailingData) as caught:
        reader.expect_end()
    assert caught.value.offset == 1
    assert "2 unexpected bytes" in str(caught.value)
    assert "test data" in str(caught.value)


def test_expect_end_in_sub_reader():
    reader = Reader(b"\x01\x02\x03\x04")
    inner = reader.sub_reader(2, "part")
    inner.pull_uint8()

    with pytest.raises(TrailingData):
        inner.expect_end()


def test_writer_round_trip():
    writer = Writer()
    writer.push_uint8(0xFE)
    writer.push_uint16(0xBEEF)
    writer.push_uint32(0xDEADBEEF)
    writer.push_bytes(b"xyz")

    data = writer.getvalue()
    assert data == bytes.fromhex("fe beef deadbeef 78797a")
    assert len(writer) == len(data)

    reader = Reader(data)
    assert reader.pull_uint8() == 0xFE
    assert reader.pull_uint16() == 0xBEEF
    assert reader.pull_uint32() == 0xDEADBEEF
    assert reader.pull_bytes(3) == b"xyz"
    reader.expect_end()


def test_writer_patch_fields():
    writer = Writer()
    writer.push_uint32(0)
    writer.push_uint16(0)
    writer.push_uint8(7)
    writer.patch_uint32(0, 0x01020304)
    writer.patch_uint16(4, 0x0506)

    assert writer.getvalue() == bytes.fromhex("01020304 0506 07")


@pytest.mark.parametrize(
    "push, value",
    [("push_uint8", 256), ("push_uint8", -1), ("push_uint16", 0x10000), ("push_uint32", 1 << 32)],
)
def test_writer_rejects_out_of_range(push, value):
    # Only rejection is checked: silently wrapping the value would corrupt
    # the message.
    writer = Writer()

    with pytest.raises((ValueError, OverflowError, struct.error)):
        getattr(writer, push)(value)
    assert writer.getvalue() == b""
