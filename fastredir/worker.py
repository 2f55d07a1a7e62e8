"""The data plane: a worker runs the fast-path loop on its sockets and
applies what the controller sends it (tables, gateway state, listener
changes) between slices of the loop.

A worker lives in the main thread of the serving process (one worker) or
in a child process of its own (several).  A link carries the
controller's messages: a queue and a pipe inside one process, a unix
socketpair with pickled messages and SCM_RIGHTS file descriptors across
processes.  Either way the link's file descriptor is in the loop's poll
set, so a message ends the loop's current slice at once.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import select
import socket
import struct
import threading

from fastredir import counters as layout
from fastredir.config import Config, Listener
from fastredir.ikev2 import ExchangeType, name_of

log = logging.getLogger("fastredir")

RUN_SLICE_MS = 200  # maximum time the loop runs before Python checks signals and messages
_FRAME = struct.Struct("!II")  # body length, number of file descriptors


class LocalLink:
    """Messages to a worker in the same process."""

    def __init__(self) -> None:
        self._messages: collections.deque = collections.deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    @property
    def wake_fd(self) -> int:
        return self._read_fd

    def send(self, message: tuple) -> None:
        self._messages.append(message)
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def receive(self) -> list[tuple]:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        received = []
        while self._messages:
            received.append(self._messages.popleft())
        return received

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


class ProcessLink:
    """One end of a unix socketpair between the controller and a worker
    process.  A "listeners" message carries its sockets as descriptors."""

    def __init__(self, sock: socket.socket, timeout: float | None = None) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self._send_lock = threading.Lock()

    @classmethod
    def pair(cls) -> tuple[ProcessLink, ProcessLink]:
        """Return (controller end, worker end)."""
        controller, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(controller, timeout=10.0), cls(worker)

    @property
    def wake_fd(self) -> int:
        return self._sock.fileno()

    def send(self, message: tuple) -> None:
        fds: list[int] = []
        if message[0] == "listeners":
            entries = []
            for listener, listener_id, sock in message[1]:
                entries.append((listener, listener_id, len(fds)))
                fds.append(sock.fileno())
            message = ("listeners", entries)
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            socket.send_fds(self._sock, [_FRAME.pack(len(body), len(fds))], fds)
            self._sock.sendall(body)

    def receive(self) -> list[tuple]:
        received = []
        while select.select([self._sock], [], [], 0)[0]:
            header, fds, _, _ = socket.recv_fds(self._sock, _FRAME.size, 64)
            if not header:
                received.append(("stop",))  # the controller is gone
                break
            header += self._receive_exactly(_FRAME.size - len(header))
            length, _ = _FRAME.unpack(header)
            message = pickle.loads(self._receive_exactly(length))
            if message[0] == "listeners":
                message = ("listeners", [(l, i, socket.socket(fileno=fds[n])) for l, i, n in message[1]])
            received.append(message)
        return received

    def _receive_exactly(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self._sock.recv(count)
            if not chunk:
                raise EOFError("the link closed in the middle of a message")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()


class SlowPath:
    """Receives datagrams the fast path hands over (IKE_AUTH,
    INFORMATIONAL and other exchanges of an existing IKE SA).

    TODO: redirect in IKE_AUTH and in INFORMATIONAL exchanges needs IKE SA
    state, which only exists once fastredir completes IKE_SA_INIT itself;
    until then these datagrams are counted by exchange type and dropped.
    """

    def __init__(self) -> None:
        self.exchanges: dict[str, int] = {}

    def handle(self, batch: list, listeners: list[Listener]) -> None:
        # Each entry: (listener index, datagram, source address, source
        # port, destination address or None on a socket bound to one).
        for listener, data, _source, _port, _destination in batch:
            offset = 4 if listeners[listener].nat_t else 0
            name = name_of(ExchangeType, data[offset + 18])
            self.exchanges[name] = self.exchanges.get(name, 0) + 1


class Worker:
    """Runs the fast-path loop on one set of sockets until `stopping` is set.

    `entries` lists (listener, listener id, socket); `counters` is this
    worker's counter region.
    """

    def __init__(self, worker_id: int, config: Config, entries, table, generation: int, implementation, counters, link) -> None:
        self.worker_id = worker_id
        self.config = config
        self.implementation = implementation
        self.counters = counters
        self.link = link
        self.slow_path = SlowPath()
        self.stopping = False
        self.generation = generation
        self.table = table
        self.compiled = implementation.compile_table(table)
        self.entries = list(entries)
        self.loop = self._make_loop()

    def _make_loop(self):
        return self.implementation.Loop(
            [(sock, listener.nat_t) for listener, _, sock in self.entries],
            self.compiled,
            batch=self.config.batch,
            anycast=[listener.anycast for listener, _, _ in self.entries],
            listener_ids=[listener_id for _, listener_id, _ in self.entries],
            counters=self.counters,
            wake_fd=self.link.wake_fd,
        )

    def run(self) -> None:
        while not self.stopping:
            self.loop.run(RUN_SLICE_MS)
            queued = self.loop.take_slow()
            if queued:
                self.slow_path.handle(queued, [listener for listener, _, _ in self.entries])
            for message in self.link.receive():
                self.apply(message)

    def apply(self, message: tuple) -> None:
        kind = message[0]
        if kind == "table":
            _, generation, table = message
            self.compiled = self.implementation.compile_table(table)
            self.loop.set_table(self.compiled)
            self.table, self.generation = table, generation
        elif kind == "state":
            _, generation, state = message
            if generation == self.generation:
                self.compiled.update_state(state)
        elif kind == "listeners":
            kept = {sock.fileno() for _, _, sock in message[1]}
            old = self.entries
            self.entries = list(message[1])
            self.loop = self._make_loop()
            for _, _, sock in old:
                if sock.fileno() not in kept:
                    sock.close()
        elif kind == "stop":
            self.stopping = True

    def final_summary(self) -> str:
        cells = memoryview(self.counters).cast("B").cast("Q")
        verdicts = [0] * len(layout.Verdict)
        for _, listener_id, _ in self.entries:
            base = layout.VERDICTS_OFFSET + listener_id * layout.VERDICT_SLOTS
            for verdict in range(len(verdicts)):
                verdicts[verdict] += cells[base + verdict]
        per_gateway = {g.name: count for g, count in zip(self.table.gateways, self.loop.gateway_counts())}
        return layout.summary_line(verdicts, per_gateway, self.slow_path.exchanges)
