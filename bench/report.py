"""The benchmark's outputs: the JSON document, the text table and the plot."""

from __future__ import annotations

import pathlib

from bench.figures import median_figures
from bench.systems import SYSTEM_NAMES

# Per-system keys of latest.json; every system has them, None when skipped.
SUMMARY_KEYS = ("cpu_ns_per_answer", "answers_per_s", "lost_fraction", "p50_us", "p99_us")

BUDGET = (
    # (name, ratio or figure, limit, True when the value must be at most the limit)
    ("fastredir CPU per answer / c_floor's", "fastredir_to_c_floor_cpu", 1.15, True),
    ("libreswan CPU per answer / fastredir's", "libreswan_to_fastredir_cpu", 2.5, False),
    ("python_loop CPU per answer / fastredir's", "python_loop_to_fastredir_cpu", 1.6, False),
    ("Cython per-packet work, ns", "micro_cython_ns_per_packet", 150, True),
    ("pure-Python / Cython per-packet work", "micro_pure_to_cython", 20, False),
)


def summarize_system(runs: list[dict]) -> dict:
    """Return the summary entry of one system from its repeated runs."""
    flood = median_figures([run["flood"] for run in runs])
    fixed = median_figures([run["fixed_rate"] for run in runs])
    # Other processes of a shared machine only ever add cost, so the best
    # repetition is the closest to what the system does alone.
    measured = [run["flood"] for run in runs if run["flood"]["cpu_ns_per_answer"]]
    best = {
        "cpu_ns_per_answer": min((run["cpu_ns_per_answer"] for run in measured), default=None),
        "answers_per_s": max((run["answers_per_s"] for run in measured), default=None),
    }
    if fixed.get("latency_matched_by") == "order" and fixed.get("lost_fraction"):
        # The fixed replies of c_floor are matched to requests by order,
        # and a lost request shifts that order, so the latencies are void.
        for key in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"):
            fixed[key] = None
    return {
        "cpu_ns_per_answer": flood["cpu_ns_per_answer"],
        "answers_per_s": flood["answers_per_s"],
        "lost_fraction": flood["lost_fraction"],
        "p50_us": fixed["p50_us"],
        "p99_us": fixed["p99_us"],
        "offered_per_s": flood["offered_per_s"],
        "schedstat_ns_per_answer": flood["schedstat_ns_per_answer"],
        "responder_busy_fraction": flood["responder_busy_fraction"],
        "other_load_on_system_cores": flood["other_load_on_system_cores"],
        "best": best,
        # A flood the responder's socket did not overflow was limited by
        # the generator, not by the responder.
        "saturated_in_every_run": all(run["dropped_at_responder"] > 0 for run in measured),
        "fixed_rate": {
            key: fixed[key]
            for key in (
                "offered_per_s", "answers_per_s", "lost_fraction", "cpu_ns_per_answer",
                "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "latency_matched_by",
                "other_load_on_system_cores",
            )
        },  # fmt: skip
        "rss_kib": median_figures([{"rss_kib": run["rss_kib"]} for run in runs])["rss_kib"],
        "repeats": len(runs),
        "runs": runs,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def build_document(*, runs, skipped, micro, checks, workers, machine, settings, quick, failures, generated,
                   elapsed) -> dict:  # fmt: skip
    document: dict = {
        "generated": generated,
        "command": "python -m bench --quick" if quick else "python -m bench",
        "quick": quick,
        "elapsed_s": round(elapsed, 1),
        "machine": machine,
        "settings": settings,
    }
    for name in SYSTEM_NAMES:
        if name not in runs and name not in skipped:
            continue
        if runs.get(name):
            document[name] = summarize_system(runs[name])
            if name in skipped:
                document[name]["note"] = skipped[name]
        else:
            document[name] = {key: None for key in SUMMARY_KEYS} | {"skipped": skipped.get(name, "not run")}

    def cpu(name: str) -> float | None:
        return document.get(name, {}).get("cpu_ns_per_answer")

    ratios = {
        "fastredir_to_c_floor_cpu": ratio(cpu("fastredir"), cpu("c_floor")),
        # Repetition i of both ran back to back, under similar load from
        # the rest of the machine.
        "fastredir_to_c_floor_cpu_per_repeat": [
            ratio(fastredir["flood"]["cpu_ns_per_answer"], floor["flood"]["cpu_ns_per_answer"])
            for fastredir, floor in zip(runs.get("fastredir", []), runs.get("c_floor", []))
        ],
        "libreswan_to_fastredir_cpu": ratio(cpu("libreswan"), cpu("fastredir")),
        "python_loop_to_fastredir_cpu": ratio(cpu("python_loop"), cpu("fastredir")),
        "asyncio_to_fastredir_cpu": ratio(cpu("asyncio"), cpu("fastredir")),
        "fastredir_pure_to_fastredir_cpu": ratio(cpu("fastredir_pure"), cpu("fastredir")),
        "micro_cython_ns_per_packet": micro.get("cython_ns_per_packet"),
        "micro_pure_to_cython": micro.get("ratio_pure_to_cython"),
    }
    document["ratios"] = ratios
    document["budget"] = []
    for item, key, limit, at_most in BUDGET:
        value = ratios[key]
        if value is None:
            holds = None
        elif at_most:
            holds = value <= limit
        else:
            holds = value >= limit
        document["budget"].append(
            {"item": item, "value": value, "limit": limit, "must_be": "at most" if at_most else "at least", "holds": holds}
        )
    document["micro"] = micro
    document["checks"] = checks
    document["workers"] = workers
    document["failures"] = failures
    return document


def _number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(document: dict) -> str:
    """Return the results as a plain-text table with the budget below it."""
    floor_cpu = document.get("c_floor", {}).get("cpu_ns_per_answer")
    settings = document["settings"]
    header = (
        f"{'system':<15} {'answers/s (best)':>19} {'CPU ns/answer (best)':>21} {'x floor':>8} {'lost':>6}"
        f" {'p50 us':>7} {'p99 us':>8} {'lost@fixed':>10} {'others':>7}"
    )
    lines = [
        f"flood: {settings['flood_rate']:,.0f} requests/s offered for {settings['flood_seconds']:g} s; "
        f"latency at {settings['fixed_rate']:,.0f}/s.  Median of {settings['repeats']} run(s), best run in brackets;",
        "lost: share of the flood not answered; others: share of the system's core that other processes took",
        header,
        "-" * len(header),
    ]

    for name in SYSTEM_NAMES:
        entry = document.get(name)
        if entry is None:
            continue
        if "skipped" in entry:
            lines.append(f"{name:<15} skipped: {entry['skipped']}")
            continue
        best = entry["best"]
        answers = f"{_number(entry['answers_per_s'])} ({_number(best['answers_per_s'])})"
        cpu = f"{_number(entry['cpu_ns_per_answer'])} ({_number(best['cpu_ns_per_answer'])})"
        lines.append(
            f"{name:<15} {answers:>19} {cpu:>21}"
            f" {_number(ratio(entry['cpu_ns_per_answer'], floor_cpu), 2):>8}"
            f" {_number(100 * entry['lost_fraction'], 0, '%'):>6}"
            f" {_number(entry['p50_us']):>7} {_number(entry['p99_us']):>8}"
            f" {_number(100 * entry['fixed_rate']['lost_fraction'], 2, '%'):>10}"
            f" {_percent(entry.get('other_load_on_system_cores')):>7}"
        )

    unsaturated = [name for name in SYSTEM_NAMES if document.get(name, {}).get("saturated_in_every_run") is False]
    if unsaturated:
        lines.append(f"NOTE: the flood did not overflow the socket of {', '.join(unsaturated)} in every run;")
        lines.append("      there the generator, not the system, limited answers/s.")
    lines.append("")
    micro = document.get("micro") or {}
    if micro:
        lines.append(
            f"per-packet work (process_many, 1024 requests): Cython {micro['cython_ns_per_packet']:.1f} ns, "
            f"pure Python {micro['python_ns_per_packet']:,.0f} ns"
        )
    workers = document.get("workers") or {}
    if "speedup" in workers:
        lines.append(
            f"fastredir workers: 1 -> {workers['workers_1']['answers_per_s']:,.0f} answers/s, "
            f"2 -> {workers['workers_2']['answers_per_s']:,.0f} answers/s ({workers['speedup']:.2f}x)"
        )
    for name, check in (document.get("checks") or {}).items():
        lines.append(f"{name.replace('_', ' ')} check: {'passed' if check.get('passed') else 'FAILED'}")
    lines.append("")
    lines.append("budget:")
    for entry in document["budget"]:
        verdict = {True: "holds", False: "MISSED", None: "not measured"}[entry["holds"]]
        lines.append(
            f"  {entry['item']:<42} {_number(entry['value'], 2):>9}  ({entry['must_be']} {entry['limit']:g}): {verdict}"
        )
    return "\n".join(lines)


def plot(document: dict, path: pathlib.Path) -> pathlib.Path | None:
    """Draw answers per second, CPU per answer and latency per system;
    return the path, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None

    names = [name for name in SYSTEM_NAMES if name in document and "skipped" not in document[name]]
    names.reverse()  # matplotlib draws the first bar at the bottom
    highlight = {"fastredir": "#d62728", "c_floor": "#7f7f7f"}
    colors = [highlight.get(name, "#1f77b4") for name in names]
    settings = document["settings"]
    figure, (rate_axis, cpu_axis, latency_axis) = plt.subplots(1, 3, figsize=(15, 0.55 * len(names) + 2.2))

    rates = [document[name]["answers_per_s"] or 0 for name in names]
    best_rates = [document[name]["best"]["answers_per_s"] or 0 for name in names]
    rate_axis.barh(names, rates, color=colors)
    if settings["repeats"] > 1:
        rate_axis.plot(best_rates, range(len(names)), "k|", markersize=14, label=f"best of {settings['repeats']}")
        rate_axis.legend(loc="lower right", fontsize=8)
    rate_axis.set_title(f"answers per second, median\n(flood of {settings['flood_rate']:,.0f}/s offered)")
    for index, value in enumerate(rates):
        label = f" {value:,.0f}"
        if settings["repeats"] > 1 and best_rates[index] > value * 1.05:
            label += f" (best {best_rates[index]:,.0f})"
        rate_axis.text(max(value, best_rates[index]), index, label, va="center", fontsize=8)
    rate_axis.set_xlim(0, max(rates + best_rates + [1]) * 1.6)
    rate_axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value / 1000:,.0f}k"))

    cpu = [(document[name]["cpu_ns_per_answer"] or 0) / 1000 for name in names]
    cpu_axis.barh(names, cpu, color=colors)
    cpu_axis.set_xscale("log")
    cpu_axis.set_title("CPU per answer, microseconds, median\n(responder's user+system time, log scale)")
    for index, value in enumerate(cpu):
        cpu_axis.text(value, index, f" {value:,.2f}", va="center", fontsize=8)
    cpu_axis.set_xlim(min(v for v in cpu if v > 0) / 2 if any(cpu) else 0.1, max(cpu + [1]) * 4)
    cpu_axis.tick_params(labelleft=False)

    p50 = [document[name]["p50_us"] or 0 for name in names]
    p99 = [document[name]["p99_us"] or 0 for name in names]
    positions = range(len(names))
    latency_axis.barh([p + 0.2 for p in positions], p99, height=0.4, color="#ff7f0e", label="p99")
    latency_axis.barh([p - 0.2 for p in positions], p50, height=0.4, color="#2ca02c", label="p50")
    latency_axis.set_xscale("log")
    latency_axis.set_yticks(list(positions))
    latency_axis.tick_params(labelleft=False)
    latency_axis.set_title(f"latency, microseconds, median\n(at {settings['fixed_rate']:,.0f}/s offered, log scale)")
    latency_axis.legend(loc="lower right", fontsize=8)
    for index, (low, high) in enumerate(zip(p50, p99)):
        latency_axis.text(high or 1, index + 0.2, f" {high:,.0f}", va="center", fontsize=7)
        latency_axis.text(low or 1, index - 0.2, f" {low:,.0f}", va="center", fontsize=7)
    latency_values = [v for v in p50 + p99 if v > 0]
    if latency_values:
        latency_axis.set_xlim(min(latency_values) / 2, max(latency_values) * 6)

    for axis, subs in ((cpu_axis, (1.0, 2.0, 5.0)), (latency_axis, (1.0,))):
        axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,g}"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())

    machine = document["machine"]
    figure.suptitle(
        f"fastredir benchmark, {document['generated'][:10]}: {machine['cpu']}, {machine['cpus']} CPUs, "
        f"Linux {machine['kernel']}; {document['command']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
