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


#: What /metrics reads for one scheduler: its name (the ``scheduler`` label), its Monitor, its
#: status (mode, connected, failures, connects, recording) and the hub's two histograms.
Source = tuple[str, Monitor, Any, DurationHistogram, "DurationHistogram | None"]


class _ClusterCollector(Collector):
    """Every series for every scheduler, each labelled ``scheduler`` (also with only one, so
    that queries, rules and dashboards do not change when a second one is added)."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        S = ["scheduler"]
        hosts_online = GaugeMetricFamily("icecream_hosts_online", "Hosts logged in to the scheduler", labels=S)
        running = GaugeMetricFamily("icecream_host_running_jobs", "Jobs compiling on a host", labels=[*S, "host"])
        max_jobs = GaugeMetricFamily("icecream_host_max_jobs", "Job slots a host offers", labels=[*S, "host"])
        load = GaugeMetricFamily(
            "icecream_host_load", "Host load as the scheduler sees it (0-1000)", labels=[*S, "host"]
        )
        jobs = CounterMetricFamily("icecream_jobs", "Jobs finished, by result", labels=[*S, "result"])
        # Per host (by name, kept across reconnects as stats keeps them): the jobs it compiled
        # for others by how they ended; "failed" leaves out the lost ones, so the three add up.
        per_host = CounterMetricFamily(
            "icetools_host_jobs", "Remote jobs a host compiled, by result", labels=[*S, "host", "result"]
        )
        waiting = GaugeMetricFamily(
            "icetools_jobs_waiting", "Remote jobs requested and not started yet (waiting for a compile host)", labels=S
        )
        waits = HistogramMetricFamily(
            "icetools_job_wait_seconds", "Time from a remote job's request to its start on a compile host", labels=S
        )
        durations = HistogramMetricFamily(
            "icecream_job_duration_seconds", "Remote compile time as the compiling host measured it", labels=S
        )
        connected = GaugeMetricFamily(
            "icetools_monitor_connected", "1 while connected to the scheduler (or replaying)", labels=S
        )
        frames = CounterMetricFamily("icetools_frames_received", "Frames received from the scheduler", labels=S)
        failures = GaugeMetricFamily(
            "icetools_monitor_failures",
            "Connection attempts that failed in a row (0 once a connection has stayed up)",
            labels=S,
        )
        connections = CounterMetricFamily(
            "icetools_monitor_connections", "Connections to the scheduler negotiated", labels=S
        )
        recording = GaugeMetricFamily(
            "icetools_recording", "1 while serve --record writes its capture, 0 once writing failed (see the log)", labels=S
        )
        live = recorded = False
        for name, monitor, status, duration_histogram, wait_histogram in self.sources:
            hosts = [h for h in monitor.hosts.values() if h.online]
            hosts_online.add_metric([name], len(hosts))
            for host in hosts:
                host_name = host.name or f"#{host.id}"
                running.add_metric([name, host_name], len(host.jobs_as_server))
                max_jobs.add_metric([name, host_name], host.max_jobs)
                load.add_metric([name, host_name], host.load)
            t = monitor.totals
            jobs.add_metric([name, "ok"], t.remote_done - t.remote_failed)
            jobs.add_metric([name, "failed"], t.remote_failed)
            jobs.add_metric([name, "local"], t.local_done)
            for host_name, c in sorted(monitor.host_counters.items()):
                per_host.add_metric([name, host_name, "ok"], c.compiled - c.failed)
                per_host.add_metric([name, host_name, "failed"], c.failed - c.lost)
                per_host.add_metric([name, host_name, "lost"], c.lost)
            waiting.add_metric([name], sum(1 for j in monitor.jobs.values() if j.state is JobState.WAITING))
            if wait_histogram is not None:
                waits.add_metric([name], wait_histogram.buckets(), wait_histogram.total)
            durations.add_metric([name], duration_histogram.buckets(), duration_histogram.total)
            connected.add_metric([name], 1 if status.connected else 0)
            frames.add_metric([name], t.frames)
            if status.mode == "live":
                live = True
                failures.add_metric([name], status.failures)
                connections.add_metric([name], status.connects)
            if status.recording is not None:
                recorded = True
                recording.add_metric([name], 1 if status.recording == "recording" else 0)
        yield hosts_online
        yield running
        yield max_jobs
        yield load
        yield jobs
        yield per_host
        yield waiting
        if waits.samples:
            yield waits
        yield durations
        yield connected
        yield frames
        if live:
            yield failures
            yield connections
        if recorded:
            yield recording


def metrics_text(sources: list[Source]) -> bytes:
    """/metrics for the schedulers of one server, in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ClusterCollector(sources))
    return generate_latest(registry)
