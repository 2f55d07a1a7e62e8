"""Microbenchmarks of the per-packet work: `pytest bench --benchmark-only`.

Each round decides about 1024 recorded requests with distinct SPIs and
builds their REDIRECTs.  pytest-benchmark reports the time of a round;
the ns per packet is printed at the end and saved in extra_info.
Save a run with --benchmark-autosave and compare with --benchmark-compare.
"""

from __future__ import annotations

import pytest

from bench import micro

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def requests() -> list[bytes]:
    return micro.build_requests()


@pytest.fixture(scope="module")
def tables():
    pytest.importorskip("fastredir._fastpath", reason="the Cython extension is not built")
    return micro.implementations()


@pytest.mark.benchmark(group="process_many-1024")
@pytest.mark.parametrize("implementation", ["cython", "python"])
def test_process_many(benchmark, tables, requests, implementation):
    process_many, table = tables[implementation]

    redirected = benchmark(process_many, table, requests, False, micro.CLIENT_ADDRESS, micro.CLIENT_PORT)

    assert redirected == len(requests)
    if benchmark.stats is not None:
        ns_per_packet = benchmark.stats.stats.median * 1e9 / len(requests)
        benchmark.extra_info["packets_per_round"] = len(requests)
        benchmark.extra_info["ns_per_packet"] = round(ns_per_packet, 1)
