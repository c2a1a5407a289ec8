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

from .monitor import Event, EventKind, Monitor, Publisher

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
    """Adds to the Monitor's own per-host counters what it does not keep: every compile time
    (for percentiles), jobs per second, the slowest files. It only listens to jobs finishing."""

    kinds = frozenset({EventKind.HOST_ADDED, EventKind.JOB_FINISHED})

    def __init__(self) -> None:
        self.compile_msec: dict[str, array.array] = {}
        self.per_second: Counter[int] = Counter()
        self.slowest: list[tuple[int, int, str, str]] = []  # (real_msec, job id, file, host)
        self.first_t: float | None = None

    def publish(self, event: Event, monitor: Monitor) -> None:
        if self.first_t is None:
            self.first_t = event.t  # the first host or job: where the story starts
        job = event.job
        if job is None:
            return
        self.per_second[int(event.t)] += 1
        if job.local or job.server_id is None:
            return
        host = monitor.hosts.get(job.server_id)
        name = host.name if host is not None and host.name else f"#{job.server_id}"
        if not job.lost:
            times = self.compile_msec.get(name)
            if times is None:
                times = self.compile_msec[name] = array.array("I")
            times.append(min(job.real_msec, 0xFFFFFFFF))
        entry = (job.real_msec, job.id, job.file, name)
        if len(self.slowest) < SLOWEST_FILES:
            heapq.heappush(self.slowest, entry)
        elif entry > self.slowest[0]:
            heapq.heapreplace(self.slowest, entry)

    def _hosts(self, monitor: Monitor) -> list[HostStats]:
        hosts = []
        names = set(monitor.host_counters) | set(self.compile_msec)
        for name in names:
            counters = monitor.host_counters.get(name)
            stats = HostStats(name, monitor.host_ids.get(name, 0))
            if counters is not None:
                stats.compiled, stats.submitted, stats.local = counters.compiled, counters.submitted, counters.local
                stats.failed, stats.lost = counters.failed, counters.lost
                stats.in_bytes, stats.out_bytes = counters.in_bytes, counters.out_bytes
            stats.compile_msec = self.compile_msec.get(name, array.array("I"))
            hosts.append(stats)
        return sorted(hosts, key=lambda h: (h.id, h.name))

    def report(self, monitor: Monitor) -> dict[str, Any]:
        hosts = self._hosts(monitor)
        busiest = sorted(hosts, key=lambda h: (-h.compiled, h.name))[:BUSIEST_HOSTS]
        peak_second, peak = max(self.per_second.items(), key=lambda kv: (kv[1], -kv[0]), default=(None, 0))
        first = self.first_t or 0.0
        t = monitor.totals
        return {
            "duration": round(monitor.now - first, 3),  # to the end of the recording
            "jobs": {
                "remote": t.remote_done,
                "local": t.local_started,
                "failed": t.remote_failed,
                "lost": t.lost,
                "rerun_locally": t.reruns,
                "unseen": t.unseen,
            },
            "peak_jobs_per_second": peak,
            "peak_second": peak_second,
            "reconnects": t.resets,
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
