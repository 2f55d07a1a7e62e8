"""pytest settings for the microbenchmarks in bench/ (tests/ does not load this)."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the median ns per packet of each microbenchmark."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    lines = [
        f"{bench.fullname}: {bench.extra_info['ns_per_packet']:.1f} ns per packet (median)"
        for bench in benchmarks
        if "ns_per_packet" in getattr(bench, "extra_info", {})
    ]
    if lines:
        terminalreporter.write_sep("-", "per-packet work")
        for line in lines:
            terminalreporter.write_line(line)
