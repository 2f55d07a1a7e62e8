"""Turn load generator results into the figures the report shows."""

from __future__ import annotations

import statistics


def run_figures(result: dict, system_cores: frozenset[int] | None = None) -> dict:
    """Return the figures of one generator run against one system.

    CPU time is the responder's own user+system time (/proc/PID/stat,
    all its threads and worker processes) over the generator's window,
    from the first request to the end of the drain time.  When the
    system had cores of its own, `other_load_on_system_cores` is the
    share of their time that other processes of the machine took.
    """
    watched = result["cpu"].values()
    ticks = sum(entry["utime_ticks"] + entry["stime_ticks"] for entry in watched)
    runtime_ns = sum(entry["runtime_ns"] for entry in watched)
    cpu_seconds = ticks / result["clock_ticks_per_s"]
    answers = result["answers_valid"]
    sent = result["sent"]
    latency = result["latency"]
    other_load = None
    if system_cores and all(core < len(result["cores"]) for core in system_cores):
        busy = sum(result["cores"][core]["busy_ticks"] for core in system_cores)
        total = sum(result["cores"][core]["total_ticks"] for core in system_cores)
        other_load = max(0.0, (busy - ticks) / total) if total else None
    return {
        "sent": sent,
        "answers": answers,
        "answers_invalid": result["answers_invalid"],
        "duplicates": result["duplicates"],
        "offered_per_s": result["offered_per_s"],
        "answers_per_s": result["answers_per_s"],
        "lost_fraction": 1 - answers / sent if sent else None,
        "dropped_at_responder": result["drops"]["target"],
        "dropped_at_generator": result["drops"]["generator"],
        "cpu_seconds": cpu_seconds,
        "cpu_ns_per_answer": cpu_seconds * 1e9 / answers if answers else None,
        # The scheduler's run time (/proc/PID/task/*/schedstat), which
        # has nanosecond resolution; a cross-check of the tick count.
        "schedstat_ns_per_answer": runtime_ns / answers if answers else None,
        "responder_busy_fraction": cpu_seconds / result["window_seconds"] if result["window_seconds"] else None,
        "other_load_on_system_cores": other_load,
        "p50_us": latency["p50_us"] if latency["samples"] else None,
        "p90_us": latency["p90_us"] if latency["samples"] else None,
        "p99_us": latency["p99_us"] if latency["samples"] else None,
        "p999_us": latency["p999_us"] if latency["samples"] else None,
        "max_us": latency["max_us"] if latency["samples"] else None,
        "latency_matched_by": latency["matched_by"],
    }


def median_figures(runs: list[dict]) -> dict:
    """Return the median of each numeric figure across repeated runs."""
    if not runs:
        return {}
    merged = {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        if values and len(values) == len(runs):
            merged[key] = statistics.median(values)
        else:
            merged[key] = runs[0][key] if not values else statistics.median(values)
    return merged
