"""``icetools stats``: what happened in a build or a day, per host and for the cluster.

A :class:`StatsCollector` is a Monitor publisher: it sees every job as it finishes and keeps just
enough to answer (per-host compile times as a compact array for percentiles, jobs per second by
whole second, the slowest files in a small heap), so a day of a busy cluster fits in memory.
"""

from __future__ import annotations

import array
import dataclasses
import heapq
from collections import Counter
from typing import Any

from .monitor import Event, EventKind, Job, Monitor, Publisher

SLOWEST_FILES = 10
BUSIEST_HOSTS = 5


@dataclasses.dataclass(slots=True)
class HostStats:
    name: str
    id: int
    compiled: int = 0  # remote jobs compiled here for others
    submitted: int = 0  # remote jobs requested from here
    local: int = 0  # local jobs run here
    failed: int = 0  # jobs compiled here that failed (lost ones included)
    lost: int = 0  # failed because this host went away
    in_bytes: int = 0
    out_bytes: int = 0
    compile_msec: array.array = dataclasses.field(default_factory=lambda: array.array("I"))

    def to_json(self) -> dict[str, Any]:
        times = self.compile_msec
        return {
            "id": self.id,
            "name": self.name,
            "compiled": self.compiled,
            "submitted": self.submitted,
            "local": self.local,
            "failed": self.failed,
            "lost": self.lost,
            "mean_msec": round(sum(times) / len(times), 1) if times else None,
            "p95_msec": percentile(times, 95),
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
        }


def percentile(values: array.array, pct: float) -> int | None:
    """Nearest-rank percentile (no interpolation: an actual observed value)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return int(ordered[int(rank) - 1])


class StatsCollector(Publisher):
    def __init__(self) -> None:
        self.hosts: dict[str, HostStats] = {}
        self.per_second: Counter[int] = Counter()
        self.slowest: list[tuple[int, int, str, str]] = []  # (real_msec, job id, file, host)
        self.remote = self.local = self.failed = self.lost = self.reruns = 0
        self.first_t: float | None = None
        self.last_t = 0.0

    def _host(self, monitor: Monitor, host_id: int | None) -> HostStats | None:
        if host_id is None:
            return None
        host = monitor.hosts.get(host_id)
        name = host.name if host is not None and host.name else f"#{host_id}"
        stats = self.hosts.get(name)
        if stats is None:
            stats = self.hosts[name] = HostStats(name, host_id)
        stats.id = host_id  # the latest id of a host that logged in again
        return stats

    def publish(self, event: Event, monitor: Monitor) -> None:
        kind = event.kind
        if self.first_t is None:
            self.first_t = event.t
        self.last_t = event.t
        job = event.job
        if kind is EventKind.JOB_SUBMITTED and job is not None:
            client = self._host(monitor, job.client_id)
            if client is not None:
                client.submitted += 1
        elif kind is EventKind.JOB_STARTED and job is not None and job.local:
            host = self._host(monitor, job.client_id)
            if host is not None:
                host.local += 1
            self.local += 1
            if job.rerun_of is not None:
                self.reruns += 1
        elif kind is EventKind.JOB_FINISHED and job is not None:
            self.per_second[int(event.t)] += 1
            if not job.local:
                self._remote_done(monitor, job)

    def _remote_done(self, monitor: Monitor, job: Job) -> None:
        self.remote += 1
        failed = job.exit_code != 0
        if failed:
            self.failed += 1
            self.lost += job.lost
        server = self._host(monitor, job.server_id)
        if server is None:
            return
        server.compiled += 1
        server.in_bytes += job.in_uncompressed
        server.out_bytes += job.out_uncompressed
        if failed:
            server.failed += 1
            server.lost += job.lost
        if not job.lost:
            server.compile_msec.append(min(job.real_msec, 0xFFFFFFFF))
        entry = (job.real_msec, job.id, job.file, server.name)
        if len(self.slowest) < SLOWEST_FILES:
            heapq.heappush(self.slowest, entry)
        elif entry > self.slowest[0]:
            heapq.heapreplace(self.slowest, entry)

    def report(self, monitor: Monitor) -> dict[str, Any]:
        hosts = sorted(self.hosts.values(), key=lambda h: (h.id, h.name))
        busiest = sorted(hosts, key=lambda h: (-h.compiled, h.name))[:BUSIEST_HOSTS]
        peak_second, peak = max(self.per_second.items(), key=lambda kv: (kv[1], -kv[0]), default=(None, 0))
        first = self.first_t or 0.0
        return {
            "duration": round(self.last_t - first, 3),
            "jobs": {
                "remote": self.remote,
                "local": self.local,
                "failed": self.failed,
                "lost": self.lost,
                "rerun_locally": self.reruns,
                "unseen": monitor.totals.unseen,
            },
            "peak_jobs_per_second": peak,
            "peak_second": peak_second,
            "reconnects": monitor.totals.resets,
            "hosts": [h.to_json() for h in hosts],
            "busiest_hosts": [{"name": h.name, "compiled": h.compiled} for h in busiest if h.compiled],
            "slowest_files": [
                {"file": file, "real_msec": msec, "job_id": job_id, "host": host}
                for msec, job_id, file, host in sorted(self.slowest, reverse=True)
            ],
        }


def render_report(report: dict[str, Any]) -> str:
    jobs = report["jobs"]
    lines = [
        f"{report['duration']:.1f} s: {jobs['remote']} remote jobs ({jobs['failed']} failed, "
        f"{jobs['lost']} lost with their host), {jobs['local']} local jobs "
        f"({jobs['rerun_locally']} re-runs of failed compiles)",
        f"peak: {report['peak_jobs_per_second']} jobs finished in one second"
        + (f" (at {report['peak_second']} s)" if report["peak_second"] is not None else ""),
    ]
    if report["reconnects"]:
        lines.append(f"the scheduler connection was re-established {report['reconnects']} times")
    lines += ["", f"{'host':<16} {'compiled':>8} {'submitted':>9} {'local':>6} {'failed':>6} {'mean ms':>8} {'p95 ms':>7} {'in MiB':>7} {'out MiB':>8}"]
    for h in report["hosts"]:
        mean = "-" if h["mean_msec"] is None else f"{h['mean_msec']:.0f}"
        p95 = "-" if h["p95_msec"] is None else str(h["p95_msec"])
        lines.append(
            f"{h['name'][:16]:<16} {h['compiled']:>8} {h['submitted']:>9} {h['local']:>6} {h['failed']:>6} "
            f"{mean:>8} {p95:>7} {h['in_bytes'] / 1048576:>7.1f} {h['out_bytes'] / 1048576:>8.1f}"
        )
    if report["busiest_hosts"]:
        lines += ["", "busiest: " + ", ".join(f"{h['name']} ({h['compiled']})" for h in report["busiest_hosts"])]
    if report["slowest_files"]:
        lines += ["", "slowest compiles:"]
        lines += [f"  {f['real_msec']:>7} ms  {f['host']:<12} {f['file']}" for f in report["slowest_files"]]
    return "\n".join(lines)
