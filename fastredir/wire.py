"""Bounded reading and plain writing of network-order fields.

A `Reader` never reads past the end it was given: every read that would
cross it raises `TruncatedMessage`.  `Reader.sub_reader(n)` takes the next
`n` bytes as a reader of their own, so each payload is parsed inside its
declared length, and `Reader.expect_end()` checks that a structure used
every byte it declared.
"""

from __future__ import annotations

import struct

from fastredir.exceptions import TrailingData, TruncatedMessage, UsageError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Reader:
    """A cursor over `data[start:end]`."""

    __slots__ = ("_data", "_pos", "_end", "_what")

    def __init__(
        self, data: bytes | memoryview, start: int = 0, end: int | None = None, what: str = "message"
    ) -> None:
        self._data = memoryview(data)
        self._pos = start
        self._end = len(self._data) if end is None else end
        self._what = what
        if not 0 <= start <= self._end <= len(self._data):
            raise UsageError(f"reader bounds {start}..{self._end} lie outside the {len(self._data)} bytes")

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _take(self, n: int, field: str) -> int:
        if n < 0:
            raise UsageError(f"cannot read {n} bytes")
        if n > self._end - self._pos:
            raise TruncatedMessage(
                f"{self._what} ends before {field}: {n} bytes needed, {self.remaining} left",
                offset=self._pos,
            )
        start = self._pos
        self._pos += n
        return start

    def pull_uint8(self, field: str = "a 1-byte field") -> int:
        return self._data[self._take(1, field)]

    def pull_uint16(self, field: str = "a 2-byte field") -> int:
        return _U16.unpack_from(self._data, self._take(2, field))[0]

    def pull_uint32(self, field: str = "a 4-byte field") -> int:
        return _U32.unpack_from(self._data, self._take(4, field))[0]

    def pull_bytes(self, n: int, field: str = "a field") -> bytes:
        start = self._take(n, field)
        return bytes(self._data[start : start + n])

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)

    def sub_reader(self, n: int, what: str) -> Reader:
        """Take the next `n` bytes as a reader bounded to them."""
        start = self._take(n, what)
        return Reader(self._data, start, start + n, what)

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise TrailingData(
                f"{self.remaining} unexpected bytes after the end of {self._what}",
                offset=self._pos,
            )


class Writer:
    """An append-only buffer of network-order fields."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def push_uint8(self, value: int) -> None:
        self._buf.append(value)

    def push_uint16(self, value: int) -> None:
        self._buf += _U16.pack(value)

    def push_uint32(self, value: int) -> None:
        self._buf += _U32.pack(value)

    def push_bytes(self, value: bytes) -> None:
        self._buf += value

    def patch_uint16(self, offset: int, value: int) -> None:
        _U16.pack_into(self._buf, offset, value)

    def patch_uint32(self, offset: int, value: int) -> None:
        _U32.pack_into(self._buf, offset, value)

    def getvalue(self) -> bytes:
        return bytes(self._buf)
