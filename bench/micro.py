"""The per-packet work alone: both fast-path implementations' process_many()
over 1024 recorded requests with distinct initiator SPIs.

test_micro.py times it with pytest-benchmark; `python -m bench.micro`
prints the same figures as JSON for `python -m bench`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import timeit

from bench.template import load_request, with_spi
from fastredir import fallback
from fastredir.config import load_default

BATCH = 1024
CLIENT_ADDRESS = bytes([127, 77, 0, 1])
CLIENT_PORT = 50000


def build_requests(count: int = BATCH) -> list[bytes]:
    """Return `count` copies of the recorded request, each with its own SPI."""
    request = load_request()
    return [with_spi(request, hashlib.sha256(index.to_bytes(4, "big")).digest()[:8]) for index in range(count)]


def build_tables():
    """Return the (Cython, pure-Python) compiled tables of the embedded
    default configuration (two gateways)."""
    from fastredir import _fastpath

    table = load_default().build_table()
    return _fastpath.compile_table(table), fallback.compile_table(table)


def implementations():
    """Return {name: (process_many, compiled table)} for both implementations."""
    from fastredir import _fastpath

    cython_table, pure_table = build_tables()
    return {
        "cython": (_fastpath.process_many, cython_table),
        "python": (fallback.process_many, pure_table),
    }


def ns_per_packet(process_many, table, requests: list[bytes], seconds: float = 0.5, repeat: int = 5) -> float:
    """Return the fastest of `repeat` timings of process_many over
    `requests`, in nanoseconds per request."""
    def call() -> int:
        return process_many(table, requests, False, CLIENT_ADDRESS, CLIENT_PORT)

    if call() != len(requests):
        raise AssertionError("process_many did not redirect every request")
    timer = timeit.Timer(call)
    number, elapsed = timer.autorange()
    number = max(1, int(number * seconds / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number / len(requests) * 1e9


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    requests = build_requests()
    result = {}
    for name, (process_many, table) in implementations().items():
        seconds = 0.2 if quick else 0.5
        result[f"{name}_ns_per_packet"] = ns_per_packet(process_many, table, requests, seconds=seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
