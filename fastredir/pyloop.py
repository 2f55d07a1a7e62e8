"""The socket loop of the pure-Python fast path: `recvmsg`/`sendmsg`, one
datagram at a time, with the same interface as `_fastpath.Loop`."""

from __future__ import annotations

import select
import socket
import struct
import time

from fastredir import counters as layout
from fastredir import fallback
from fastredir.verdict import VERDICT_COUNT, Verdict

# Linux value; the socket module of Python 3.11 does not export it.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_CONTROL_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size)


def _destination_of(ancillary: list) -> tuple[bytes | None, int, int]:
    """Return (destination address, ifindex, level) from pktinfo data."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, _, address = _IN_PKTINFO.unpack_from(data)
            return address, ifindex, level
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            address, ifindex = _IN6_PKTINFO.unpack_from(data)
            return address, ifindex, level
    return None, 0, 0


def _reply_ancillary(destination: bytes | None, ifindex: int, level: int) -> list:
    """Make the pktinfo that sends a reply from the request's destination."""
    if destination is None:
        return []
    if level == socket.IPPROTO_IP:
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, destination, bytes(4)))]
    link_local = destination[0] == 0xFE and destination[1] & 0xC0 == 0x80
    info = _IN6_PKTINFO.pack(destination, ifindex if link_local else 0)
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)]


class Loop:
    """Receive, decide and answer on a set of UDP sockets.

    Same interface as `_fastpath.Loop`: `sockets` is a list of (socket
    object, nat_t) pairs; `anycast`, `listener_ids`, `counters` and
    `wake_fd` mean what they mean there.
    """

    def __init__(
        self,
        sockets,
        table,
        batch: int = 64,
        slot_size: int = 65536,
        slow_limit: int = 4096,
        anycast=None,
        listener_ids=None,
        counters=None,
        wake_fd: int = -1,
    ):
        self._sockets = [(sock, bool(nat_t)) for sock, nat_t in sockets]
        self._anycast = [False] * len(self._sockets) if anycast is None else [bool(a) for a in anycast]
        ids = list(range(len(self._sockets))) if listener_ids is None else list(listener_ids)
        if counters is None:
            counters = bytearray(layout.REGION_BYTES)
        self._cells = memoryview(counters).cast("B").cast("Q")
        self._verdict_base = [layout.VERDICTS_OFFSET + i * layout.VERDICT_SLOTS for i in ids]
        self._redirect_base = [layout.REDIRECTS_OFFSET + i * layout.MAX_GATEWAY_IDS for i in ids]
        self._poller = select.poll()
        self._by_fd = {}
        for index, (sock, _) in enumerate(self._sockets):
            self._poller.register(sock.fileno(), select.POLLIN)
            self._by_fd[sock.fileno()] = index
        self._wake_fd = wake_fd
        if wake_fd >= 0:
            self._poller.register(wake_fd, select.POLLIN)
        self._batch = batch
        self._slot_size = slot_size
        self._slow: list = []
        self.slow_limit = slow_limit
        self.set_table(table)

    def set_table(self, table) -> None:
        self._table = table

    @property
    def current_table(self):
        return self._table

    def verdict_counts(self) -> list[int]:
        totals = [0] * VERDICT_COUNT
        for base in self._verdict_base:
            for verdict in range(VERDICT_COUNT):
                totals[verdict] += self._cells[base + verdict]
        return totals

    def gateway_counts(self) -> list[int]:
        return [
            sum(self._cells[base + counter_id] for base in self._redirect_base)
            for counter_id in self._table.counter_ids
        ]

    def batch_stats(self) -> tuple[int, int]:
        batches = sum(self._cells[layout.BATCHES_OFFSET + b] for b in range(layout.BATCH_BUCKETS))
        return batches, sum(self.verdict_counts())

    def take_slow(self) -> list:
        queued, self._slow = self._slow, []
        return queued

    def run(self, timeout_ms: int) -> int:
        deadline = time.monotonic() + timeout_ms / 1000
        received = 0
        while not self._slow:
            remaining = deadline - time.monotonic()
            if remaining < 0:
                break
            try:
                ready = self._poller.poll(remaining * 1000)
            except InterruptedError:
                break
            if not ready:
                break
            woken = False
            for fd, _ in ready:
                if fd == self._wake_fd:
                    woken = True
                else:
                    received += self._drain(self._by_fd[fd])
            if woken:
                break
        return received

    def _drain(self, index: int) -> int:
        sock, nat_t = self._sockets[index]
        count = 0
        while count < self._batch * 16:
            try:
                data, ancillary, flags, source = sock.recvmsg(self._slot_size, _CONTROL_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            count += 1
            self._handle(index, sock, nat_t, data, ancillary, flags, source)
        if count:
            # One recvmsg per datagram: a whole drain counts as one batch.
            self._cells[layout.BATCHES_OFFSET + layout.batch_bucket(min(count, 1024))] += 1
        return count

    def _handle(self, index, sock, nat_t, data, ancillary, flags, source) -> None:
        base = self._verdict_base[index]
        if flags & socket.MSG_TRUNC:
            self._cells[base + Verdict.OVERSIZE] += 1
            return
        address = socket.inet_pton(sock.family, source[0].split("%")[0])
        port = source[1]
        verdict, reply, gateway = fallback.process(self._table, data, nat_t, address, port, self._anycast[index])
        destination, ifindex, level = _destination_of(ancillary)
        if verdict.is_answer:
            try:
                sock.sendmsg([reply], _reply_ancillary(destination, ifindex, level), socket.MSG_DONTWAIT, source)
            except OSError:
                self._cells[base + Verdict.SEND_FAILED] += 1
                return
            self._cells[self._redirect_base[index] + self._table.counter_ids[gateway]] += 1
        elif verdict == Verdict.SLOW_PATH:
            if len(self._slow) >= self.slow_limit:
                verdict = Verdict.SLOW_PATH_FULL
            else:
                self._slow.append((index, data, address, port, destination))
        self._cells[base + verdict] += 1
