"""``/metrics``: the cluster in Prometheus text format, made with prometheus_client.

Everything is read from the Monitor at scrape time (a custom collector), except the job duration
histogram, which the server's Hub accumulates as jobs finish.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .monitor import Monitor

#: Upper bounds (seconds) of the job duration histogram's buckets.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class DurationHistogram:
    """Remote compile durations (real_msec), cumulative as Prometheus wants them."""

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class _ClusterCollector(Collector):
    def __init__(self, monitor: Monitor, status: Any, durations: DurationHistogram) -> None:
        self.monitor, self.status, self.durations = monitor, status, durations

    def collect(self) -> Iterator[Metric]:
        monitor = self.monitor
        hosts = [h for h in monitor.hosts.values() if h.online]
        yield GaugeMetricFamily("icecream_hosts_online", "Hosts logged in to the scheduler", value=len(hosts))
        running = GaugeMetricFamily("icecream_host_running_jobs", "Jobs compiling on a host", labels=["host"])
        max_jobs = GaugeMetricFamily("icecream_host_max_jobs", "Job slots a host offers", labels=["host"])
        load = GaugeMetricFamily("icecream_host_load", "Host load as the scheduler sees it (0-1000)", labels=["host"])
        for host in hosts:
            name = host.name or f"#{host.id}"
            running.add_metric([name], len(host.jobs_as_server))
            max_jobs.add_metric([name], host.max_jobs)
            load.add_metric([name], host.load)
        yield running
        yield max_jobs
        yield load
        t = monitor.totals
        jobs = CounterMetricFamily("icecream_jobs", "Jobs finished, by result", labels=["result"])
        jobs.add_metric(["ok"], t.remote_done - t.remote_failed)
        jobs.add_metric(["failed"], t.remote_failed)
        jobs.add_metric(["local"], t.local_done)
        yield jobs
        yield HistogramMetricFamily(
            "icecream_job_duration_seconds",
            "Remote compile time as the compiling host measured it",
            buckets=self.durations.buckets(),
            sum_value=self.durations.total,
        )
        yield GaugeMetricFamily(
            "icetools_monitor_connected", "1 while connected to the scheduler (or replaying)",
            value=1 if self.status.connected else 0,
        )
        yield CounterMetricFamily("icetools_frames_received", "Frames received from the scheduler", value=t.frames)
        status = self.status
        if status.mode == "live":
            yield GaugeMetricFamily(
                "icetools_monitor_failures",
                "Connection attempts that failed in a row (0 once a connection has stayed up)",
                value=status.failures,
            )
            yield CounterMetricFamily(
                "icetools_monitor_connections", "Connections to the scheduler negotiated", value=status.connects
            )
        if status.recording is not None:
            yield GaugeMetricFamily(
                "icetools_recording",
                "1 while serve --record writes its capture, 0 once writing failed (see the log)",
                value=1 if status.recording == "recording" else 0,
            )


def metrics_text(monitor: Monitor, status: Any, durations: DurationHistogram) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ClusterCollector(monitor, status, durations))
    return generate_latest(registry)
