"""``/metrics``: the cluster in Prometheus text format, made with prometheus_client.

Everything is read from the Monitor at scrape time (a custom collector), except the job duration
and wait histograms, which the server's Hub accumulates as jobs finish and start.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .monitor import JobState, Monitor

#: Upper bounds (seconds) of the job duration histogram's buckets.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Upper bounds (seconds) of the wait histogram's buckets: a healthy cluster starts a job within
#: milliseconds, a saturated one makes it wait seconds to minutes.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class DurationHistogram:
    """Observed seconds (remote compile durations by default), cumulative as Prometheus wants
    them."""

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out


class _ClusterCollector(Collector):
    def __init__(
        self, monitor: Monitor, status: Any, durations: DurationHistogram, waits: DurationHistogram | None
    ) -> None:
        self.monitor, self.status, self.durations, self.waits = monitor, status, durations, waits

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
        # Per host (by name, kept across reconnects as stats keeps them): the jobs it compiled
        # for others by how they ended; "failed" leaves out the lost ones, so the three add up.
        per_host = CounterMetricFamily(
            "icetools_host_jobs", "Remote jobs a host compiled, by result", labels=["host", "result"]
        )
        for name, c in sorted(monitor.host_counters.items()):
            per_host.add_metric([name, "ok"], c.compiled - c.failed)
            per_host.add_metric([name, "failed"], c.failed - c.lost)
            per_host.add_metric([name, "lost"], c.lost)
        yield per_host
        yield GaugeMetricFamily(
            "icetools_jobs_waiting",
            "Remote jobs requested and not started yet (waiting for a compile host)",
            value=sum(1 for j in monitor.jobs.values() if j.state is JobState.WAITING),
        )
        if self.waits is not None:
            yield HistogramMetricFamily(
                "icetools_job_wait_seconds",
                "Time from a remote job's request to its start on a compile host",
                buckets=self.waits.buckets(),
                sum_value=self.waits.total,
            )
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


def metrics_text(
    monitor: Monitor, status: Any, durations: DurationHistogram, waits: DurationHistogram | None = None
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ClusterCollector(monitor, status, durations, waits))
    return generate_latest(registry)
