"""``icetools stats``: what happened in a build or a day, per host and for the cluster.

The Monitor keeps the aggregates (per host: jobs, failures, bytes and a histogram of compile
times, which gives exact means and percentiles in memory that does not grow with the jobs; for
the cluster: totals, the peak of jobs per second, the slowest compiles). :func:`report` turns a
Monitor that has replayed a recording into the answer, as data; :func:`render_report` into text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TextIO

from .capture import CaptureReader
from .recordings import GapRecord, format_duration, gap_text
from .jobs import host_name
from .monitor import MAX_ACTIVE_JOBS, Event, EventKind, HostCounters, Job, JobState, Monitor, Publisher, Totals
from .render import printable
from .replay import ReplayResult, replay, replay_file

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


def report(monitor: Monitor, why: WhyAnalysis | None = None) -> dict[str, Any]:
    """The answer to "what happened", from a Monitor that replayed a recording; with ``why``
    (attached to that Monitor and finished) also the answer to "why was it slow"."""
    t = monitor.totals
    return report_json(
        monitor.now, t, t.peak_jobs_per_second, t.peak_second, host_stats(monitor), monitor.slowest,
        why.to_json() if why is not None else {},
    )


def report_json(
    now: float,
    t: Totals,
    peak: int,
    peak_second: int | None,
    hosts: list[HostStats],
    slowest: list[tuple[int, int, str, str]],
    why: dict[str, Any],
) -> dict[str, Any]:
    """The report from its parts: the Monitor's (see :func:`report`) or a summary's (see
    icetools.summary.report_from)."""
    busiest = sorted(hosts, key=lambda h: (-h.counters.compiled, h.name))[:BUSIEST_HOSTS]
    first = t.first_host_seen or 0.0
    return {
        "duration": round(now - first, 3),  # to the end of the recording
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
        "busiest_hosts": [
            {"name": h.name, "compiled": h.counters.compiled} for h in busiest if h.counters.compiled
        ],
        "slowest_files": [
            {"file": file, "real_msec": msec, "job_id": job_id, "host": host}
            for msec, job_id, file, host in sorted(slowest, reverse=True)
        ],
        **why,
    }


def render_report(report: dict[str, Any], start: float | None = None) -> str:
    """The report as text for people; names and files escaped (see :func:`printable`).
    ``start``: the recording's start (Unix time), for the gaps' wall-clock times."""
    jobs = report["jobs"]
    lines = [
        f"{report['duration']:.1f} s: {jobs['remote']} remote jobs ({jobs['failed']} failed, "
        f"{jobs['lost']} lost with their host), {jobs['local']} local jobs "
        f"({jobs['rerun_locally']} re-runs of failed or lost compiles)",
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
    if "wait" in report:
        lines += render_why(report)
    if "gaps" in report:
        lines += render_gaps(report, start)
    return "\n".join(lines)


def render_gaps(report: dict[str, Any], start: float | None = None) -> list[str]:
    """The gaps between files (``stats`` over several files), as text: each as ``dump`` shows
    it (icetools.recordings.gap_text: its length and wall-clock times, given ``start``), after
    its seconds since the recording began."""
    gaps = report["gaps"]
    if not gaps:
        return ["", "gaps: none (the files follow one another)"]
    total = sum(g["seconds"] for g in gaps)
    lines = ["", f"gaps: {len(gaps)} without a recording, {format_duration(total)} in all"]
    for g in gaps:
        text = (
            gap_text(GapRecord(g["t"], g["until"]), start) if start is not None
            else f"--- no recording for {format_duration(g['seconds'])} ---"
        )
        lines.append(f"  {g['t']:>12.3f} s  {text}")
    return lines


def _ms(value: int | None) -> str:
    return "-" if value is None else str(value)


def _name(name: str | None, width: int) -> str:
    text = "-" if name is None else printable(name)
    return text if len(text) <= width else text[: width - 1] + "~"


def render_why(report: dict[str, Any]) -> list[str]:
    """The "why was it slow" part of the text report (the keys WhyAnalysis adds)."""
    wait = report["wait"]
    lines = ["", "waiting for a compile host (remote jobs, ms):", f"  {'submitter':<16} {'jobs':>6} {'p50':>7} {'p95':>7} {'max':>7}"]
    for name, w in [("(cluster)", wait["cluster"])] + [(w["name"], w) for w in wait["submitters"]]:
        lines.append(f"  {_name(name, 16):<16} {w['count']:>6} {_ms(w['p50_ms']):>7} {_ms(w['p95_ms']):>7} {_ms(w['max_ms']):>7}")
    held, saturated = report["waiting_with_free_slots_s"], report["saturated_s"]
    lines.append(
        f"  jobs waited {held:.1f} s while a slot was free (held back by the scheduler or by "
        f"environments) and {saturated:.1f} s with every slot taken (the cluster is too small)"
    )
    use = report["utilisation"]
    lines += ["", "slots (hosts that accept remote jobs, slot-seconds):", f"  {'host':<16} {'offered':>10} {'busy':>10} {'busy %':>7}"]
    for name, u in [("(cluster)", use["cluster"])] + [(u["name"], u) for u in use["hosts"]]:
        ratio = "-" if u["ratio"] is None else f"{100 * u['ratio']:.0f}"
        lines.append(f"  {_name(name, 16):<16} {u['offered_slot_s']:>10.1f} {u['busy_slot_s']:>10.1f} {ratio:>7}")
    builds = report["builds"]
    lines += ["", f"builds ({len(builds)}; a pause of {report['build_gap_s']:g} s or more without a request or a job running ends one):"]
    if builds:
        lines.append(
            f"  {'submitter':<14} {'start s':>9} {'wall s':>8} {'jobs':>5} {'remote':>6} {'local':>5} {'failed':>6} "
            f"{'lost':>4} {'parallel':>8} {'wait p95':>8}  slowest"
        )
    for b in builds:
        parallel = "-" if b["parallelism"] is None else f"{b['parallelism']:.2f}"
        lines.append(
            f"  {_name(b['submitter'], 14):<14} {b['start']:>9.1f} {b['wall_s']:>8.1f} {b['jobs']:>5} {b['remote']:>6} "
            f"{b['local']:>5} {b['failed']:>6} {b['lost']:>4} {parallel:>8} {_ms(b['wait_p95_ms']):>8}  "
            f"{printable(b['slowest_file']) if b['slowest_file'] else '-'}"
        )
    transfer = report["transfer"]
    if transfer:
        lines += ["", "transfer (run time on the monitor's clock minus the compile time each host measured, s):",
                  f"  {'host':<16} {'jobs':>6} {'run':>9} {'compile':>9} {'transfer':>9}"]
        lines += [
            f"  {_name(x['name'], 16):<16} {x['jobs']:>6} {x['run_s']:>9.1f} {x['compile_s']:>9.1f} {x['transfer_s']:>9.1f}"
            for x in transfer
        ]
    return lines


# ---- why is my build slow? ------------------------------------------------------------------
#
# Waits, slot use, builds and transfer time (issue 11; the definitions are in docs/analysis.md).
# One publisher follows the cluster in time order: remote jobs waiting, the slots hosts offer and
# the jobs taking them, each submitter's open build. When a job ends its figures are those of its
# row of `icetools jobs` (jobs.job_row, as in the trace; WhyAnalysis._take computes only the
# fields it needs, the same way, without building the row): a job is what `icetools jobs` says
# it is (tests/test_stats_why.py's check_against_jobs). Running sums, histograms and one open build per
# submitter: memory does not grow with the jobs.

#: A submitter's build ends after this many seconds without a request or a job of it running.
DEFAULT_GAP = 30.0
#: Waits are counted in whole milliseconds, exactly below this; above it to four significant
#: digits (rounded down), so a wait histogram holds at most ~10,000 + 9,000 per decade values.
EXACT_WAIT_MS = 10_000
#: Requests between two sweeps that close the builds whose gap has passed.
_SWEEP_REQUESTS = 4096
#: Jobs in flight beyond this are taken for lost (as the Monitor's MAX_ACTIVE_JOBS): the oldest
#: ends, unfinished, so memory stays bounded on a stream that never ends its jobs.
MAX_IN_FLIGHT = MAX_ACTIVE_JOBS


def _wait_bucket(ms: int) -> int:
    if ms < EXACT_WAIT_MS:
        return ms
    step = 10 ** (len(str(ms)) - 4)
    return ms - ms % step


class Waits:
    """How long jobs waited: a histogram of whole milliseconds (see EXACT_WAIT_MS), the count and
    the exact longest."""

    __slots__ = ("histogram", "count", "max_ms")

    def __init__(self) -> None:
        self.histogram: dict[int, int] = {}
        self.count = 0
        self.max_ms = 0

    def add(self, ms: int) -> None:
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms
        key = ms if ms < EXACT_WAIT_MS else _wait_bucket(ms)
        histogram = self.histogram
        histogram[key] = histogram.get(key, 0) + 1

    def merge(self, other: Waits) -> None:
        self.count += other.count
        if other.max_ms > self.max_ms:
            self.max_ms = other.max_ms
        histogram = self.histogram
        for key, n in other.histogram.items():
            histogram[key] = histogram.get(key, 0) + n

    def to_json(self) -> dict[str, int | None]:
        return {
            "count": self.count,
            "p50_ms": percentile(self.histogram, 50),
            "p95_ms": percentile(self.histogram, 95),
            "max_ms": self.max_ms if self.count else None,
        }


class _HostSlots:
    """One host (by the Monitor's id) as the slots see it: how many remote jobs it accepts now,
    how many run there, and the slot-seconds offered and used until ``last``."""

    __slots__ = ("name", "use", "slots", "running", "last", "report")

    def __init__(self, name: str, use: list[float], t: float) -> None:
        self.name = name
        self.use = use  # [offered, busy] slot-seconds, shared by every id of one host name
        self.slots = 0
        self.running = 0
        self.last = t
        self.report = ""  # the host's report its slots were last read from

    def advance(self, t: float) -> None:
        dt = t - self.last
        if dt > 0:
            use = self.use
            slots = self.slots
            use[0] += slots * dt
            running = self.running
            use[1] += (running if running < slots else slots) * dt
        self.last = t


def _free(slots: int, running: int) -> int:
    return slots - running if running < slots else 0


class _Build:
    """A submitter's build while it is open (then only its figures are kept)."""

    __slots__ = (
        "submitter", "start", "end", "active", "in_flight", "remote", "local", "failed", "lost",
        "unfinished", "run_ms", "waits", "wait_p95", "slowest", "slowest_file", "kept",
    )

    def __init__(self, submitter: str, at: float) -> None:
        self.submitter = submitter
        self.start = at
        self.end = at  # the last end (or start, or request) of its jobs
        self.active = at  # the last request or end of a job: the gap is counted from here
        self.in_flight = 0  # its jobs requested and not ended
        self.remote = self.local = self.failed = self.lost = self.unfinished = 0
        self.run_ms = 0.0  # the jobs' run times added up
        self.waits: Waits | None = Waits()  # (until it closes)
        self.wait_p95: int | None = None
        self.slowest = -1.0
        self.slowest_file: str | None = None
        #: Its waits after it closed, kept only where a summary needs them (icetools.summary:
        #: a submitter's first and last build of a file may join a build of the next file).
        self.kept: Waits | None = None

    def to_json(self) -> dict[str, Any]:
        wall = self.end - self.start
        run_s = self.run_ms / 1000
        return {
            "submitter": self.submitter,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "wall_s": round(wall, 3),
            "jobs": self.remote + self.local,
            "remote": self.remote,
            "local": self.local,
            "failed": self.failed,
            "lost": self.lost,
            "unfinished": self.unfinished,
            "run_s": round(run_s, 3),
            "parallelism": round(run_s / wall, 2) if wall > 0 else None,
            "wait_p95_ms": self.wait_p95,
            "slowest_file": self.slowest_file,
        }


#: What a job in flight holds: _WAITING (a remote job requested, not started), the _HostSlots
#: of the host running it (a remote job), or None (a local job: no slot the scheduler offers).
_WAITING = object()
_JOB_SUBMITTED = EventKind.JOB_SUBMITTED
_JOB_STARTED = EventKind.JOB_STARTED
_JOB_FINISHED = EventKind.JOB_FINISHED
_HOST_OFFLINE = EventKind.HOST_OFFLINE
_RESET = EventKind.RESET
_DONE = JobState.DONE
_FAILED = JobState.FAILED
_LOCAL_DONE = JobState.LOCAL_DONE


class WhyAnalysis(Publisher):
    """The "why is my build slow" figures of a recording. Attach it to the Monitor that replays
    the recording (``Monitor(publishers=[why])``), call :meth:`finish` after the last record,
    then :func:`report` (with it) or :meth:`to_json`.

    In time order it follows: remote jobs waiting (requested, not started); per host the slots
    it offers to remote jobs (MaxJobs while online, unless NoRemote) and the remote jobs running
    there, integrated into slot-seconds offered and busy per host name and into the time jobs
    waited with a slot free somewhere or with none free; per submitter its open build (a request
    after ``gap`` seconds without a request or a job of it in flight opens a new one). A job's
    end makes its row of ``icetools jobs``, which gives its wait, run time, outcome and the
    compile time measured on the host."""

    kinds = frozenset(EventKind)

    def __init__(self, gap: float = DEFAULT_GAP, *, keep_boundary_waits: bool = False) -> None:
        if not gap > 0:
            raise ValueError("the gap between builds must be positive")
        self.gap = gap
        self.use: dict[str, list[float]] = {}  # host name -> [offered, busy] slot-seconds
        self._hosts: dict[int, _HostSlots] = {}
        #: Jobs in flight by id: (what it holds, its build or None, the job).
        self._open: dict[int, tuple[Any, _Build | None, Job]] = {}
        self._waiting = 0  # remote jobs requested and not started
        self._free = 0  # free slots on hosts that accept remote jobs
        self._last: float | None = None
        self.held_s = 0.0  # jobs waited while a slot was free
        self.saturated_s = 0.0  # jobs waited and no slot was free
        #: Waits per submitter (a build's join when it closes), and of jobs whose submitter is
        #: not known; the cluster's are their sum.
        self.submitter_waits: dict[str, Waits] = {}
        self.unattributed_waits = Waits()
        #: Compile host -> [jobs, run ms, compile ms measured there].
        self.transfer: dict[str, list[float]] = {}
        self._builds: dict[str, _Build] = {}  # the open build of each submitter
        self.builds: list[_Build] = []  # closed builds
        self._requests = 0
        #: With keep_boundary_waits: the submitters whose first build has closed. Each
        #: submitter's first build and the builds open at the end keep their waits (_Build.kept).
        self._closed_once: set[str] | None = set() if keep_boundary_waits else None
        #: Hosts (by id) with an open build under "#id": they asked for jobs before their
        #: report named them (a format 2 file's carried frames come in the order received,
        #: so a running job's request comes before its host's latest report).
        self._unnamed_submitters: set[int] = set()
        #: What was summed at the last connect, and the carried jobs that had begun before the
        #: file did (their wait was in the file before: not counted here). See carried_settled.
        self._mark: tuple[float, float, dict[str, tuple[float, float]]] = (0.0, 0.0, {})
        self._no_wait: set[int] = set()

    # -- a file's carried frames --------------------------------------------------------------

    def carried_mark(self, t: float) -> None:
        """A connect: what was summed so far (the carried frames that may follow add nothing)."""
        self._mark = (self.held_s, self.saturated_s, {name: (u[0], u[1]) for name, u in self.use.items()})

    def carried_settled(self, t: float, monitor: Monitor) -> None:
        """The carried frames are applied (Monitor.carried_settled): they gave the state at the
        file's start ``t``, so slot-seconds and waiting count from ``t`` (what the frames'
        earlier times summed is taken back) and a carried job that had begun before ``t`` has
        its wait counted in the file it began in, not here."""
        held, saturated, use = self._mark
        self.held_s, self.saturated_s = held, saturated
        for name, u in self.use.items():
            u[0], u[1] = use.get(name, (0.0, 0.0))
        for h in self._hosts.values():
            if h.last < t:
                h.last = t
        if self._last is not None and self._last < t:
            self._last = t
        for _held, _build, job in self._open.values():
            if not job.local and job.started is not None:  # (a carried MON_JOB_BEGIN)
                self._no_wait.add(job.id)

    # -- events -------------------------------------------------------------------------------

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        # One method per kind: they run for nearly every frame of a recording.
        if kind is _JOB_SUBMITTED:
            return self._on_submitted
        if kind is _JOB_STARTED:
            return self._on_started
        if kind is _JOB_FINISHED:
            return self._on_finished
        if kind is _RESET:
            return self._on_reset
        return self._on_host

    def publish(self, event: Event, monitor: Monitor) -> None:
        self.receiver(event.kind)(event, monitor)  # type: ignore[misc]

    def _on_submitted(self, event: Event, monitor: Monitor) -> None:
        # A remote job's request (MON_GET_CS). (Each receiver first integrates the time jobs
        # waited up to this event, inlined.)
        _, t, _, job = event
        if self._waiting:
            dt = t - self._last  # type: ignore[operator]  # (set by the event that made one wait)
            if dt > 0:
                if self._free:
                    self.held_s += dt
                else:
                    self.saturated_s += dt
        self._last = t
        self._request(job, t, monitor)  # type: ignore[arg-type]

    def _request(self, job: Job, t: float, monitor: Monitor) -> None:
        """A request: a remote job's MON_GET_CS, a local job's MON_LOCAL_JOB_BEGIN."""
        job_id = job.id
        opened = self._open
        if job_id in opened:  # the id used again without the old job ending
            self._end(job_id, t, monitor)
        build = self._build(job.client_id, t, monitor)
        if job.local:
            opened[job_id] = (None, build, job)
        else:
            opened[job_id] = (_WAITING, build, job)
            self._waiting += 1
        if len(opened) > MAX_IN_FLIGHT:
            self._end(next(iter(opened)), t, monitor)

    def _on_started(self, event: Event, monitor: Monitor) -> None:
        _, t, _, job = event
        if self._waiting:
            dt = t - self._last  # type: ignore[operator]
            if dt > 0:
                if self._free:
                    self.held_s += dt
                else:
                    self.saturated_s += dt
        self._last = t
        if job.local:  # type: ignore[union-attr]  # (a local job's start is its request)
            self._request(job, t, monitor)  # type: ignore[arg-type]
            return
        # A remote job's MON_JOB_BEGIN (_HostSlots.advance inlined).
        job_id = job.id  # type: ignore[union-attr]
        opened = self._open
        entry = opened.get(job_id)
        if entry is None:  # requested before the recording: its start is its request
            build = self._build(job.client_id, t, monitor)  # type: ignore[union-attr]
        else:
            held, build, _ = entry
            if held is _WAITING:
                self._waiting -= 1
            elif held is not None:  # begun again (moved by the scheduler): its first slot is free again
                self._give_back(held, t)
        server_id = job.server_id  # type: ignore[union-attr]
        if server_id is None:
            opened[job_id] = (None, build, job)
            return
        h = self._hosts.get(server_id) or self._host(server_id, t, monitor)
        dt = t - h.last
        running = h.running
        if dt > 0:
            use = h.use
            slots = h.slots
            use[0] += slots * dt
            use[1] += (running if running < slots else slots) * dt
        h.last = t
        if running < h.slots:
            self._free -= 1
        h.running = running + 1
        opened[job_id] = (h, build, job)
        if len(opened) > MAX_IN_FLIGHT:
            self._end(next(iter(opened)), t, monitor)

    def _on_finished(self, event: Event, monitor: Monitor) -> None:
        _, t, _, job = event
        if self._waiting:
            dt = t - self._last  # type: ignore[operator]
            if dt > 0:
                if self._free:
                    self.held_s += dt
                else:
                    self.saturated_s += dt
        self._last = t
        entry = self._open.pop(job.id, None)  # type: ignore[union-attr]
        server_id = job.server_id  # type: ignore[union-attr]
        if entry is None:  # only its end was seen: no submitter, no build
            self._take(job, None, host_name(monitor, server_id), None)  # type: ignore[arg-type]
            return
        held, build, _ = entry
        if held is not None:
            if held is _WAITING:
                self._waiting -= 1
            else:  # (self._give_back, inlined)
                dt = t - held.last
                if dt > 0:
                    use = held.use
                    slots = held.slots
                    running = held.running
                    use[0] += slots * dt
                    use[1] += (running if running < slots else slots) * dt
                held.last = t
                held.running -= 1
                if held.running < held.slots:
                    self._free += 1
        server = monitor.hosts.get(server_id) if server_id is not None else None
        self._take(
            job, job.submitted if job.seen_submit else None,  # type: ignore[union-attr]
            server.name or None if server is not None else None, build,
        )

    def _on_reset(self, event: Event, monitor: Monitor) -> None:
        t = event.t
        self._integrate(t)
        self._reset(t, monitor)

    def _on_host(self, event: Event, monitor: Monitor) -> None:
        kind, t, host, _ = event
        if self._waiting:
            self._integrate(t)
        self._last = t
        h = self._hosts.get(host.id) or self._host(host.id, t, monitor)  # type: ignore[union-attr]
        if kind is _HOST_OFFLINE:
            slots = 0
            h.report = ""
        elif host.statmsg is h.report:  # type: ignore[union-attr]
            return  # the same report again (a monitor login, a host with nothing new)
        else:
            h.report = host.statmsg  # type: ignore[union-attr]
            slots = host.remote_slots()  # type: ignore[union-attr]
            if self._unnamed_submitters and host.id in self._unnamed_submitters and host.name:  # type: ignore[union-attr]
                self._name_build(host.id, host.name)  # type: ignore[union-attr]
            if host.name and h.name != host.name:  # type: ignore[union-attr]
                # Named only now (it was known by id from a job): its slots count under
                # its name from here on (before its first report it offered none).
                h.advance(t)
                h.name = host.name  # type: ignore[union-attr]
                h.use = self.use.setdefault(host.name, [0.0, 0.0])  # type: ignore[union-attr]
        if slots != h.slots:
            h.advance(t)
            self._free += _free(slots, h.running) - _free(h.slots, h.running)
            h.slots = slots

    def _name_build(self, host_id: int, name: str) -> None:
        """A host that asked for jobs before its report named it: its open build goes on under
        its name (unless that name has an open build of its own: then it stays "#id")."""
        self._unnamed_submitters.discard(host_id)
        build = self._builds.get(f"#{host_id}")
        if build is not None and name not in self._builds:
            del self._builds[build.submitter]
            build.submitter = name
            self._builds[name] = build

    def _integrate(self, t: float) -> None:
        """The time jobs waited, from the last event to ``t``: with a slot free or with none."""
        if self._waiting:
            dt = t - self._last  # type: ignore[operator]
            if dt > 0:
                if self._free:
                    self.held_s += dt
                else:
                    self.saturated_s += dt
        self._last = t

    def _give_back(self, h: _HostSlots, t: float) -> None:
        dt = t - h.last
        if dt > 0:
            use = h.use
            slots = h.slots
            running = h.running
            use[0] += slots * dt
            use[1] += (running if running < slots else slots) * dt
        h.last = t
        h.running -= 1
        if h.running < h.slots:
            self._free += 1

    def _host(self, host_id: int, t: float, monitor: Monitor) -> _HostSlots:
        name = host_name(monitor, host_id) or f"#{host_id}"
        use = self.use.get(name)
        if use is None:
            use = self.use[name] = [0.0, 0.0]
        h = self._hosts[host_id] = _HostSlots(name, use, t)
        return h

    def _reset(self, t: float, monitor: Monitor) -> None:
        """The Monitor forgot hosts and jobs (a reconnect), or the recording ends: what was in
        flight is over, unfinished; the slots stop counting."""
        for job_id in list(self._open):
            self._end(job_id, t, monitor)
        for h in self._hosts.values():
            h.advance(t)
        self._hosts.clear()
        self._unnamed_submitters.clear()  # (ids start over)
        self._waiting = self._free = 0

    def _end(self, job_id: int, t: float, monitor: Monitor) -> None:
        """A job in flight that will never end in this model: its row as it stands (unfinished)."""
        held, build, job = self._open.pop(job_id)
        if held is _WAITING:
            self._waiting -= 1
        elif held is not None:
            self._give_back(held, t)
        self._take(
            job, job.submitted if job.seen_submit else None,
            host_name(monitor, job.server_id) if job.server_id is not None else None, build,
        )

    # -- builds -------------------------------------------------------------------------------

    def _build(self, client_id: int | None, t: float, monitor: Monitor) -> _Build | None:
        """The build a request of ``client_id`` at ``t`` belongs to: its submitter's open one,
        or a new one after a quiet gap."""
        if client_id is None:
            return None  # (the submitter of a job begun before the recording is not known)
        host = monitor.hosts.get(client_id)
        name = host.name if host is not None and host.name else f"#{client_id}"
        build = self._builds.get(name)
        if build is None or (not build.in_flight and t - build.active >= self.gap):
            if build is not None:
                self._close(build)
            build = self._builds[name] = _Build(name, t)
            if host is None or not host.name:
                self._unnamed_submitters.add(client_id)
        build.in_flight += 1
        if t > build.active:
            build.active = t
        self._requests += 1
        if not self._requests & (_SWEEP_REQUESTS - 1):
            self._sweep(t)
        return build

    def _take(self, job: Job, requested: float | None, server: str | None, build: _Build | None) -> None:
        """A job that ended (or never will, in this model): into the figures of its build, its
        submitter and its compile host. The figures are those of its row of ``icetools jobs``
        (see jobs.job_row: ``requested`` as seen, ``server`` the compile host's name if known),
        computed here without building the row: this runs for every job."""
        state = job.state
        started = job.started
        if state is _DONE or state is _FAILED:  # a MON_JOB_DONE was seen
            outcome = ("lost" if job.lost else "failed") if state is _FAILED else "ok"
            ended = job.ended
            real_msec = job.real_msec
        elif state is _LOCAL_DONE:
            outcome = "lost" if job.lost else "ok"
            ended = job.ended
            real_msec = None
        else:
            outcome = "unfinished"
            ended = real_msec = None
        run_ms = None if started is None or ended is None else round((ended - started) * 1000, 3)
        remote = not job.local
        if remote:
            if real_msec is not None and run_ms is not None and outcome != "lost":
                if server is None and job.server_id is not None:
                    server = f"#{job.server_id}"
                if server is not None:
                    sums = self.transfer.get(server)
                    if sums is None:
                        sums = self.transfer[server] = [0, 0.0, 0.0]
                    sums[0] += 1
                    sums[1] += run_ms
                    sums[2] += real_msec
            no_wait = self._no_wait
            if no_wait and job.id in no_wait:
                no_wait.discard(job.id)  # (began before the file: waited in the one before)
            elif requested is not None and started is not None:
                waited = int(round((started - requested) * 1000, 3) + 0.5)  # (the row's wait_ms)
                waits = build.waits if build is not None else self.unattributed_waits
                assert waits is not None  # (a build with jobs in flight is open)
                waits.count += 1
                if waited > waits.max_ms:
                    waits.max_ms = waited
                key = waited if waited < EXACT_WAIT_MS else _wait_bucket(waited)
                histogram = waits.histogram
                histogram[key] = histogram.get(key, 0) + 1
        if build is None:
            return
        build.in_flight -= 1
        if remote:
            build.remote += 1
        else:
            build.local += 1
        if outcome != "ok":
            if outcome == "failed":
                build.failed += 1
            elif outcome == "lost":
                build.lost += 1
            else:
                build.unfinished += 1
        if ended is not None:
            if ended > build.end:
                build.end = ended
            if ended > build.active:
                build.active = ended
        else:
            last = started if started is not None else requested
            if last is not None and last > build.end:
                build.end = last
        if run_ms is not None:
            build.run_ms += run_ms
            if run_ms > build.slowest:
                build.slowest = run_ms
                build.slowest_file = job.file or None

    def _submitter_waits(self, submitter: str) -> Waits:
        waits = self.submitter_waits.get(submitter)
        if waits is None:
            waits = self.submitter_waits[submitter] = Waits()
        return waits

    def _close(self, build: _Build, *, last: bool = False) -> None:
        """A build is over: its waits join its submitter's, and only its figures are kept
        (and its waits, if it is a boundary build a summary needs: see keep_boundary_waits)."""
        if build.waits is not None:
            build.wait_p95 = percentile(build.waits.histogram, 95)
            self._submitter_waits(build.submitter).merge(build.waits)
            closed = self._closed_once
            if closed is not None and (last or build.submitter not in closed):
                closed.add(build.submitter)
                build.kept = build.waits
            build.waits = None
        self.builds.append(build)

    def _sweep(self, now: float) -> None:
        """Close the builds whose gap has passed (nothing of theirs in flight, quiet for the
        gap): no later request can join them."""
        for submitter, build in list(self._builds.items()):
            if not build.in_flight and now - build.active >= self.gap:
                self._close(build)
                del self._builds[submitter]

    def finish(self, monitor: Monitor) -> None:
        """The end of the recording: jobs in flight end there, unfinished, and so do the sums
        and the open builds."""
        t = monitor.now
        if self._waiting and self._last is not None and t > self._last:
            if self._free:
                self.held_s += t - self._last
            else:
                self.saturated_s += t - self._last
        self._last = t
        self._reset(t, monitor)
        for build in self._builds.values():
            self._close(build, last=True)
        self._builds.clear()

    # -- the answer ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return why_json(
            self.use, self.submitter_waits, self.unattributed_waits, self.held_s, self.saturated_s,
            self.gap, self.builds, self.transfer,
        )


def why_json(
    use: dict[str, list[float]],
    submitter_waits: dict[str, Waits],
    unattributed_waits: Waits,
    held_s: float,
    saturated_s: float,
    gap: float,
    builds: list[_Build],
    transfer: dict[str, list[float]],
) -> dict[str, Any]:
    """The "why slow" keys of the report, from WhyAnalysis' figures (or a summary's: see
    icetools.summary)."""
    offered = sum(u[0] for u in use.values())
    busy = sum(u[1] for u in use.values())
    cluster = Waits()
    for waits in (*submitter_waits.values(), unattributed_waits):
        cluster.merge(waits)
    return {
        "wait": {
            "cluster": cluster.to_json(),
            "submitters": [
                {"name": name, **waits.to_json()} for name, waits in sorted(submitter_waits.items())
            ],
        },
        "utilisation": {
            "cluster": _use(offered, busy),
            "hosts": [{"name": name, **_use(*u)} for name, u in sorted(use.items()) if u[0] > 0],
        },
        "waiting_with_free_slots_s": round(held_s, 3),
        "saturated_s": round(saturated_s, 3),
        "build_gap_s": gap,
        "builds": [b.to_json() for b in sorted(builds, key=lambda b: (b.start, b.submitter))],
        "transfer": [
            {
                "name": name,
                "jobs": int(jobs),
                "run_s": round(run / 1000, 3),
                "compile_s": round(real / 1000, 3),
                "transfer_s": round(max(0.0, run - real) / 1000, 3),
            }
            for name, (jobs, run, real) in sorted(transfer.items())
        ],
    }


def _use(offered: float, busy: float) -> dict[str, float | None]:
    return {
        "offered_slot_s": round(offered, 3),
        "busy_slot_s": round(busy, 3),
        "ratio": round(busy / offered, 3) if offered > 0 else None,
    }


def analyse(reader: CaptureReader, *, gap: float = DEFAULT_GAP, fast: bool = True,
            progress_stream: TextIO | None = None) -> tuple[dict[str, Any], ReplayResult]:
    """Replay a capture and return what ``icetools stats --json`` prints (the "why" keys
    included), with the replay's result. ``fast=False`` replays record by record."""
    why = WhyAnalysis(gap)
    monitor = Monitor(publishers=[why])
    if fast:
        result = replay_file(monitor, reader, progress_stream=progress_stream)
    else:
        result = replay(monitor, reader)
    why.finish(monitor)
    out = report(monitor, why)
    files = getattr(reader, "files", None)
    if files is not None and len(files) > 1:
        # Several files read as one (icetools.recordings): where nothing was recorded.
        out["gaps"] = gaps_json(reader.gaps)  # type: ignore[union-attr]
    return out, result


def gaps_json(gaps: list[GapRecord]) -> list[dict[str, float]]:
    """The gaps of a recording of several files, for ``stats --json``: from, to (seconds since
    the recording started) and how long."""
    return [
        {"t": round(g.t, 3), "until": round(g.until, 3), "seconds": round(g.until - g.t, 3)} for g in gaps
    ]
