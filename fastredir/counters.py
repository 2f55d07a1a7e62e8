"""Layout of a worker's counters: one array of uint64 that its socket loop
writes and the control plane reads, in shared memory when workers are
processes.

Each worker owns one region and is its only writer; x86-64 and AArch64
load and store aligned 64-bit words whole, so readers see no torn values.

Region layout, in uint64 cells:
    verdicts[listener id][VERDICT_SLOTS]
    redirects[listener id][MAX_GATEWAY_IDS]   answered datagrams by gateway
    batches[BATCH_BUCKETS]                    recvmmsg calls by batch size
"""

from __future__ import annotations

import mmap

from fastredir.verdict import VERDICT_COUNT, Verdict

MAX_LISTENER_IDS = 64
MAX_GATEWAY_IDS = 4096
VERDICT_SLOTS = 32  # room for verdicts added later; VERDICT_COUNT are used
BATCH_BUCKETS = 11  # batch of 1, 2-3, 4-7, ..., 512-1023, 1024

VERDICTS_OFFSET = 0
REDIRECTS_OFFSET = VERDICTS_OFFSET + MAX_LISTENER_IDS * VERDICT_SLOTS
BATCHES_OFFSET = REDIRECTS_OFFSET + MAX_LISTENER_IDS * MAX_GATEWAY_IDS
REGION_CELLS = BATCHES_OFFSET + BATCH_BUCKETS
REGION_BYTES = REGION_CELLS * 8

assert VERDICT_COUNT <= VERDICT_SLOTS


def batch_bucket(size: int) -> int:
    """Return the histogram bucket of a batch of `size` datagrams."""
    return min(size.bit_length() - 1, BATCH_BUCKETS - 1)


def allocate(workers: int) -> mmap.mmap:
    """Return zeroed memory for `workers` regions, shared with children
    forked afterwards."""
    return mmap.mmap(-1, max(workers, 1) * REGION_BYTES, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def region(memory, worker: int) -> memoryview:
    """Return worker `worker`'s region as a writable byte view."""
    return memoryview(memory)[worker * REGION_BYTES : (worker + 1) * REGION_BYTES]


class CounterReader:
    """Sums counters over the regions of several workers."""

    def __init__(self, regions: list[memoryview]) -> None:
        self._cells = [r.cast("Q") for r in regions]

    def verdicts(self, listener_id: int | None = None) -> list[int]:
        """Return counts per verdict, for one listener or all."""
        ids = range(MAX_LISTENER_IDS) if listener_id is None else (listener_id,)
        totals = [0] * VERDICT_COUNT
        for cells in self._cells:
            for lid in ids:
                base = VERDICTS_OFFSET + lid * VERDICT_SLOTS
                for verdict in range(VERDICT_COUNT):
                    totals[verdict] += cells[base + verdict]
        return totals

    def redirects(self, listener_id: int, gateway_id: int) -> int:
        index = REDIRECTS_OFFSET + listener_id * MAX_GATEWAY_IDS + gateway_id
        return sum(cells[index] for cells in self._cells)

    def batches(self) -> list[int]:
        return [sum(cells[BATCHES_OFFSET + b] for cells in self._cells) for b in range(BATCH_BUCKETS)]

    def received(self) -> int:
        return sum(self.verdicts())

    def answered(self) -> int:
        totals = self.verdicts()
        return totals[Verdict.REDIRECTED] + totals[Verdict.REDIRECTED_OVERFLOW]


def summary_line(verdicts: list[int], per_gateway: dict[str, int] | None = None, slow: dict[str, int] | None = None) -> str:
    """Return one log line: datagrams received, then each verdict that is
    not zero (redirected always), then answers per gateway."""
    parts = [f"received={sum(verdicts)}"]
    for verdict in Verdict:
        if verdicts[verdict] or verdict == Verdict.REDIRECTED:
            parts.append(f"{verdict.label}={verdicts[verdict]}")
    for name, count in sorted((per_gateway or {}).items()):
        parts.append(f"to[{name}]={count}")
    for name, count in sorted((slow or {}).items()):
        parts.append(f"slow[{name}]={count}")
    return " ".join(parts)
