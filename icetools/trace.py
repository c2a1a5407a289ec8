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
A Feed (icetools.feed) hands the events on as tuples, and a TraceBuilder keeps the lanes,
flows and counters and writes the text: on two cores, for a big capture, in a second process
(see icetools.feed), so that this one only replays; the output is the same either way.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .capture import CaptureReader
from .feed import FedPublisher, HostNames, Item, begun_in_full, ended_in_full, job_of, started_of, write_fed
from .jobs import _LANGS, job_row, json_line
from .monitor import JobState
from .output import replaced
from .replay import ReplayResult

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
_heappop = heapq.heappop
#: The head of a flow arrow, on the job's slice (its tail is on the wait slice).
_FLOW_IN = ',"bind_id":%d,"flow_in":true'

_DONE_VALUE = JobState.DONE.value
_FAILED_VALUE = JobState.FAILED.value


class _Texts(dict):  # type: ignore[type-arg]
    """JSON texts of recent values, made by ``make`` when missing (``texts[value]``: a lookup
    costs no call of ours) and emptied when full. Recordings repeat their files and host names,
    and their times and durations within a scheduler's batch."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[Any], str]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> str:
        if len(self) >= _TEXTS_LIMIT:
            self.clear()
        text = self[key] = self.make(key)
        return text


_TEXTS_LIMIT = 8192

#: Strings (file names, host names) -> their JSON text (json.dumps', ensure_ascii=False).
_strings = _Texts(_str)
#: File -> its slice's title (see _short) as JSON.
_titles = _Texts(lambda file: _str(_short(file)))
# A job's times and durations in its args are those of its jobs row: the time's float as
# json.dumps writes it (repr), and round((b - a) * 1000, 3) milliseconds. While every time the
# trace has seen is a whole number of microseconds as a capture stores it, us / 1_000_000 (the
# float nearest to it; see TracePublisher._exact), those are exactly repr(us / 1_000_000) and
# repr(d / 1000), d being the difference in microseconds: (b - a) * 1000 is within a few float
# steps (far less than 0.0005) of d thousandths, so rounding it to three decimals gives that
# decimal, whose nearest float is d / 1000 too. So texts are looked up by whole numbers (no
# float hash) and nothing is rounded.

#: Times up to which that holds, in microseconds (about 31 years).
_EXACT_UP_TO = 10**15
#: A time in whole microseconds -> the JSON text of its seconds.
_times = _Texts(lambda us: repr(us / 1_000_000))
#: A duration in whole microseconds -> the JSON text of its milliseconds.
_millis = _Texts(lambda us: repr(us / 1000))


def _lang_text(lang: int | None) -> str:
    """A job's language in its args, as job_row names it (an unknown number as itself)."""
    if lang not in _LANGS:
        return _str(str(lang))
    name = _LANGS[lang]
    return "null" if name is None else _str(name)


#: Language number -> its JSON text in a job's args.
_langs = _Texts(_lang_text)


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
            return _heappop(self.free), False
        self.count += 1
        return self.first + self.count - 1, True

    def give(self, lane: int) -> None:
        _heappush(self.free, lane)


class _InFlight:
    """A job the trace has not written yet. Not slotted, on purpose (as Job): an instance sets
    only its item and request time, the rest stays on the class until set, so making one per
    job costs three stores rather than eleven."""

    #: The job's last tuple from the feed: its fields as they stand.
    item: tuple[Any, ...]
    requested: float | None
    #: Host names as known while the job runs (a reset makes the Monitor forget them).
    submitter: str | None = None
    server: str | None = None
    wait_pid = 0  # the submitter's process and lane while it waits (0: not waiting)
    wait_tid = 0
    pid = 0  # the compile host's process and lane once started (0: not started)
    tid = 0
    flow = 0  # bind_id of the wait -> compile arrow (0: none)
    #: _us(requested) (0 without one), and _us(started) once on a slot: each is the time of
    #: the event that set it, so computed once there.
    request_ts: int
    start_ts = 0

    def __init__(self, item: tuple[Any, ...], requested: float | None, request_ts: int) -> None:
        self.item = item
        self.requested = requested
        self.request_ts = request_ts


class TraceBuilder:
    """Turns the feed's tuples into trace events, handing each event's JSON text to ``write``:
    processes and lanes, slices, flows and counters. It knows the hosts' names as the Monitor
    did at each event (the feed tells every change of them) and the jobs in flight from their
    tuples. Events are written when they are complete (a job's slice when the job ends)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self.hosts = HostNames()
        self._names = self.hosts.names  # host id -> its name, while the Monitor knows one
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
        #: Every time so far is a whole number of microseconds as a capture stores it, so a
        #: job's times and durations are written from their microseconds (see _times).
        self._exact = True
        self.jobs = 0  # job slices written
        self._takers: tuple[Callable[[tuple[Any, ...]], None], ...] = (
            self._on_submitted, self._on_started, self._on_finished, self._on_host_added,
            self._on_host_changed, self._on_offline, self._on_reset, self._on_end, self._on_begun,
            self._on_ended,
        )
        self._write(self._meta("process_name", CLUSTER_PID, 0, "cluster"))
        self._write(self._meta("process_sort_index", CLUSTER_PID, 0, None, sort_index=0))

    def take(self, item: Item) -> None:
        """One item of the feed."""
        if item.__class__ is str:
            self._write(item)  # type: ignore[arg-type]
        else:
            self._takers[item[0]](item)  # type: ignore[arg-type]

    def take_all(self, items: list[Item]) -> None:
        """The feed's items, in order."""
        takers = self._takers
        write = self._write
        for item in items:
            if item.__class__ is str:
                write(item)  # type: ignore[arg-type]
            else:
                takers[item[0]](item)  # type: ignore[arg-type]

    # -- processes and threads ----------------------------------------------------------------

    @staticmethod
    def _meta(name: str, pid: int, tid: int, value: str | None, **args: Any) -> str:
        if value is not None:
            args["name"] = value
        return _json({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": args})

    def _pid(self, host_id: int) -> int:
        pid = self._pid_of_id.get(host_id)
        if pid is not None:
            return pid
        # Keyed by name: a daemon that logs in again (new id) stays one process.
        key = self._names.get(host_id) or f"#{host_id}"
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

    def _instant(self, t: float) -> int:
        """The event's time in microseconds; a new instant writes the counters of the last one
        (see _at). The hot takers inline its first test."""
        if t == self._t:
            return self._ts
        return self._new_instant(t)

    def _new_instant(self, t: float) -> int:
        ts = self._ts = int(round(t * 1_000_000))
        self._t = t
        if ts != self._counter_ts:
            self._flush_counters()
            self._counter_ts = ts
        if self._exact and not (ts / 1_000_000 == t and -_EXACT_UP_TO < ts < _EXACT_UP_TO):
            self._exact = False  # (see _times)
        return ts

    # -- jobs ---------------------------------------------------------------------------------

    def _on_submitted(self, item: tuple[Any, ...]) -> None:
        _, t, job_id, _, _, client_id = item
        ts = self._ts if t == self._t else self._new_instant(t)  # (self._instant, inlined)
        in_flight = self._open
        if job_id in in_flight:
            # An older job under this id (the Monitor lost track of it) ends here.
            self._end(in_flight[job_id], ts)
        flight = in_flight[job_id] = _InFlight(item, t, ts)
        if client_id is None:
            return
        name = self._names.get(client_id)
        if name is not None:
            flight.submitter = name
        pid = flight.wait_pid = self._pid_of_id.get(client_id) or self._pid(client_id)
        lanes = self._waits[pid]
        flight.wait_tid = _heappop(lanes.free) if lanes.free else self._lane(pid, lanes, "waiting")
        self._waiting += 1  # (while it holds a waiting lane)

    def _on_started(self, item: tuple[Any, ...]) -> None:
        _, t, job_id, file, _, client_id, server_id, is_local_start, local, submitted, _, _ = item
        ts = self._ts if t == self._t else self._new_instant(t)  # (self._instant, inlined)
        flight = self._open.get(job_id)
        if flight is not None and is_local_start:
            # A new local job under the id of one in flight (the Monitor lost track of that
            # one): it ends here. (A compile's start is of the job in flight, or of one the
            # Monitor dropped and met again: the same job either way.)
            self._end(flight, ts)
            flight = None
        names = self._names
        # (the compile host's name as the Monitor knows it now: the wait slice names it too)
        server = None if server_id is None else names.get(server_id)
        if flight is None:
            # A local job, or a remote one requested before the recording began.
            flight = self._open[job_id] = _InFlight(item, submitted if local else None, ts if local else 0)
        else:
            flight.item = item
            if flight.wait_pid:
                # The submitter waited from the request to now: its wait slice, with the
                # arrow's tail (nearly every remote job has one).
                self._waiting -= 1
                flow = flight.flow = self._flows = self._flows + 1
                start = flight.request_ts
                wait_pid = flight.wait_pid
                self._write(
                    f'{{"ph":"X","cat":"wait","name":{_titles[file]},"pid":{wait_pid},"tid":{flight.wait_tid},'
                    f'"ts":{start},"dur":{ts - start},"bind_id":{flow},"flow_out":true,"args":{{"id":{job_id},'
                    f'"file":{_strings[file]},"server":{"null" if server is None else _strings[server]}}}}}'
                )
                _heappush(self._waits[wait_pid].free, flight.wait_tid)  # (_Lanes.give, inlined)
                flight.wait_pid = flight.wait_tid = 0
            elif flight.pid:
                # Begun again (the scheduler moved it): its slice starts anew, as job.started does.
                self._slots[flight.pid].give(flight.tid)
                self._busy -= 1
                flight.pid = flight.tid = 0
        if flight.submitter is None and client_id is not None and (name := names.get(client_id)) is not None:
            flight.submitter = name
        flight.server = server
        if server_id is None:
            return
        pid = flight.pid = self._pid_of_id.get(server_id) or self._pid(server_id)
        lanes = self._slots[pid]
        flight.tid = _heappop(lanes.free) if lanes.free else self._lane(pid, lanes, "slot")
        flight.start_ts = ts  # (the job's start is this event's time)
        self._busy += 1

    def _on_begun(self, item: tuple[Any, ...]) -> None:
        """A compile's start as BEGUN tells it: the job's other fields from its last tuple."""
        flight = self._open.get(item[2])
        self._on_started(begun_in_full(item, None if flight is None else flight.item))

    def _on_ended(self, item: tuple[Any, ...]) -> None:
        """A job's end as ENDED tells it: its other fields from its last tuple."""
        flight = self._open.get(item[2])
        self._on_finished(ended_in_full(item, None if flight is None else flight.item))

    def _on_finished(self, item: tuple[Any, ...]) -> None:
        (_, t, job_id, file, lang, _, _, state, local, started, seen_submit, rerun_of, exit_code,
         real, user, sys_, in_bytes, out_bytes, lost) = item
        ts = self._ts if t == self._t else self._new_instant(t)  # (self._instant, inlined)
        in_flight = self._open
        flight = in_flight.get(job_id)
        if (
            # (a job never seen before its end is one the Monitor met only there, not the one
            # in flight under its id, which the Monitor had dropped)
            flight is None or (not seen_submit and started is None) or not flight.pid or not self._exact
            or (state != _DONE_VALUE and state != _FAILED_VALUE)
            or (submitter := flight.submitter) is None or (server := flight.server) is None
        ):
            if flight is None:
                flight = _InFlight(item, None, 0)  # only its end was seen
            else:
                del in_flight[job_id]
                flight.item = item
            self._end(flight, ts)
            return
        # Nearly every job: a remote one that ran on a slot and ended with a MON_JOB_DONE, its
        # hosts named. Its slice with its args (its jobs row, in json_line's words; see _times
        # for the times) in one text, straight from its fields (_end writes the others).
        del in_flight[job_id]
        pid, tid, start = flight.pid, flight.tid, flight.start_ts  # (it ran: start_ts is its start's)
        _heappush(self._slots[pid].free, tid)  # (_Lanes.give, inlined)
        self._busy -= 1
        flow = flight.flow
        kind = "local" if local else "remote"
        request_ts = None if flight.requested is None else flight.request_ts
        self._write(
            f'{{"ph":"X","cat":"{kind}","name":{_titles[file]},"pid":{pid},"tid":{tid},"ts":{start},'
            f'"dur":{ts - start if ts > start else 0}{_FLOW_IN % flow if flow else ""},"args":{{'
            f'"id": {job_id}, "file": {_strings[file]}, "lang": {_langs[lang]}, '
            f'"submitter": {_strings[submitter]}, "server": {_strings[server]}, "kind": "{kind}", '
            f'"outcome": "{"ok" if state == _DONE_VALUE else "lost" if lost else "failed"}", '
            f'"rerun_of": {"null" if rerun_of is None else rerun_of}, '
            f'"requested": {"null" if request_ts is None else _times[request_ts]}, '
            f'"started": {_times[start]}, "ended": {_times[ts]}, '
            f'"wait_ms": {"null" if request_ts is None else _millis[start - request_ts]}, '
            f'"run_ms": {_millis[ts - start]}, "real_msec": {real}, "user_msec": {user}, '
            f'"sys_msec": {sys_}, "in_bytes": {in_bytes}, "out_bytes": {out_bytes}, "exit_code": {exit_code}}}}}'
        )
        self.jobs += 1

    def _end(self, flight: _InFlight, end: int) -> None:
        """Write the job's slice, ending at ``end``, and free its lanes (the few jobs that
        _on_finished does not write itself: its args are its jobs row as json_line writes it)."""
        job = job_of(flight.item)
        names = self._names
        args = json_line(job_row(
            job, flight.requested,
            flight.submitter or (None if job.client_id is None else names.get(job.client_id)),
            flight.server or (None if job.server_id is None else names.get(job.server_id)),
        ))[:-1]
        flow = ""
        if flight.pid:  # it ran: on its compile host's slot
            pid, tid = flight.pid, flight.tid
            # (start_ts is _us(started), set with it; a job the Monitor dropped and met again
            # only at its end has none)
            start = flight.start_ts if job.started is not None else end
            _heappush(self._slots[pid].free, tid)  # (_Lanes.give, inlined)
            self._busy -= 1
            if flight.flow:
                flow = _FLOW_IN % flight.flow
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
            f'{{"ph":"X","cat":"{"local" if job.local else "remote"}","name":{_titles[job.file]},'
            f'"pid":{pid},"tid":{tid},"ts":{start},"dur":{max(0, end - start)}{flow},'
            f'"args":{args}}}'
        )
        self.jobs += 1

    # -- hosts --------------------------------------------------------------------------------

    def _on_host_added(self, item: tuple[Any, ...]) -> None:
        _, t, host_id, name, load = item
        ts = self._instant(t)
        self.hosts.added(host_id, name)
        self._load(ts, host_id, load)

    def _on_host_changed(self, item: tuple[Any, ...]) -> None:
        _, t, host_id, name, load = item
        ts = self._ts if t == self._t else self._new_instant(t)  # (a report comes every few frames)
        self.hosts.changed(host_id, name)
        self._load(ts, host_id, load)

    def _load(self, ts: int, host_id: int, load: int) -> None:
        pid = self._pid_of_id.get(host_id) or self._pid(host_id)
        if self._loads.get(pid) != load:
            self._loads[pid] = load
            self._write(f'{{"ph":"C","name":"load","pid":{pid},"tid":0,"ts":{ts},"args":{{"load":{load}}}}}')

    def _on_offline(self, item: tuple[Any, ...]) -> None:
        _, t, host_id = item
        ts = self._instant(t)
        self.hosts.went_offline(host_id)
        pid = self._pid(host_id)
        self._write(f'{{"ph":"i","name":"offline","s":"p","pid":{pid},"tid":0,"ts":{ts}}}')

    def _on_reset(self, item: tuple[Any, ...]) -> None:
        ts = self._instant(item[1])
        # The Monitor forgot hosts and jobs: what was in flight ends here, unseen.
        self.hosts.reset()
        for flight in list(self._open.values()):
            self._end(flight, ts)
        self._open.clear()
        self._pid_of_id.clear()

    def _on_end(self, item: tuple[Any, ...]) -> None:
        """The end of the recording: the jobs still in flight end there, as unfinished."""
        ts = _us(item[1])
        self._at(ts)
        self._t = None
        for flight in list(self._open.values()):
            self._end(flight, max(ts, _us(started_of(flight.item) or flight.requested or 0.0)))
        self._open.clear()
        self._flush_counters()


class TracePublisher(FedPublisher):
    """The whole trace in one publisher: a :class:`~icetools.feed.Feed` handing each event
    straight to a :class:`TraceBuilder`, which writes each trace event's JSON text through
    ``write`` as soon as it is complete. Call :meth:`finish` after the last record: the jobs
    still in flight end there, as unfinished."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.builder = TraceBuilder(write)
        super().__init__(self.builder.take)

    @property
    def jobs(self) -> int:
        """Job slices written."""
        return self.builder.jobs


def _short(path: str) -> str:
    """A slice's title: the file name without its folders (the whole path is in args)."""
    return path.rsplit("/", 1)[-1] or "(no file)"


# ---- writing the file -----------------------------------------------------------------------


class _TraceText:
    """The JSON object form, written as batches of events come: ``{"traceEvents":[`` ...
    ``]}``, each batch's texts in one piece."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.first = True
        out.write('{"displayTimeUnit":"ms","traceEvents":[\n')

    def write(self, texts: list[str]) -> None:
        if texts:
            if not self.first:
                self.out.write(",\n")
            self.first = False
            self.out.write(",\n".join(texts))

    def close(self) -> None:
        self.out.write("\n]}\n")


class _TraceSink:
    """The trace made from the feed's batches (a TraceBuilder), written to ``out``."""

    def __init__(self, out: TextIO) -> None:
        self._texts: list[str] = []
        self._builder = TraceBuilder(self._texts.append)
        self._text = _TraceText(out)

    def write(self, items: list[Item]) -> None:
        self._builder.take_all(items)
        self._text.write(self._texts)
        self._texts.clear()

    def finish(self) -> None:
        self._text.close()


#: The cluster process's lane for the gaps between files read as one recording.
GAP_TID = 1


def _write_gaps(items: list[Item], gaps: Any) -> None:
    """Several files read as one (icetools.recordings): each gap between them as a slice
    "no recording" on a lane of the cluster process, so the hole is seen, not guessed."""
    for i, gap in enumerate(gaps):
        if i == 0:
            items.append(_json({"ph": "M", "name": "thread_name", "pid": CLUSTER_PID, "tid": GAP_TID, "args": {"name": "recording"}}))
        start, stop = _us(gap.t), _us(gap.until)
        items.append(_json({
            "ph": "X", "name": "no recording", "cat": "gap", "pid": CLUSTER_PID, "tid": GAP_TID,
            "ts": start, "dur": stop - start, "args": {"from_s": round(gap.t, 6), "until_s": round(gap.until, 6)},
        }))


def write_trace(
    reader: CaptureReader,
    out: TextIO,
    *,
    progress_stream: TextIO | None = None,
    pipeline: bool | None = None,
) -> ReplayResult:
    """Replay the capture as fast as possible and write its trace to ``out``: with a formatter
    process if ``pipeline`` (by default: when it pays, see icetools.feed.pipelined); the text
    is the same either way."""
    return write_fed(
        reader, out, _TraceSink, "trace", progress_stream=progress_stream, pipeline=pipeline,
        last=lambda items: _write_gaps(items, getattr(reader, "gaps", ())),
    )


def write_trace_file(reader: CaptureReader, target: Path, *, progress_stream: TextIO | None = None) -> ReplayResult:
    """:func:`write_trace` into ``target``, replaced atomically: a damaged capture or a failure
    leaves no half-written trace (and any previous file as it was)."""
    with replaced(target, errors=_UNPAIRED) as out:
        return write_trace(reader, out, progress_stream=progress_stream)
