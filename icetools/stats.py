"""``icetools stats``: what happened in a build or a day, per host and for the cluster.

The Monitor keeps the aggregates (per host: jobs, failures, bytes and a histogram of compile
times, which gives exact means and percentiles in memory that does not grow with the jobs; for
the cluster: totals, the peak of jobs per second, the slowest compiles). :func:`report` turns a
Monitor that has replayed a recording into the answer, as data; :func:`render_report` into text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .monitor import HostCounters, Monitor
from .render import printable

BUSIEST_HOSTS = 5


@dataclasses.dataclass(slots=True)
class HostStats:
    name: str
    id: int
    counters: HostCounters

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        times = c.compile_times
        count = sum(times.values())
        return {
            "id": self.id,
            "name": self.name,
            "compiled": c.compiled,  # remote jobs compiled here for others
            "submitted": c.submitted,  # remote jobs requested from here
            "local": c.local,  # local jobs run here
            "failed": c.failed,  # jobs compiled here that failed (lost ones included)
            "lost": c.lost,  # failed because this host went away
            "mean_msec": round(sum(v * n for v, n in times.items()) / count, 1) if count else None,
            "p95_msec": percentile(times, 95),
            "in_bytes": c.in_bytes,
            "out_bytes": c.out_bytes,
        }


def percentile(histogram: dict[int, int], pct: float) -> int | None:
    """Nearest-rank percentile of the values a histogram (value -> count) counts: an actual
    observed value, no interpolation."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, -(-total * pct // 100))  # ceil
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    raise AssertionError("unreachable: the ranks add up to the total")


def host_stats(monitor: Monitor) -> list[HostStats]:
    """Every host the Monitor has counted, by name (a daemon that logged in again is one host),
    plus hosts it only knows by id."""
    hosts = [
        HostStats(name, monitor.host_ids.get(name, 0), counters)
        for name, counters in monitor.host_counters.items()
    ]
    hosts += [
        HostStats(f"#{host.id}", host.id, host.counters)
        for host in monitor.hosts.values()
        if not host.name and (host.counters.compiled or host.counters.submitted or host.counters.local)
    ]
    return sorted(hosts, key=lambda h: (h.id, h.name))


def report(monitor: Monitor) -> dict[str, Any]:
    """The answer to "what happened", from a Monitor that replayed a recording."""
    hosts = host_stats(monitor)
    busiest = sorted(hosts, key=lambda h: (-h.counters.compiled, h.name))[:BUSIEST_HOSTS]
    t = monitor.totals
    first = t.first_host_seen or 0.0
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
        "peak_jobs_per_second": t.peak_jobs_per_second,
        "peak_second": t.peak_second,
        "reconnects": t.resets,
        "hosts": [h.to_json() for h in hosts],
        "busiest_hosts": [
            {"name": h.name, "compiled": h.counters.compiled} for h in busiest if h.counters.compiled
        ],
        "slowest_files": [
            {"file": file, "real_msec": msec, "job_id": job_id, "host": host}
            for msec, job_id, file, host in sorted(monitor.slowest, reverse=True)
        ],
    }


def render_report(report: dict[str, Any]) -> str:
    """The report as text for people; names and files escaped (see :func:`printable`)."""
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
            f"{printable(h['name'])[:16]:<16} {h['compiled']:>8} {h['submitted']:>9} {h['local']:>6} {h['failed']:>6} "
            f"{mean:>8} {p95:>7} {h['in_bytes'] / 1048576:>7.1f} {h['out_bytes'] / 1048576:>8.1f}"
        )
    if report["busiest_hosts"]:
        lines += ["", "busiest: " + ", ".join(f"{printable(h['name'])} ({h['compiled']})" for h in report["busiest_hosts"])]
    if report["slowest_files"]:
        lines += ["", "slowest compiles:"]
        lines += [f"  {f['real_msec']:>7} ms  {printable(f['host']):<12} {printable(f['file'])}" for f in report["slowest_files"]]
    return "\n".join(lines)
