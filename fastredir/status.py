"""Text output of `fastredir status`."""

from __future__ import annotations


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_status(status: dict) -> str:
    """Return the status of a running instance as a few aligned tables."""
    reloads = status["reloads"]
    lines = [
        f"configuration {status['config']}; table generation {status['generation']} "
        f"({status['table_rebuilds']} rebuilds); reloads: {reloads['done']} done, "
        f"{reloads['refused']} refused; {status['workers']} worker(s)",
        "",
    ]
    header = ("gateway", "health", "drained", "in table", "load", "high water", "full", "redirects")
    rows = [header]
    for gateway in status["gateways"]:
        load = gateway["load"]
        if gateway["load_problem"]:
            load = f"{load}!"
        rows.append(
            (
                gateway["name"],
                gateway["health"],
                _cell(gateway["drained"]),
                _cell(gateway["in_table"]),
                _cell(load),
                _cell(gateway["high_water"]),
                _cell(gateway["full"]),
                _cell(gateway["redirects"]),
            )
        )
    lines += _table(rows)
    problems = [g for g in status["gateways"] if g["load_problem"] or (g["last_problem"] and not g["up"])]
    for gateway in problems:
        lines.append(f"  {gateway['name']}: {gateway['load_problem'] or gateway['last_problem']}")
    lines.append("")

    rows = [("listener", "family", "received", "answered", "dropped")]
    for listener in status["listeners"]:
        verdicts = listener["verdicts"]
        answered = verdicts["redirected"] + verdicts["redirected_overflow"]
        received = sum(verdicts.values())
        kind = "NAT-T" if listener["nat_t"] else "IKE"
        if listener["anycast"]:
            kind += ", anycast"
        rows.append((listener["listener"], f"{listener['family']} {kind}", received, answered, received - answered))
    lines += _table(rows)
    lines.append("")
    drops = {k: v for k, v in status["verdicts"].items() if v and k not in ("redirected", "redirected_overflow")}
    lines.append(f"received {status['received']}, answered {status['answered']}")
    if drops:
        lines.append("dropped: " + ", ".join(f"{name} {count}" for name, count in sorted(drops.items())))
    return "\n".join(lines)


def _table(rows) -> list[str]:
    widths = [max(len(_cell(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(_cell(value).ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows]
