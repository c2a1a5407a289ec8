"""``icetools trace``: a recording as a Chrome trace (the Trace Event Format's JSON object form),
for ui.perfetto.dev and chrome://tracing.

A process per host, a thread per slot (lanes that never overlap: a job takes the lowest lane
free on its host when it starts), a complete event ("X") per job, a "wait" slice on the
submitter from request to start with a flow arrow (flow v2: ``bind_id`` with ``flow_out`` and
``flow_in``) to the compile, counters for the cluster's busy slots and waiting jobs and for each
host's load. The mapping is documented in docs/analysis.md.

Like ``jobs`` it reads the Monitor's change events and streams: each event is written when it
is complete (a job's slice when the job ends), so memory holds only the jobs in flight and the
lanes of each host. Events are therefore not in time order; the format does not ask for it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .capture import CaptureReader
from .jobs import _DONE, _FAILED, _LANGS, _float_text, _str_text, _texts, host_name, job_row, json_line
from .monitor import Event, EventKind, Job, Monitor, Publisher
from .output import replaced
from .replay import ReplayResult, replay_file

#: The process that holds the cluster-wide counters.
CLUSTER_PID = 1
#: Request lanes (waiting jobs) of a host are threads from here on, below them its slots.
WAIT_TID = 1001
#: Jobs whose start and request the recording never saw (only their end) go here.
UNPLACED_TID = 9999

_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: Names from a capture may hold lone surrogates (bytes that were not UTF-8): written as their
#: JSON escape (``\udcff``), as on standard output, rather than failing half-way.
_UNPAIRED = "backslashreplace"
_str = json.encoder.encode_basestring  # type: ignore[attr-defined]
_heappush = heapq.heappush
_JOB_SUBMITTED = EventKind.JOB_SUBMITTED
_JOB_STARTED = EventKind.JOB_STARTED
_JOB_FINISHED = EventKind.JOB_FINISHED
#: Slice titles remembered (see TracePublisher._title).
_TITLES_LIMIT = 8192


def _us(t: float) -> int:
    """Seconds -> whole microseconds (the capture's resolution: exact)."""
    return int(round(t * 1_000_000))


class _Lanes:
    """Numbered lanes of one host: the lowest free one is taken, so a lane's jobs never
    overlap and lanes stay as few as the most jobs at a time."""

    __slots__ = ("free", "count", "first")

    def __init__(self, first: int) -> None:
        self.free: list[int] = []
        self.count = 0
        self.first = first

    def take(self) -> tuple[int, bool]:
        """A lane, and whether it is new (needs its thread_name)."""
        if self.free:
            return heapq.heappop(self.free), False
        self.count += 1
        return self.first + self.count - 1, True

    def give(self, lane: int) -> None:
        heapq.heappush(self.free, lane)


class _InFlight:
    """A job the trace has not written yet. Not slotted, on purpose (as Job): an instance sets
    only its job and request time, the rest stays on the class until set, so making one per job
    costs two stores rather than eleven."""

    job: Job
    requested: float | None
    #: Host names as known while the job runs (a reset makes the Monitor forget them).
    submitter: str | None = None
    server: str | None = None
    wait_pid = 0  # the submitter's process and lane while it waits (0: not waiting)
    wait_tid = 0
    pid = 0  # the compile host's process and lane once started (0: not started)
    tid = 0
    flow = 0  # bind_id of the wait -> compile arrow (0: none)
    #: _us(requested) while it waits, _us(job.started) once on a slot (each is the time of the
    #: event that set it, so computed once there).
    request_ts = 0
    start_ts = 0

    def __init__(self, job: Job, requested: float | None) -> None:
        self.job = job
        self.requested = requested


class TracePublisher(Publisher):
    """Writes trace events for the Monitor's changes through ``write`` (one JSON object text
    per call). Call :meth:`finish` after the last record."""

    kinds = frozenset(EventKind)

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._pids: dict[str, int] = {}  # host name (or #id) -> pid
        self._pid_of_id: dict[int, int] = {}  # the Monitor's host id -> pid (until a reset)
        self._slots: dict[int, _Lanes] = {}
        self._waits: dict[int, _Lanes] = {}
        self._open: dict[int, _InFlight] = {}
        self._loads: dict[int, int] = {}  # pid -> last load written
        self._busy = self._waiting = 0
        self._counted: tuple[int, int] | None = None  # the counters as last written
        self._counter_ts: int | None = None
        self._flows = 0
        self._unplaced = False
        #: The last event's time and its _us (times repeat: a scheduler sends in batches).
        self._t: float | None = None
        self._ts = 0
        #: File -> the JSON text of its slice title (see _short), for recent files.
        self._titles: dict[str, str] = {}
        self.jobs = 0  # job slices written
        self._write(self._meta("process_name", CLUSTER_PID, 0, "cluster"))
        self._write(self._meta("process_sort_index", CLUSTER_PID, 0, None, sort_index=0))

    # -- processes and threads ----------------------------------------------------------------

    @staticmethod
    def _meta(name: str, pid: int, tid: int, value: str | None, **args: Any) -> str:
        if value is not None:
            args["name"] = value
        return _json({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": args})

    def _pid(self, monitor: Monitor, host_id: int) -> int:
        pid = self._pid_of_id.get(host_id)
        if pid is not None:
            return pid
        # Keyed by name: a daemon that logs in again (new id) stays one process.
        key = host_name(monitor, host_id) or f"#{host_id}"
        pid = self._pids.get(key)
        if pid is None:
            pid = self._pids[key] = len(self._pids) + 2
            self._write(self._meta("process_name", pid, 0, key))
            self._write(self._meta("process_sort_index", pid, 0, None, sort_index=pid))
            self._slots[pid] = _Lanes(1)
            self._waits[pid] = _Lanes(WAIT_TID)
        self._pid_of_id[host_id] = pid
        return pid

    def _lane(self, pid: int, lanes: _Lanes, label: str) -> int:
        tid, new = lanes.take()
        if new:
            number = tid - lanes.first + 1
            self._write(self._meta("thread_name", pid, tid, f"{label} {number}"))
            self._write(self._meta("thread_sort_index", pid, tid, None, sort_index=tid))
        return tid

    # -- counters -----------------------------------------------------------------------------

    def _at(self, ts: int) -> None:
        """Counters change many times within one instant of a recording (a scheduler sends in
        batches): write them once per instant, as they stood at its end."""
        if ts != self._counter_ts:
            self._flush_counters()
            self._counter_ts = ts

    def _flush_counters(self) -> None:
        if self._counter_ts is None:
            return
        now = (self._busy, self._waiting)
        if now != self._counted:
            ts = self._counter_ts
            before = self._counted or (-1, -1)  # (both are written at the first instant)
            if now[0] != before[0]:
                self._write(f'{{"ph":"C","name":"busy slots","pid":{CLUSTER_PID},"tid":0,"ts":{ts},"args":{{"busy":{now[0]}}}}}')
            if now[1] != before[1]:
                self._write(f'{{"ph":"C","name":"jobs waiting","pid":{CLUSTER_PID},"tid":0,"ts":{ts},"args":{{"waiting":{now[1]}}}}}')
            self._counted = now

    # -- events -------------------------------------------------------------------------------

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        # A method per kind: they run for nearly every frame of a recording.
        return {
            _JOB_SUBMITTED: self._on_submitted,
            _JOB_STARTED: self._on_started,
            _JOB_FINISHED: self._on_finished,
            EventKind.HOST_ADDED: self._on_host,
            EventKind.HOST_CHANGED: self._on_host,
            EventKind.HOST_OFFLINE: self._on_offline,
            EventKind.RESET: self._on_reset,
        }[kind]

    def publish(self, event: Event, monitor: Monitor) -> None:
        self.receiver(event.kind)(event, monitor)  # type: ignore[misc]

    def _instant(self, t: float) -> int:
        """The event's time in microseconds; a new instant writes the counters of the last one
        (see _at). The hot receivers inline this."""
        if t == self._t:
            return self._ts
        ts = self._ts = _us(t)
        self._t = t
        if ts != self._counter_ts:
            self._flush_counters()
            self._counter_ts = ts
        return ts

    def _on_submitted(self, event: Event, monitor: Monitor) -> None:
        _, t, _, job = event
        if t == self._t:  # (self._instant, inlined)
            ts = self._ts
        else:
            ts = self._ts = int(round(t * 1_000_000))
            self._t = t
            if ts != self._counter_ts:
                self._flush_counters()
                self._counter_ts = ts
        job_id = job.id  # type: ignore[union-attr]
        if job_id in self._open:
            self._orphan(job, ts, monitor)  # type: ignore[arg-type]
        flight = self._open[job_id] = _InFlight(job, job.submitted)  # type: ignore[union-attr, arg-type]
        client_id = job.client_id  # type: ignore[union-attr]
        if client_id is None:
            return
        host = monitor.hosts.get(client_id)
        if host is not None and host.name:
            flight.submitter = host.name
        pid = flight.wait_pid = self._pid_of_id.get(client_id) or self._pid(monitor, client_id)
        lanes = self._waits[pid]
        flight.wait_tid = heapq.heappop(lanes.free) if lanes.free else self._lane(pid, lanes, "waiting")
        flight.request_ts = ts  # (job.submitted is this event's time)
        self._waiting += 1  # (while it holds a waiting lane)

    def _on_started(self, event: Event, monitor: Monitor) -> None:
        _, t, _, job = event
        if t == self._t:  # (self._instant, inlined)
            ts = self._ts
        else:
            ts = self._ts = int(round(t * 1_000_000))
            self._t = t
            if ts != self._counter_ts:
                self._flush_counters()
                self._counter_ts = ts
        flight = self._open.get(job.id)  # type: ignore[union-attr]
        if flight is not None and flight.job is not job:
            flight = self._orphan(job, ts, monitor)  # type: ignore[arg-type]
        if flight is None:
            # A local job, or a remote one requested before the recording began.
            flight = self._open[job.id] = _InFlight(job, job.submitted if job.local else None)  # type: ignore[union-attr, arg-type]
        elif flight.wait_pid:
            self._waiting -= 1
            self._flows += 1
            flight.flow = self._flows
            self._wait_slice(flight, ts, monitor)
        elif flight.pid:
            # Begun again (the scheduler moved it): its slice starts anew, as job.started does.
            self._slots[flight.pid].give(flight.tid)
            self._busy -= 1
            flight.pid = flight.tid = 0
        hosts = monitor.hosts
        if flight.submitter is None and (host := hosts.get(job.client_id)) is not None and host.name:  # type: ignore[union-attr]
            flight.submitter = host.name
        server_id = job.server_id  # type: ignore[union-attr]
        if server_id is None:
            flight.server = None
            return
        host = hosts.get(server_id)
        flight.server = host.name if host is not None and host.name else None
        pid = flight.pid = self._pid_of_id.get(server_id) or self._pid(monitor, server_id)
        lanes = self._slots[pid]
        flight.tid = heapq.heappop(lanes.free) if lanes.free else self._lane(pid, lanes, "slot")
        flight.start_ts = ts  # (job.started is this event's time)
        self._busy += 1

    def _on_finished(self, event: Event, monitor: Monitor) -> None:
        _, t, _, job = event
        if t == self._t:  # (self._instant, inlined)
            ts = self._ts
        else:
            ts = self._ts = int(round(t * 1_000_000))
            self._t = t
            if ts != self._counter_ts:
                self._flush_counters()
                self._counter_ts = ts
        flight = self._open.get(job.id)  # type: ignore[union-attr]
        if flight is not None and flight.job is not job:
            flight = self._orphan(job, ts, monitor)  # type: ignore[arg-type]
        if flight is None:
            flight = _InFlight(job, None)  # type: ignore[arg-type]  # only its end was seen
        else:
            del self._open[job.id]  # type: ignore[union-attr]
        self._end(flight, ts, monitor)

    def _on_host(self, event: Event, monitor: Monitor) -> None:
        _, t, host, _ = event
        if t == self._t:  # (self._instant, inlined: a report comes every few frames)
            ts = self._ts
        else:
            ts = self._instant(t)
        host_id = host.id  # type: ignore[union-attr]
        pid = self._pid_of_id.get(host_id) or self._pid(monitor, host_id)
        # (host.load would apply the host's pending reports in full: see Host.report)
        load = host.reported_load()  # type: ignore[union-attr]
        if self._loads.get(pid) != load:
            self._loads[pid] = load
            self._write(f'{{"ph":"C","name":"load","pid":{pid},"tid":0,"ts":{ts},"args":{{"load":{load}}}}}')

    def _on_offline(self, event: Event, monitor: Monitor) -> None:
        _, t, host, _ = event
        ts = self._instant(t)
        pid = self._pid(monitor, host.id)  # type: ignore[union-attr]
        self._write(f'{{"ph":"i","name":"offline","s":"p","pid":{pid},"tid":0,"ts":{ts}}}')

    def _on_reset(self, event: Event, monitor: Monitor) -> None:
        ts = self._instant(event.t)
        # The Monitor forgot hosts and jobs: what was in flight ends here, unseen.
        for flight in list(self._open.values()):
            self._end(flight, ts, monitor)
        self._open.clear()
        self._pid_of_id.clear()

    def _orphan(self, job: Job, ts: int, monitor: Monitor) -> _InFlight | None:
        """The job in flight under this id, if it is this job; an older job under the same id
        (the Monitor lost track of it) is ended here."""
        flight = self._open.get(job.id)
        if flight is not None and flight.job is not job:
            if not job.seen_submit:
                flight.job = job  # the Monitor dropped it and met it again: the same job
                return flight
            self._end(flight, ts, monitor)
            return None
        return flight

    def _wait_slice(self, flight: _InFlight, end: int, monitor: Monitor) -> None:
        """The submitter waiting for a compile host: from the request to the start."""
        job = flight.job
        start = flight.request_ts
        server = flight.server or (host_name(monitor, job.server_id) if job.server_id is not None else None)
        file = job.file
        self._write(
            f'{{"ph":"X","cat":"wait","name":{self._titles.get(file) or self._title(file)},"pid":{flight.wait_pid},'
            f'"tid":{flight.wait_tid},"ts":{start},"dur":{end - start},"bind_id":{flight.flow},"flow_out":true,'
            f'"args":{{"id":{job.id},"file":{_texts.get(file) or _str_text(file)},'
            f'"server":{(_texts.get(server) or _str_text(server)) if server.__class__ is str else "null"}}}}}'
        )
        _heappush(self._waits[flight.wait_pid].free, flight.wait_tid)  # (_Lanes.give, inlined)
        flight.wait_pid = flight.wait_tid = 0

    def _end(self, flight: _InFlight, end: int, monitor: Monitor) -> None:
        """Write the job's slice, ending at ``end``, and free its lanes."""
        job = flight.job
        args = _args(
            job, flight.requested,
            flight.submitter or host_name(monitor, job.client_id),
            flight.server or host_name(monitor, job.server_id),
        )
        flow = ""
        if flight.pid:  # it ran: on its compile host's slot
            pid, tid = flight.pid, flight.tid
            # (start_ts is _us(job.started), set with it; a job the Monitor dropped and met again
            # only at its end has none)
            start = flight.start_ts if job.started is not None else end
            _heappush(self._slots[pid].free, tid)  # (_Lanes.give, inlined)
            self._busy -= 1
            if flight.flow:
                flow = f',"bind_id":{flight.flow},"flow_in":true'
        elif flight.wait_pid:  # it never started: on the submitter's waiting lane
            assert flight.requested is not None
            pid, tid = flight.wait_pid, flight.wait_tid
            start = flight.request_ts
            self._waits[pid].give(tid)
            self._waiting -= 1
        else:  # only its end was seen
            if not self._unplaced:
                self._unplaced = True
                self._write(self._meta("thread_name", CLUSTER_PID, UNPLACED_TID, "seen only at their end"))
            pid, tid, start = CLUSTER_PID, UNPLACED_TID, end
        self._write(
            f'{{"ph":"X","cat":"{"local" if job.local else "remote"}","name":{self._titles.get(job.file) or self._title(job.file)},'
            f'"pid":{pid},"tid":{tid},"ts":{start},"dur":{max(0, end - start)}{flow},'
            f'"args":{args}}}'
        )
        self.jobs += 1

    def _title(self, file: str) -> str:
        """The JSON text of a slice's title (see _short), remembered for recent files."""
        titles = self._titles
        if len(titles) >= _TITLES_LIMIT:
            titles.clear()
        text = titles[file] = _str(_short(file))
        return text

    def finish(self, monitor: Monitor) -> None:
        """The end of the recording: the jobs still in flight end there, as unfinished."""
        ts = _us(monitor.now)
        self._at(ts)
        self._t = None
        for flight in list(self._open.values()):
            self._end(flight, max(ts, _us(flight.job.started or flight.requested or 0.0)), monitor)
        self._open.clear()
        self._flush_counters()


#: Language number -> its JSON text in a job's args (see jobs._LANGS).
_LANG_TEXTS: dict[int | None, str] = {k: "null" if v is None else _str(v) for k, v in _LANGS.items()}


def _args(job: Job, requested: float | None, submitter: str | None, server: str | None) -> str:
    """A job slice's args: ``json_line(job_row(job, requested, submitter, server))`` without
    its newline. A job that ended with a MON_JOB_DONE (nearly all) is written straight from its
    fields, in the same words as job_row and json_line, without building the row in between
    (the two took a quarter of a trace's time); the others go through them."""
    state = job.state
    if state is not _DONE and state is not _FAILED:
        return json_line(job_row(job, requested, submitter, server))[:-1]
    if submitter is None and job.client_id is not None:
        submitter = f"#{job.client_id}"
    if server is None and job.server_id is not None:
        server = f"#{job.server_id}"
    started = job.started
    ended = job.ended
    lang = job.lang
    file = job.file
    text = _texts.get
    n = "null"
    rerun_of = job.rerun_of
    real_msec, user_msec, sys_msec = job.real_msec, job.user_msec, job.sys_msec
    in_bytes, out_bytes, exit_code = job.in_uncompressed, job.out_uncompressed, job.exit_code
    wait_ms = None if requested is None or started is None else round((started - requested) * 1000, 3)
    run_ms = None if started is None or ended is None else round((ended - started) * 1000, 3)
    # (durations are nearly all distinct: written as _float_text does, repr, but not remembered,
    # which would push the times, files and names that do repeat out of _texts)
    return (
        f'{{"id": {job.id}, "file": {text(file) or _str_text(file)}, '
        f'"lang": {_LANG_TEXTS[lang] if lang in _LANG_TEXTS else _str_text(str(lang))}, '
        f'"submitter": {text(submitter) or _str_text(submitter)}, "server": {text(server) or _str_text(server)}, '
        f'"kind": "{"local" if job.local else "remote"}", '
        f'"outcome": "{("lost" if job.lost else "failed") if state is _FAILED else "ok"}", '
        f'"rerun_of": {n if rerun_of is None else rerun_of}, '
        f'"requested": {text(requested) or _float_text(requested)}, "started": {text(started) or _float_text(started)}, '
        f'"ended": {text(ended) or _float_text(ended)}, "wait_ms": {n if wait_ms is None else repr(wait_ms)}, '
        f'"run_ms": {n if run_ms is None else repr(run_ms)}, "real_msec": {n if real_msec is None else real_msec}, '
        f'"user_msec": {n if user_msec is None else user_msec}, "sys_msec": {n if sys_msec is None else sys_msec}, '
        f'"in_bytes": {n if in_bytes is None else in_bytes}, "out_bytes": {n if out_bytes is None else out_bytes}, '
        f'"exit_code": {n if exit_code is None else exit_code}}}'
    )


def _short(path: str) -> str:
    """A slice's title: the file name without its folders (the whole path is in args)."""
    return path.rsplit("/", 1)[-1] or "(no file)"


# ---- writing the file -----------------------------------------------------------------------


class _EventStream:
    """The JSON object form, written as events come: ``{"traceEvents":[`` ... ``]}``."""

    def __init__(self, out: TextIO, batch: int = 1024) -> None:
        self.out = out
        self.lines: list[str] = []
        self.batch = batch
        self.first = True
        out.write('{"displayTimeUnit":"ms","traceEvents":[\n')

    def write(self, event: str) -> None:
        self.lines.append(event)
        if len(self.lines) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            text = ",\n".join(self.lines)
            self.out.write(text if self.first else ",\n" + text)
            self.first = False
            self.lines.clear()

    def close(self) -> None:
        self.flush()
        self.out.write("\n]}\n")


#: The cluster process's lane for the gaps between files read as one recording.
GAP_TID = 1


def _write_gaps(stream: _EventStream, gaps: Any) -> None:
    """Several files read as one (icetools.recordings): each gap between them as a slice
    "no recording" on a lane of the cluster process, so the hole is seen, not guessed."""
    for i, gap in enumerate(gaps):
        if i == 0:
            stream.write(_json({"ph": "M", "name": "thread_name", "pid": CLUSTER_PID, "tid": GAP_TID, "args": {"name": "recording"}}))
        start, stop = _us(gap.t), _us(gap.until)
        stream.write(_json({
            "ph": "X", "name": "no recording", "cat": "gap", "pid": CLUSTER_PID, "tid": GAP_TID,
            "ts": start, "dur": stop - start, "args": {"from_s": round(gap.t, 6), "until_s": round(gap.until, 6)},
        }))


def write_trace(
    reader: CaptureReader,
    out: TextIO,
    *,
    progress_stream: TextIO | None = None,
) -> tuple[TracePublisher, ReplayResult]:
    """Replay the capture as fast as possible and write its trace to ``out``."""
    stream = _EventStream(out)
    publisher = TracePublisher(stream.write)
    monitor = Monitor(publishers=[publisher])
    result = replay_file(monitor, reader, progress_stream=progress_stream)
    publisher.finish(monitor)
    _write_gaps(stream, getattr(reader, "gaps", ()))
    stream.close()
    return publisher, result


def write_trace_file(reader: CaptureReader, target: Path, *, progress_stream: TextIO | None = None) -> tuple[TracePublisher, ReplayResult]:
    """:func:`write_trace` into ``target``, replaced atomically: a damaged capture or a failure
    leaves no half-written trace (and any previous file as it was)."""
    with replaced(target, errors=_UNPAIRED) as out:
        done = write_trace(reader, out, progress_stream=progress_stream)
    return done


