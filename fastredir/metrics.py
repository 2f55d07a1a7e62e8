"""Prometheus metrics of a running instance, computed at each scrape from
the workers' shared counters and the gateway pool.

Every datagram received is answered or dropped for exactly one reason, so
fastredir_requests_received_total equals fastredir_requests_answered_total
plus the sum of fastredir_requests_dropped_total, per listener.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fastredir import counters as layout
from fastredir.verdict import Verdict

log = logging.getLogger("fastredir")

ANSWERS = (Verdict.REDIRECTED, Verdict.REDIRECTED_OVERFLOW)


class Collector:
    def __init__(self, controller) -> None:
        self.controller = controller

    def collect(self):
        controller = self.controller
        with controller.lock:
            config = controller.config
            reader = controller.reader
            listeners = [(l, controller.listener_ids.id_of(l)) for l in config.listeners]
            gateways = controller.pool.snapshot(time.monotonic())
            rebuilds, reloads = controller.rebuilds, dict(controller.reloads)

        received = CounterMetricFamily(
            "fastredir_requests_received", "Datagrams received.", labels=["listener", "family"]
        )
        answered = CounterMetricFamily(
            "fastredir_requests_answered", "Datagrams answered with a REDIRECT.", labels=["listener", "family", "kind"]
        )
        dropped = CounterMetricFamily(
            "fastredir_requests_dropped", "Datagrams not answered, by reason.", labels=["listener", "family", "reason"]
        )
        redirects = CounterMetricFamily(
            "fastredir_redirects", "REDIRECTs sent, by gateway.", labels=["gateway", "listener", "family"]
        )
        for listener, listener_id in listeners:
            labels = [str(listener), f"ipv{listener.address.version}"]
            verdicts = reader.verdicts(listener_id)
            received.add_metric(labels, sum(verdicts))
            answered.add_metric(labels + ["redirect"], verdicts[Verdict.REDIRECTED])
            answered.add_metric(labels + ["overflow"], verdicts[Verdict.REDIRECTED_OVERFLOW])
            for verdict in Verdict:
                if verdict not in ANSWERS:
                    dropped.add_metric(labels + [verdict.label], verdicts[verdict])
            for gateway in gateways:
                redirects.add_metric(
                    [gateway["name"], *labels], reader.redirects(listener_id, gateway["counter_id"])
                )
        yield from (received, answered, dropped, redirects)

        gauges = {
            "up": ("fastredir_gateway_up", "1 when the gateway's health checks pass (or are off)."),
            "drained": ("fastredir_gateway_drained", "1 when an operator drained the gateway."),
            "full": ("fastredir_gateway_full", "1 when the gateway's load is at or above its high-water mark."),
            "in_table": (
                "fastredir_gateway_in_table",
                "1 when the gateway is in the table (up and not drained); a full one still gets no new clients.",
            ),
            "load": ("fastredir_gateway_load", "IKE SAs on the gateway, as last read or configured."),
        }
        members = {g.name for g in controller.table.gateways}
        for key, (name, documentation) in gauges.items():
            family = GaugeMetricFamily(name, documentation, labels=["gateway"])
            for gateway in gateways:
                value = gateway["name"] in members if key == "in_table" else gateway[key]
                family.add_metric([gateway["name"]], float(value))
            yield family

        yield CounterMetricFamily("fastredir_table_rebuilds", "Gateway table rebuilds.", value=rebuilds)
        reload_family = CounterMetricFamily("fastredir_reloads", "Configuration reloads.", labels=["result"])
        for result, count in reloads.items():
            reload_family.add_metric([result], count)
        yield reload_family

        counts = reader.batches()
        buckets, cumulative = [], 0
        for bucket, count in enumerate(counts):
            cumulative += count
            upper = 1024 if bucket == layout.BATCH_BUCKETS - 1 else (2 << bucket) - 1
            buckets.append((str(upper), cumulative))
        buckets[-1] = ("+Inf", cumulative)
        yield HistogramMetricFamily(
            "fastredir_batch_size",
            "Datagrams per recvmmsg call (the pure-Python loop counts one drain as a batch).",
            buckets=buckets,
            sum_value=reader.received(),
        )


def start_metrics_server(controller, address: tuple[str, int]):
    """Serve /metrics over HTTP on `address`; return the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(controller))
    host, port = address
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("Prometheus metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return server
