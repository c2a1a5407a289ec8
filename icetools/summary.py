"""Per-file summaries for ``stats`` over many files: computed once, cached, merged.

What ``stats`` needs from a capture (the Monitor's aggregates and WhyAnalysis' figures, see
icetools/stats.py) is kept as a :class:`Summary`: counts, histograms, per-host aggregates,
slot-seconds, builds, transfer, the frame and decode counts of the file read alone (its
carried frames the state at its start, counting nothing: Monitor.carried_settled), plus what
the file's edges need so that summaries of consecutive files merge into exactly the figures of
reading the files as one recording with icetools.recordings (docs/analysis.md, "Many files:
cached summaries"):

* at the end: the jobs still in flight (their effect, as unfinished, is *pending*: applied
  when the file is the last one or a gap follows, which forgets them at its start; when the
  next file continues this one and carries them, only the wait of those that had begun here),
  each submitter's last build with its waits (it may go on in the next file);
* at the start: each submitter's first build with its waits, the counters a host had before
  its name was known (lost when the name was already counted before), the time of the first
  connect record, the jobs its carried frames gave;
* the times jobs finished (the peak second depends on where the next file's seconds fall).

:func:`summarise` reads one file; :meth:`Summary.merge` appends the next; :func:`report_from`
gives what ``stats --json`` prints. :func:`summaries` finds them in icetools' cache (beside the
seek index, see icetools/index.py) or computes the missing ones, a process per core.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import copy
import dataclasses
import hashlib
import io
import itertools
import math
import os
import pickle
import signal
import stat
import tempfile
import zlib
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .capture import CaptureReader, ConnectRecord
from .errors import IcetoolsError
from .index import cache_dir
from .jobs import host_name
from .monitor import (
    RERUN_WINDOW, SLOWEST_JOBS, Event, EventKind, Host, HostCounters, Job, Monitor, Publisher, Totals, _stem,
)
from .replay import replay_file
from .stats import DEFAULT_GAP, HostStats, Waits, WhyAnalysis, _Build, percentile, report_json, why_json

#: Changes whenever what a summary holds does: a cached summary of another version is rebuilt.
SUMMARY_VERSION = 2
SUMMARY_MAGIC = b"ICETSUM1"

#: Totals fields that add up across files.
_ADDITIVE = (
    "frames", "submitted", "remote_done", "remote_failed", "lost", "local_started", "local_done",
    "reruns", "unseen", "resets", "in_bytes", "out_bytes", "compile_msec",
)
_COUNTER_FIELDS = ("compiled", "submitted", "local", "failed", "lost", "compile_msec", "in_bytes", "out_bytes")


class _NotingDict(dict):  # type: ignore[type-arg]
    """The Monitor's pending failures, noting every key ever set (a failure of this file)."""

    def __init__(self) -> None:
        super().__init__()
        self.noted: set[Any] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        self.noted.add(key)
        super().__setitem__(key, value)


class _SummaryMonitor(Monitor):
    """The Monitor, noting what a summary needs from its edges: the first connect's time and,
    for each host name first counted in this file, the counters its host had before the name
    was known (in a stream where the name was counted before, those are dropped: see
    Monitor._counters)."""

    def __init__(self, publishers: Sequence[Publisher]) -> None:
        super().__init__(publishers=publishers)
        self.first_connect: float | None = None
        self.rotated = False
        self.adopted: dict[str, HostCounters] = {}
        #: Re-runs across the start (see Summary.reruns_open): the failures of this file by
        #: (submitter id, stem) so far, and its local jobs that matched no failure here but
        #: could match one of the file before (its first RERUN_WINDOW seconds, once per key).
        self._failed_for_rerun = _NotingDict()
        self.rerun_from: float | None = None  # (set at the first connect)
        self.carried_jobs: set[int] = set()  # the jobs the carried frames gave
        self.rerun_candidates: list[tuple[float, tuple[int | None, str]]] = []
        self._candidate_keys: set[tuple[int | None, str]] = set()

    def reset(self, t: float) -> None:
        super().reset(t)
        self.rerun_from = None  # (nothing before a reconnect can be re-run after it)

    def _on_local_begin(self, msg: Any, t: float) -> None:
        before = self.totals.reruns
        super()._on_local_begin(msg, t)
        start = self.rerun_from
        if start is not None and self.totals.reruns == before and t - start <= RERUN_WINDOW:
            host_id, _, _, file = msg
            if file:
                key = (host_id, _stem(file))
                if key not in self._failed_for_rerun.noted and key not in self._candidate_keys:
                    self._candidate_keys.add(key)
                    self.rerun_candidates.append((t, key))


    def connected(self, protocol: int, t: float) -> None:
        first = self.first_connect is None
        if first:
            self.first_connect = t
        super().connected(protocol, t)
        if first:
            self.rerun_from = t

    def carried_settled(self, t: float) -> None:
        if t == self.first_connect and not self.carried_jobs:
            self.carried_jobs = set(self.jobs)
            # The names the carried frames gave were counted in the file before (what their
            # hosts counted before being named came with the carried frames: taken back too).
            self.adopted.clear()
            # (their local jobs are no re-runs of anything in the file before)
            self.rerun_candidates.clear()
            self._candidate_keys.clear()
        super().carried_settled(t)

    def _counters(self, host: Host) -> HostCounters:
        name = host.name
        if name and name not in self.host_counters:
            self.adopted[name] = _copy_counters(host.counters)
        return super()._counters(host)


class _FinishTimes(Publisher):
    """When each job finished (remote and local): the peak second of merged files."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        if kind is not EventKind.JOB_FINISHED:
            return None
        append = self.times.append

        def on_finished(event: Event, monitor: Monitor) -> None:
            append(event[1])

        return on_finished


class _Finishes:
    """One file's finish times (µs, delta-coded, compressed) and its seconds ranked by the most
    jobs any whole second (wherever it falls) that overlaps them can hold."""

    __slots__ = ("offset", "blob", "ranked", "first", "last", "_us")

    def __init__(self, times: list[float]) -> None:
        self.offset = 0  # µs from the summary's start to this file's start (see _offset_us)
        us = [round(t * 1_000_000) for t in times]
        deltas = array("q", [us[0]] if us else [])
        deltas.extend(b - a for a, b in zip(us, us[1:]))
        self.blob = zlib.compress(deltas.tobytes(), 1)
        self.first = times[0] if times else None
        self.last = times[-1] if times else None
        per_second: dict[int, int] = {}
        for t in times:
            s = math.floor(t)
            per_second[s] = per_second.get(s, 0) + 1
        # A whole second of the merged stream covers two consecutive seconds of this file (its
        # offset is not whole): at most c[i] + c[i + 1] jobs. A second touched by file second
        # j is bounded by the larger of the two pairs j is in.
        ranked = sorted(
            ((max(c + per_second.get(s - 1, 0), c + per_second.get(s + 1, 0)), s) for s, c in per_second.items()),
            reverse=True,
        )
        self.ranked = zlib.compress(array("q", itertools.chain.from_iterable(ranked)).tobytes(), 1)
        self._us: Sequence[int] | None = us

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.offset, self.blob, self.ranked, self.first, self.last)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.offset, self.blob, self.ranked, self.first, self.last = state
        self._us = None

    def seconds(self) -> tuple[int, int] | None:
        """The first and last second of the merged stream in which jobs of this file finished."""
        if self.first is None or self.last is None:
            return None
        return _shift(self.first, self.offset) // 1_000_000, _shift(self.last, self.offset) // 1_000_000

    def candidates(self) -> array[int]:
        ranked = array("q")
        ranked.frombytes(zlib.decompress(self.ranked))
        return ranked

    def times_us(self) -> Sequence[int]:
        us = self._us
        if us is None:
            deltas = array("q")
            deltas.frombytes(zlib.decompress(self.blob))
            us = self._us = array("q", itertools.accumulate(deltas))  # (8 bytes a job)
        return us

    def count(self, second: int) -> int:
        """Jobs of this file that finished in ``second`` of the merged stream, whose times are
        (µs + offset) / 1e6: whole µs, so its seconds begin at exact µs (below 2^33 s)."""
        us = self.times_us()
        o = self.offset
        return bisect.bisect_left(us, (second + 1) * 1_000_000 - o) - bisect.bisect_left(us, second * 1_000_000 - o)

    def seconds_of(self, file_second: int) -> set[int]:
        """The seconds of the merged stream that the jobs finished in ``file_second`` of this
        file fall in (one or two)."""
        us = self.times_us()
        lo = bisect.bisect_left(us, file_second * 1_000_000)
        hi = bisect.bisect_left(us, (file_second + 1) * 1_000_000)
        o = self.offset
        return {(us[lo] + o) // 1_000_000, (us[hi - 1] + o) // 1_000_000}


def _copy_counters(c: HostCounters) -> HostCounters:
    return dataclasses.replace(c, compile_times=dict(c.compile_times))


def _add_counters(into: HostCounters, c: HostCounters, sign: int = 1) -> None:
    for name in _COUNTER_FIELDS:
        setattr(into, name, getattr(into, name) + sign * getattr(c, name))
    times = into.compile_times
    for v, n in c.compile_times.items():
        left = times.get(v, 0) + sign * n
        if left:
            times[v] = left
        else:
            times.pop(v, None)


class _Pending:
    """A job in flight at the end of a file: what it adds, unfinished, to its build and waits
    when nothing continues it (WhyAnalysis._end, applied later)."""

    __slots__ = ("job", "requested", "server", "build")

    def __init__(self, job: Job, requested: float | None, server: str | None, build: int | None) -> None:
        self.job = job
        self.requested = requested
        self.server = server
        self.build = build  # index into Summary.builds


@dataclasses.dataclass(eq=False)
class Summary:
    """What ``stats`` needs from one file or from consecutive files merged. Times are seconds
    since ``start`` (the first file's header start)."""

    start: float
    gap: float
    files: list[str]
    scheduler: str  # the header's, of the first file
    netname: str | None  # format 2 header keys of the last file (None when absent)
    series: str | None
    part: int | None
    rotated: bool  # (of the first file) its first connect record continues the previous part
    end: float  # the Monitor's clock at the end (the last record)
    first_connect: float  # the first connect record (where its own time range begins)
    frames: int
    undecodable: int
    warnings: list[str]
    totals: Totals  # additive fields and first_host_seen; the peak is below
    peak: int  # -1 once merged: report_from works it out from ``finishes``
    peak_second: int | None
    finishes: list[_Finishes]
    host_counters: dict[str, HostCounters]
    adopted: dict[str, HostCounters]
    host_ids: dict[str, int]
    unnamed: list[tuple[int, HostCounters]]  # hosts known only by id at the end
    slowest: list[tuple[int, int, str, str]]
    use: dict[str, list[float]]
    held_s: float
    saturated_s: float
    submitter_waits: dict[str, Waits]
    unattributed_waits: Waits
    transfer: dict[str, list[float]]
    builds: list[_Build]
    pending: list[_Pending]
    #: The first file's carried frames (format 2): how many, and the jobs they carried (their
    #: ids). They gave the state at its start and counted nothing (Monitor.carried_settled).
    carried: int = 0
    carried_jobs: set[int] = dataclasses.field(default_factory=set)
    #: Read with salvage (a file after a gap is read again the same way: see merged()).
    salvage: bool = False
    #: Its carried frames' times were clamped to its first connect record (as after a gap).
    clamped: bool = False
    #: Failed remote jobs at the end not re-run yet: (submitter id, stem) -> (job id, time);
    #: and local jobs of the first RERUN_WINDOW seconds that matched none here (time, key).
    #: When the next file continues this one, its local job may re-run a failure of this one.
    reruns_open: dict[tuple[int | None, str], tuple[int, float]] = dataclasses.field(default_factory=dict)
    rerun_candidates: list[tuple[float, tuple[int | None, str]]] = dataclasses.field(default_factory=list)
    rerun_failed: set[tuple[int | None, str]] = dataclasses.field(default_factory=set)  # every failure's key
    #: Where nothing was recorded: (end of a file, start of the next) for each next file that
    #: does not continue the one before, in seconds of the recording (icetools.recordings'
    #: GapRecord).
    gaps: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    #: The file ended with an end record: only such a summary is cached (a recording still
    #: being written changes size at every run: its summaries would pile up in the cache).
    complete: bool = True

    # -- merging ------------------------------------------------------------------------------

    def merge(self, nxt: Summary, continues: bool) -> Summary:
        """Append the summary of the file that follows (``nxt`` is consumed). ``continues``:
        it continues this one (same series, next part, a rotated connect: its carried frames
        were live here), else there is a gap (icetools.recordings, Monitor.gap): the model
        forgets hosts and jobs where this file ends, counts nothing until the next file's first
        connect, and counts no reconnect."""
        if nxt.gap != self.gap:
            raise ValueError("summaries made with different --gap values do not merge")
        o = _offset_us(self.start, nxt.start)
        if continues:
            # One connection goes on: no reconnect. The next file's summary is its share alone
            # (its carried frames gave its start state, counted nothing: Monitor.carried_settled).
            # The jobs in flight here that it carried end there; of those, one that had begun
            # here has its wait counted here (the next file leaves it out), the rest of it there.
            # Those it did not carry stay in flight.
            taken = nxt.carried_jobs
            if taken:
                waited = [p for p in self.pending if p.job.id in taken and p.job.started is not None]
                self.pending = [p for p in self.pending if p.job.id not in taken]
                self._count_waits(waited)
            # A local job of the next file may re-run a failure of this one (Monitor:
            # within RERUN_WINDOW seconds, the same submitter and file stem).
            for t, key in nxt.rerun_candidates:
                failed = self.reruns_open.pop(key, None)
                if failed is not None and _at(t, o) - failed[1] <= RERUN_WINDOW:
                    self.totals.reruns += 1
            for key in nxt.rerun_failed:  # (a failure there replaced the one here)
                self.reruns_open.pop(key, None)
            self.reruns_open.update({k: (j, _at(t, o)) for k, (j, t) in nxt.reruns_open.items()})
        else:
            # A gap (icetools.recordings, Monitor.gap): the model forgets hosts and jobs where
            # this file ends; the jobs in flight end there, unfinished; nothing is counted in
            # the gap (no slot-seconds, no waiting) and it is no reconnect. The next file starts
            # afresh at its connect record (its summary alone, its carried frames clamped to
            # that record's time: see merged()).
            self.gaps.append((self.end, max(self.end, o / 1_000_000)))
            self._apply_pending()
            self.reruns_open = {k: (j, _at(t, o)) for k, (j, t) in nxt.reruns_open.items()}
        t, n = self.totals, nxt.totals
        for name in _ADDITIVE:
            setattr(t, name, getattr(t, name) + getattr(n, name))
        if t.first_host_seen is None and n.first_host_seen is not None:
            t.first_host_seen = _at(n.first_host_seen, o)
        # Host counters by name; a name already counted takes over a host that was known by id
        # only until then: what that host had counted before is dropped (Monitor._counters).
        for name, counters in nxt.host_counters.items():
            mine = self.host_counters.get(name)
            if mine is None:
                self.host_counters[name] = counters
                continue
            _add_counters(mine, counters)
            adopted = nxt.adopted.get(name)
            if adopted is not None:
                _add_counters(mine, adopted, -1)
        for name, adopted in nxt.adopted.items():
            self.adopted.setdefault(name, adopted)
        self.host_ids.update(nxt.host_ids)
        if continues:  # the same hosts go on
            ids = {host_id for host_id, _ in nxt.unnamed}
            self.unnamed = [u for u in self.unnamed if u[0] not in ids] + nxt.unnamed
        else:
            self.unnamed = nxt.unnamed  # (the reset forgot the hosts of before)
        self.slowest = sorted(self.slowest + nxt.slowest, reverse=True)[:SLOWEST_JOBS]
        for f in nxt.finishes:
            f.offset += o
        self.finishes += nxt.finishes
        self.peak = -1  # to be worked out from the finish times (once: see report_from)
        self.frames += nxt.frames
        self.undecodable += nxt.undecodable
        self.warnings += nxt.warnings
        self.files += nxt.files
        # Why slow.
        for name, (offered, busy) in nxt.use.items():
            use = self.use.setdefault(name, [0.0, 0.0])
            use[0] += offered
            use[1] += busy
        self.held_s += nxt.held_s
        self.saturated_s += nxt.saturated_s
        for name, waits in nxt.submitter_waits.items():
            mine_w = self.submitter_waits.get(name)
            if mine_w is None:
                self.submitter_waits[name] = waits
            else:
                mine_w.merge(waits)
        self.unattributed_waits.merge(nxt.unattributed_waits)
        for name, sums in nxt.transfer.items():
            mine_t = self.transfer.get(name)
            if mine_t is None:
                self.transfer[name] = sums
            else:
                for i in range(3):
                    mine_t[i] += sums[i]
        self._merge_builds(nxt, o)
        self.end = _at(nxt.end, o)
        self.pending += nxt.pending
        self.netname, self.series, self.part = nxt.netname, nxt.series, nxt.part
        return self

    def continued_by(self, nxt: Summary) -> bool:
        """Whether ``nxt`` continues this file (docs/capture-format.md: same series, the next
        part, a rotated first connect) rather than following a gap."""
        return (
            self.series is not None and nxt.series == self.series and self.part is not None
            and nxt.part == self.part + 1 and nxt.rotated
        )

    def _merge_builds(self, nxt: Summary, o: int) -> None:
        """A submitter's first build in ``nxt`` goes on with its last build here when it began
        less than the gap after that one's last activity (WhyAnalysis._build: after a reset
        nothing of it is in flight)."""
        last = _last_builds(self.builds)
        for b in nxt.builds:
            b.start = _at(b.start, o)
            b.end = _at(b.end, o)
            b.active = _at(b.active, o)
        where: dict[int, int] = {}  # nxt's build index -> its index here
        for submitter, bi in _first_builds(nxt.builds).items():
            mine = last.get(submitter)
            if mine is None:
                continue
            b, a = nxt.builds[bi], self.builds[mine]
            if b.start - a.active >= self.gap:
                continue
            a.end = max(a.end, b.end)
            a.active = max(a.active, b.active)
            a.remote += b.remote
            a.local += b.local
            a.failed += b.failed
            a.lost += b.lost
            a.unfinished += b.unfinished
            a.run_ms += b.run_ms
            if b.slowest > a.slowest:
                a.slowest = b.slowest
                a.slowest_file = b.slowest_file
            waits = a.kept if a.kept is not None else Waits()
            if b.kept is not None:
                waits.merge(b.kept)
            a.kept = waits
            a.wait_p95 = percentile(waits.histogram, 95)
            where[bi] = mine
        for bi, b in enumerate(nxt.builds):
            if bi not in where:
                where[bi] = len(self.builds)
                self.builds.append(b)
        for p in nxt.pending:
            if p.build is not None:
                p.build = where[p.build]

    def _count_waits(self, begun: list[_Pending]) -> None:
        """The waits of jobs that began in this file and end in the next one (which does not
        count them): into their build's and submitter's waits, as WhyAnalysis._take would at
        their end (only the wait: the rest of the job is counted in the next file)."""
        for p in begun:
            job = p.job
            if p.requested is None or job.local or job.started is None:
                continue
            waits = Waits()
            waits.add(int(round((job.started - p.requested) * 1000, 3) + 0.5))  # (the row's wait_ms)
            if p.build is None:
                self.unattributed_waits.merge(waits)
                continue
            build = self.builds[p.build]
            self._keep_waits(build, waits)

    def _keep_waits(self, build: Any, waits: Waits) -> None:
        """Add ``waits`` (of jobs that ended late) to a build's kept waits and its submitter's."""
        kept = build.kept if build.kept is not None else Waits()
        kept.merge(waits)
        build.kept = kept
        build.wait_p95 = percentile(kept.histogram, 95)
        submitter = self.submitter_waits.get(build.submitter)
        if submitter is None:
            submitter = self.submitter_waits[build.submitter] = Waits()
        submitter.merge(waits)

    def _apply_pending(self) -> None:
        """The jobs in flight at the end end there, unfinished (WhyAnalysis._end)."""
        if not self.pending:
            return
        why = WhyAnalysis(self.gap)
        why.transfer = self.transfer
        why.unattributed_waits = self.unattributed_waits
        touched: dict[int, Waits] = {}
        for p in self.pending:
            build = None
            if p.build is not None:
                build = self.builds[p.build]
                if p.build not in touched:
                    touched[p.build] = build.waits = Waits()
                build.in_flight = 1
            why._take(p.job, p.requested, p.server, build)
        for bi, waits in touched.items():
            build = self.builds[bi]
            build.waits = None
            self._keep_waits(build, waits)
        self.pending = []


def _offset_us(first_start: float, start: float) -> int:
    """A file's offset in a recording of several files: its start minus the first file's, in
    whole µs (icetools.recordings: a time there is (its µs in the file + this) / 1e6, the float
    one file would give, not a sum off in its last digit)."""
    return round((start - first_start) * 1_000_000)


def _shift(t: float, offset_us: int) -> int:
    """A time of a file (its µs / 1e6, as the reader made it) in µs of the recording."""
    return round(t * 1_000_000) + offset_us


def _at(t: float, offset_us: int) -> float:
    """A time of a file in seconds of the recording (see _offset_us)."""
    return _shift(t, offset_us) / 1_000_000


def _first_builds(builds: list[_Build]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, b in enumerate(builds):
        j = first.get(b.submitter)
        if j is None or b.start < builds[j].start:
            first[b.submitter] = i
    return first


def _last_builds(builds: list[_Build]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, b in enumerate(builds):
        j = last.get(b.submitter)
        if j is None or b.start > builds[j].start:
            last[b.submitter] = i
    return last


def _merged_peak(parts: list[_Finishes]) -> tuple[int, int | None]:
    """The most jobs finished within one whole second of the merged stream, and the first such
    second (what Monitor._count_finished finds reading the files as one stream), from the
    files' finish times (in time order): exact counts only for the seconds that could hold the
    most."""
    best, best_second = 0, None
    ranges = [p.seconds() for p in parts]
    done: set[int] = set()

    def consider(second: int, i: int) -> None:
        """Count ``second`` exactly: in file i and in the files beside it that reach it."""
        nonlocal best, best_second
        if second in done:
            return
        done.add(second)
        n = parts[i].count(second)
        for step in (-1, 1):
            j = i + step
            while 0 <= j < len(parts):
                r = ranges[j]
                if r is not None:
                    if (r[1] < second) if step < 0 else (r[0] > second):
                        break
                    n += parts[j].count(second)
                j += step
        if n > best or (n == best and n and (best_second is None or second < best_second)):
            best, best_second = n, second

    # File by file (only two files' times decoded at once). A second that holds jobs of two
    # files holds the last of one and the first of the next: those are counted first.
    for i, p in enumerate(parts):
        r = ranges[i]
        if r is None:
            continue
        consider(r[0], i)
        consider(r[1], i)
        ranked = p.candidates()
        for k in range(0, len(ranked), 2):
            bound, s = ranked[k], ranked[k + 1]
            # A tie counts only for an earlier second: after the best one, only more will do.
            if bound < best or (bound == best and best_second is not None and best_second < r[0]):
                break
            for second in p.seconds_of(s):
                consider(second, i)
        if i:
            parts[i - 1]._us = None  # (done with it: memory stays that of two files' times)
    for p in parts:
        p._us = None
    return best, best_second


# ---- making one ---------------------------------------------------------------------------------


def summarise(path: Path, gap: float = DEFAULT_GAP, salvage: bool = False, *,
              progress_stream: TextIO | None = None, clamp_carried: bool = False) -> Summary:
    """Read one capture and return its summary (what ``stats`` needs from it): the file alone,
    its carried frames the state at its start (Monitor.carried_settled). ``clamp_carried``:
    their times no earlier than the first connect record, as when the file follows a gap in a
    recording of several (icetools.recordings)."""
    with CaptureReader(path, salvage=salvage) as reader:
        reader.clamp_carried = clamp_carried
        why = WhyAnalysis(gap, keep_boundary_waits=True)
        finishes = _FinishTimes()
        monitor = _SummaryMonitor([why, finishes])
        first = _first_record(reader)
        monitor.rotated = type(first) is ConnectRecord and first.rotated
        result = replay_file(monitor, reader, progress_stream=progress_stream)
        summary = _summary_of(reader, monitor, why, finishes, result.undecodable)
        summary.carried = reader.carried
        summary.carried_jobs = monitor.carried_jobs
        summary.salvage = salvage
        summary.clamped = clamp_carried
        summary.reruns_open = dict(monitor._failed_for_rerun)
        summary.rerun_candidates = monitor.rerun_candidates
        summary.rerun_failed = monitor._failed_for_rerun.noted
        summary.complete = reader.ended
        return summary


def _first_record(reader: CaptureReader) -> Any:
    """The file's first record (only its block is read); the reader is left at its start."""
    try:
        records = iter(reader)
        try:
            return next(records, None)
        finally:
            records.close()
    except IcetoolsError:
        return None  # (damage right at the start: the replay says so)
    finally:
        reader.rewind()


def _summary_of(
    reader: CaptureReader, monitor: _SummaryMonitor, why: WhyAnalysis, finishes: _FinishTimes, undecodable: int
) -> Summary:
    t = monitor.now
    # The jobs in flight stay open (pending): WhyAnalysis.finish would end them here.
    open_jobs = list(why._open.values())
    why._open.clear()
    why.finish(monitor)
    index = {id(b): i for i, b in enumerate(why.builds)}
    pending = []
    for _held, build, job in open_jobs:
        pending.append(_Pending(
            job, job.submitted if job.seen_submit else None,
            host_name(monitor, job.server_id) if job.server_id is not None else None,
            index[id(build)] if build is not None else None,
        ))
    totals = dataclasses.replace(monitor.totals)
    unnamed = [
        (host.id, host.counters)
        for host in monitor.hosts.values()
        if not host.name and (host.counters.compiled or host.counters.submitted or host.counters.local)
    ]
    return Summary(
        start=reader.header.start,
        gap=why.gap,
        files=[str(reader.path)],
        scheduler=reader.header.scheduler,
        netname=reader.header.netname,
        series=reader.header.series,
        part=reader.header.part,
        rotated=monitor.rotated,
        end=t,
        first_connect=monitor.first_connect if monitor.first_connect is not None else 0.0,
        frames=reader.frames,
        undecodable=undecodable,
        warnings=[w] if (w := reader.warning()) is not None else [],
        totals=totals,
        peak=totals.peak_jobs_per_second,
        peak_second=totals.peak_second,
        finishes=[_Finishes(finishes.times)],
        host_counters=monitor.host_counters,
        adopted=monitor.adopted,
        host_ids=monitor.host_ids,
        unnamed=unnamed,
        slowest=sorted(monitor.slowest, reverse=True),
        use=why.use,
        held_s=why.held_s,
        saturated_s=why.saturated_s,
        submitter_waits=why.submitter_waits,
        unattributed_waits=why.unattributed_waits,
        transfer=why.transfer,
        builds=why.builds,
        pending=pending,
    )


# ---- the answer ---------------------------------------------------------------------------------


def _for_report(summary: Summary) -> Summary:
    """A copy of ``summary`` whose pending jobs can be applied without changing it: a copy of
    what they change (builds, waits, transfer), the rest shared."""
    s = copy.copy(summary)
    s.builds = [copy.copy(b) for b in summary.builds]
    for b in s.builds:
        if b.kept is not None:
            b.kept = copy.deepcopy(b.kept)
    s.submitter_waits = {name: copy.deepcopy(w) for name, w in summary.submitter_waits.items()}
    s.unattributed_waits = copy.deepcopy(summary.unattributed_waits)
    s.transfer = {name: list(sums) for name, sums in summary.transfer.items()}
    return s


def report_from(summary: Summary) -> dict[str, Any]:
    """What ``icetools stats --json`` prints for the file(s) of ``summary`` (the summary is
    left as it was)."""
    s = _for_report(summary) if summary.pending else summary
    if s.peak < 0:  # (worked out once: the summary keeps it)
        summary.peak, summary.peak_second = s.peak, s.peak_second = _merged_peak(s.finishes)
    s._apply_pending()
    hosts = [HostStats(name, s.host_ids.get(name, 0), c) for name, c in s.host_counters.items()]
    hosts += [HostStats(f"#{host_id}", host_id, c) for host_id, c in s.unnamed]
    hosts.sort(key=lambda h: (h.id, h.name))
    why = why_json(
        s.use, s.submitter_waits, s.unattributed_waits, s.held_s, s.saturated_s, s.gap, s.builds, s.transfer
    )
    report = report_json(s.end, s.totals, s.peak, s.peak_second, hosts, s.slowest, why)
    if len(s.files) > 1:
        # Several files read as one: where nothing was recorded (as icetools.recordings says).
        report["gaps"] = [
            {"t": round(t, 3), "until": round(until, 3), "seconds": round(until - t, 3)} for t, until in s.gaps
        ]
    return report


# ---- the cache ----------------------------------------------------------------------------------


def summary_path(capture: Path, gap: float, salvage: bool) -> Path:
    """Where the summary of ``capture`` is cached: the seek index's key (real path, size,
    modification time, icetools version) plus the gap, salvage and the summary version."""
    st = capture.stat()
    key = (
        f"{os.path.realpath(capture)}\0{st.st_size}\0{st.st_mtime_ns}\0{__version__}\0"
        f"{gap!r}\0{int(salvage)}\0{SUMMARY_VERSION}"
    )
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".sum")


#: What a cached summary may contain: icetools' own classes and plain builtins, nothing else.
_ALLOWED = {
    ("icetools.summary", "Summary"), ("icetools.summary", "_Finishes"), ("icetools.summary", "_Pending"),
    ("icetools.stats", "Waits"), ("icetools.stats", "_Build"), ("icetools.monitor", "HostCounters"),
    ("icetools.monitor", "Totals"), ("icetools.monitor", "Job"), ("icetools.monitor", "JobState"),
    ("builtins", "set"), ("builtins", "frozenset"), ("copyreg", "_reconstructor"), ("builtins", "object"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a summary")
        return super().find_class(module, name)


def load(capture: Path, gap: float, salvage: bool) -> Summary | None:
    """The cached summary of ``capture``, or None (none, damaged, foreign or of another
    version: it is then rebuilt)."""
    try:
        path = summary_path(capture, gap, salvage)
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO there would block the read
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(SUMMARY_MAGIC):
        return None
    try:
        key, summary = _Unpickler(io.BytesIO(zlib.decompress(data[len(SUMMARY_MAGIC):]))).load()
    except Exception:  # noqa: BLE001 - a damaged cache entry (of any shape) is simply rebuilt
        return None
    if key != path.name or not isinstance(summary, Summary) or summary.gap != gap:
        return None
    summary.files = [str(capture)]
    return summary


def save(capture: Path, summary: Summary, salvage: bool) -> None:
    """Write the summary atomically (a reader never sees half of one); failing is harmless.
    A file without an end record (still being recorded, or its recorder was killed) is not
    cached."""
    if not summary.complete:
        return
    try:
        path = summary_path(capture, summary.gap, salvage)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = SUMMARY_MAGIC + zlib.compress(pickle.dumps((path.name, summary), 5), 1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sum-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
    except OSError:
        pass


# ---- many files -------------------------------------------------------------------------------


class _Interrupted(BaseException):
    """SIGTERM while the workers run: handled like Ctrl-C."""


def _worker_init() -> None:
    # The parent tells the story of a Ctrl-C (it reaches the whole process group) and ends
    # the workers itself; a worker told to stop just stops, with no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _work(path: Path, gap: float, salvage: bool) -> Summary:
    try:
        return summarise(path, gap, salvage)
    except IcetoolsError:
        raise
    except Exception as e:  # a bug, but one line from the parent is still the right answer
        raise IcetoolsError(f"{path}: {type(e).__name__}: {e}") from None


def summaries(
    paths: Sequence[Path], gap: float = DEFAULT_GAP, salvage: bool = False, *,
    progress_stream: TextIO | None = None, workers: int | None = None, cache: bool = True,
) -> list[Summary]:
    """The summaries of ``paths`` (in that order): from the cache where it has them, the others
    computed (and cached), a process per core when there are several, and one file in this
    process (a pool costs more than it gives there)."""
    found: dict[int, Summary] = {}
    missing: list[int] = []
    for i, path in enumerate(paths):
        s = load(path, gap, salvage) if cache else None
        if s is None:
            missing.append(i)
        else:
            found[i] = s
    n = min(len(missing), workers or os.cpu_count() or 1)
    if n <= 1:
        for i in missing:
            found[i] = summarise(paths[i], gap, salvage, progress_stream=progress_stream)
            if cache:
                save(paths[i], found[i], salvage)
    else:
        found.update(_in_parallel(paths, missing, gap, salvage, n, cache, progress_stream))
    return [found[i] for i in range(len(paths))]


def _in_parallel(
    paths: Sequence[Path], missing: list[int], gap: float, salvage: bool, workers: int, cache: bool,
    progress_stream: TextIO | None = None,
) -> dict[int, Summary]:
    def on_term(signum: int, frame: object) -> None:
        raise _Interrupted

    tty = progress_stream is not None and progress_stream.isatty()
    old = signal.signal(signal.SIGTERM, on_term)
    pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_worker_init)
    done: dict[int, Summary] = {}
    try:
        futures = {pool.submit(_work, paths[i], gap, salvage): i for i in missing}
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                done[i] = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                raise IcetoolsError(f"{paths[i]}: the process reading it ended unexpectedly") from None
            if cache:
                save(paths[i], done[i], salvage)
            if tty:  # (one line, rewritten: how many files are read)
                progress_stream.write(f"\ricetools: read {len(done)} of {len(missing)} files ({workers} processes)")  # type: ignore[union-attr]
                progress_stream.flush()  # type: ignore[union-attr]
        if tty:
            progress_stream.write("\r\x1b[K")  # type: ignore[union-attr]
            progress_stream.flush()  # type: ignore[union-attr]
    except BaseException as e:
        # An error, Ctrl-C or SIGTERM: stop the other workers now (they are ours, by pid).
        if tty:
            progress_stream.write("\r\x1b[K")  # type: ignore[union-attr]
        for process in list((pool._processes or {}).values()):  # noqa: SLF001
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, _Interrupted):
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
    pool.shutdown(wait=True)
    return done


def merged(summaries_: Sequence[Summary]) -> Summary:
    """The summaries of files in time order, merged into one (the first is consumed)."""
    first = summaries_[0]
    for nxt in summaries_[1:]:
        continues = first.continued_by(nxt)
        if not continues and nxt.carried and not nxt.clamped:
            # After a gap a file's carried frames come at its connect record, not before it
            # (icetools.recordings clamps their times): their jobs' waits, run times and builds
            # differ from the file read alone. Such a file (a part missing before it) is read
            # again that way (not cached: it is rare).
            nxt = summarise(Path(nxt.files[0]), nxt.gap, nxt.salvage, clamp_carried=True)
        first.merge(nxt, continues)
    return first
