"""The socket loop of the pure-Python fast path: `recvmsg`/`sendmsg`, one
datagram at a time, with the same interface as `_fastpath.Loop`."""

from __future__ import annotations

import select
import socket
import struct
import time

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

    `sockets` is a list of (socket object, nat_t) pairs.
    """

    def __init__(self, sockets, table, batch: int = 64, slot_size: int = 65536, slow_limit: int = 4096):
        self._sockets = [(sock, bool(nat_t)) for sock, nat_t in sockets]
        self._poller = select.poll()
        self._by_fd = {}
        for index, (sock, _) in enumerate(self._sockets):
            self._poller.register(sock.fileno(), select.POLLIN)
            self._by_fd[sock.fileno()] = index
        self._batch = batch
        self._slot_size = slot_size
        self._counts = [0] * VERDICT_COUNT
        self._slow: list = []
        self.slow_limit = slow_limit
        self._batches = 0
        self._batched = 0
        self.set_table(table)

    def set_table(self, table) -> None:
        self._table = table
        self._gateway_counts = [0] * len(table.identities)

    def verdict_counts(self) -> list[int]:
        return list(self._counts)

    def gateway_counts(self) -> list[int]:
        return list(self._gateway_counts)

    def batch_stats(self) -> tuple[int, int]:
        return self._batches, self._batched

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
            for fd, _ in ready:
                received += self._drain(self._by_fd[fd])
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
            self._batches += 1
            self._batched += count
        return count

    def _handle(self, index, sock, nat_t, data, ancillary, flags, source) -> None:
        if flags & socket.MSG_TRUNC:
            self._counts[Verdict.OVERSIZE] += 1
            return
        address = socket.inet_pton(sock.family, source[0].split("%")[0])
        port = source[1]
        verdict, reply, gateway = fallback.process(self._table, data, nat_t, address, port)
        destination, ifindex, level = _destination_of(ancillary)
        if verdict == Verdict.REDIRECTED:
            try:
                sock.sendmsg([reply], _reply_ancillary(destination, ifindex, level), socket.MSG_DONTWAIT, source)
            except OSError:
                self._counts[Verdict.SEND_FAILED] += 1
                return
            self._gateway_counts[gateway] += 1
        elif verdict == Verdict.SLOW_PATH:
            if len(self._slow) >= self.slow_limit:
                verdict = Verdict.SLOW_PATH_FULL
            else:
                self._slow.append((index, data, address, port, destination))
        self._counts[verdict] += 1
