"""``icetools jobs``: one row per job of a recording, remote and local, in order of request.

The rows come from the Monitor's change events, not from a model of their own: the Monitor
decides what a job is, when it ends, whether it was lost with its host and which failed compile
a local job re-runs. A :class:`~icetools.feed.Feed` on the replaying Monitor hands the events on
as tuples and a :class:`JobsBuilder` makes the rows of them: for a big capture on two cores in
a second process, as ``trace`` does (see icetools.feed), so that this one only replays.

It streams: a row is written when its job ends, so memory holds only the jobs in flight and a
reorder buffer. Rows come out in order of request although jobs end in any order: a finished
job waits in the buffer until every job requested before it has been written. A job that is
still running when more than ``reorder_limit`` later jobs wait behind it (a job that never
ends would otherwise hold back every row after it, and memory with them) steps out of the
order: the rows behind it are written, and its own row comes when it ends (or at the end of the
recording). So the buffer holds at most ``reorder_limit`` rows plus the jobs in flight, which
the Monitor bounds. ``ORDER BY requested`` restores the order of such a late row.

The columns and their definitions are in docs/analysis.md.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from . import messages as m
from .capture import CaptureReader
from .feed import FINISHED, FedPublisher, HostNames, Item, begun_in_full, ended_in_full, job_of, write_fed
from .monitor import Job, JobState, Monitor
from .render import printable
from .replay import ReplayResult

#: The columns of a row, in order (the CSV header and the JSON keys).
COLUMNS = (
    "id", "file", "lang", "submitter", "server", "kind", "outcome", "rerun_of",
    "requested", "started", "ended", "wait_ms", "run_ms",
    "real_msec", "user_msec", "sys_msec", "in_bytes", "out_bytes", "exit_code",
)

#: Finished rows that may wait behind one running job before it steps out of the order.
REORDER_LIMIT = 10_000

Row = tuple[Any, ...]

_DONE_VALUE = JobState.DONE.value
_FAILED_VALUE = JobState.FAILED.value
_LOCAL_DONE_VALUE = JobState.LOCAL_DONE.value


class _Pending:
    """A job between its first event and its row."""

    __slots__ = ("seq", "item", "requested", "submitter", "server", "server_id", "done", "selected", "late")

    def __init__(self, seq: int, item: tuple[Any, ...], requested: float | None, selected: bool) -> None:
        self.seq = seq
        self.item = item  # the job's last tuple from the feed (in full): its fields as they stand
        self.requested = requested
        self.submitter: str | None = None
        self.server: str | None = None
        self.server_id: int | None = None  # the host ``server`` names
        self.done = False
        self.selected = selected
        self.late = False  # stepped out of the order (see the module docstring)


def host_name(monitor: Monitor, host_id: int | None) -> str | None:
    """The host's name, or None if the Monitor does not know one (yet)."""
    if host_id is None:
        return None
    host = monitor.hosts.get(host_id)
    return host.name if host is not None and host.name else None


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


class JobsBuilder:
    """Turns a :class:`~icetools.feed.Feed`'s tuples into rows, in order of request (see the
    module docstring), handing each to ``emit``; the jobs' hosts are named as the Monitor knew
    them while the job ran (the feed tells every change of a name).

    ``since``/``until`` select jobs by request time (seconds since the recording started, both
    ends included): the time of their MON_GET_CS (MON_LOCAL_JOB_BEGIN for a local job), or for
    a job whose request the recording did not see, the time of its first event.
    """

    def __init__(
        self,
        emit: Callable[[Row], None],
        *,
        since: float | None = None,
        until: float | None = None,
        reorder_limit: int = REORDER_LIMIT,
    ) -> None:
        self._emit_row = emit
        self.since = since
        self.until = until
        self.reorder_limit = reorder_limit
        self.hosts = HostNames()
        self._names = self.hosts.names
        self._seq = 0
        #: Jobs in flight by id (the Monitor's ids; they start over after a reset).
        self._open: dict[int, _Pending] = {}
        #: Selected jobs in order of request, until their row is written.
        self._queue: deque[_Pending] = deque()
        self.rows = 0
        self.late_rows = 0
        self._takers: tuple[Callable[[tuple[Any, ...]], None], ...] = (
            self._on_submitted, self._on_started, self._on_finished, self._on_host_added,
            self._on_host_changed, self._on_offline, self._on_reset, self._on_end, self._on_begun,
            self._on_ended,
        )

    def take(self, item: tuple[Any, ...]) -> None:
        """One item of the feed."""
        self._takers[item[0]](item)

    def take_all(self, items: list[tuple[Any, ...]]) -> None:
        """The feed's items, in order."""
        takers = self._takers
        for item in items:
            takers[item[0]](item)

    # -- jobs -------------------------------------------------------------------------------

    def _on_submitted(self, item: tuple[Any, ...]) -> None:
        job_id = item[2]
        old = self._open.get(job_id)
        if old is not None:
            # The id was reused without the old job ending: that one is over, unseen.
            self._end(old)
        pending = self._start(item, item[1], item[1])
        client_id = item[5]
        if client_id is not None:
            pending.submitter = self._names.get(client_id)

    def _on_started(self, item: tuple[Any, ...]) -> None:
        _, t, job_id, _, _, client_id, server_id, is_local_start, _, submitted, seen_submit, _ = item
        pending = self._open.get(job_id)
        if pending is not None and is_local_start and seen_submit:
            # A new local job under the id of one in flight: that one is over, unseen. (A
            # compile's start is of the job in flight, or of one the Monitor dropped and met
            # again: the same job either way.)
            self._end(pending)
            pending = None
        if pending is None:
            # A local job, or a remote one whose request the recording did not see.
            requested = submitted if seen_submit else None
            pending = self._start(item, requested, t if requested is None else requested)
        else:
            pending.item = item
        self._name(pending, client_id, server_id)

    def _on_begun(self, item: tuple[Any, ...]) -> None:
        pending = self._open.get(item[2])
        self._on_started(begun_in_full(item, None if pending is None else pending.item))

    def _on_finished(self, item: tuple[Any, ...]) -> None:
        job_id = item[2]
        pending = self._open.pop(job_id, None)
        if pending is None:
            # Met only at its end (a job the Monitor met again there has its request unseen).
            pending = self._start(item, None, item[1])
            del self._open[job_id]
        else:
            pending.item = item
        self._name(pending, item[5], item[6])
        pending.done = True
        if pending.late:
            self._write(pending, self._names)
        queue = self._queue
        if queue and queue[0].done:
            self._flush(self._names)

    def _on_ended(self, item: tuple[Any, ...]) -> None:
        pending = self._open.get(item[2])
        self._on_finished(ended_in_full(item, None if pending is None else pending.item))

    def _name(self, pending: _Pending, client_id: int | None, server_id: int | None) -> None:
        """The job's hosts as the Monitor names them now, where not named yet."""
        names = self._names
        if pending.submitter is None and client_id is not None:
            pending.submitter = names.get(client_id)
        if server_id is not None and (pending.server is None or server_id != pending.server_id):
            # (a job begun again on another host, the scheduler having moved it, is named
            # after the host it began on last, as its server_id is)
            pending.server = names.get(server_id)
            pending.server_id = server_id

    def _start(self, item: tuple[Any, ...], requested: float | None, at: float) -> _Pending:
        # A remote job's request is its MON_GET_CS, a local job's its MON_LOCAL_JOB_BEGIN; a
        # job already running when the recording began has none.
        selected = (self.since is None or at >= self.since) and (self.until is None or at <= self.until)
        self._seq += 1
        pending = self._open[item[2]] = _Pending(self._seq, item, requested, selected)
        if selected:
            queue = self._queue
            queue.append(pending)
            if len(queue) > self.reorder_limit:
                head = queue.popleft()
                if head.done:
                    self._write(head, None)
                else:
                    head.late = True
                    self.late_rows += 1
        return pending

    def _end(self, pending: _Pending) -> None:
        """The job's row is complete: a late one is written at once, others when their turn
        comes in the queue."""
        pending.done = True
        if pending.late:
            self._write(pending, self._names)

    def _flush(self, names: dict[int, str] | None) -> None:
        queue = self._queue
        emit = self._emit_row
        while queue and queue[0].done:
            pending = queue.popleft()
            if pending.selected:  # (always, in the queue: inlined _write)
                self.rows += 1
                emit(self.row(pending, names))

    # -- hosts ------------------------------------------------------------------------------

    def _on_host_added(self, item: tuple[Any, ...]) -> None:
        self.hosts.added(item[2], item[3])

    def _on_host_changed(self, item: tuple[Any, ...]) -> None:
        self.hosts.changed(item[2], item[3])

    def _on_offline(self, item: tuple[Any, ...]) -> None:
        self.hosts.went_offline(item[2])

    def _on_reset(self, item: tuple[Any, ...]) -> None:
        # The Monitor forgot its hosts and jobs: those in flight never end.
        self.hosts.reset()
        for pending in self._open.values():
            self._end(pending)
        self._open.clear()
        self._flush(self._names)

    def _on_end(self, item: tuple[Any, ...]) -> None:
        """The end of the recording: every row not written yet, in order of request (the jobs
        still running as ``unfinished``)."""
        rest = [p for p in self._open.values() if p.late and p.selected]
        rest += self._queue
        self._queue.clear()
        self._open.clear()
        for pending in sorted(rest, key=lambda p: p.seq):
            self._write(pending, self._names)

    # -- rows -------------------------------------------------------------------------------

    def _write(self, pending: _Pending, names: dict[int, str] | None) -> None:
        if not pending.selected:
            return
        self.rows += 1
        self._emit_row(self.row(pending, names))

    @staticmethod
    def row(pending: _Pending, names: dict[int, str] | None) -> Row:
        """The pending job's row; hosts it has no name for named as ``names`` has them now
        (if given)."""
        item = pending.item
        submitter, server = pending.submitter, pending.server
        if item[0] == FINISHED:  # (nearly every row)
            (_, ended, job_id, file, lang, client_id, server_id, state, local, started, _, rerun_of,
             exit_code, real, user, sys_, in_bytes, out_bytes, lost) = item
            if names is not None:
                if submitter is None and client_id is not None:
                    submitter = names.get(client_id)
                if server is None and server_id is not None:
                    server = names.get(server_id)
            return _row(
                job_id, file, lang, client_id, server_id, state, local, rerun_of, started, ended, lost,
                exit_code, real, user, sys_, in_bytes, out_bytes, pending.requested, submitter, server,
            )
        job = job_of(item)
        if names is not None:
            if submitter is None and job.client_id is not None:
                submitter = names.get(job.client_id)
            if server is None and job.server_id is not None:
                server = names.get(job.server_id)
        return job_row(job, pending.requested, submitter, server)


class JobsPublisher(FedPublisher):
    """The rows of a replay in one publisher: a :class:`~icetools.feed.Feed` handing each
    event straight to a :class:`JobsBuilder` (see there). Call :meth:`finish` after the last
    record: it writes the rows of the jobs still running as ``unfinished``."""

    def __init__(
        self,
        emit: Callable[[Row], None],
        *,
        since: float | None = None,
        until: float | None = None,
        reorder_limit: int = REORDER_LIMIT,
    ) -> None:
        self.builder = JobsBuilder(emit, since=since, until=until, reorder_limit=reorder_limit)
        super().__init__(self.builder.take)

    @property
    def rows(self) -> int:
        """Rows written."""
        return self.builder.rows

    @property
    def late_rows(self) -> int:
        """Rows that stepped out of the order of request (see the module docstring)."""
        return self.builder.late_rows


def job_row(job: Job, requested: float | None, submitter: str | None, server: str | None) -> Row:
    """The row of a job as it stands (see COLUMNS): ``requested`` as seen (None if the recording
    did not see the request), host names where known (else ``#ID``). (stats.WhyAnalysis._take
    computes the fields it needs the same way, and trace.TraceBuilder._on_finished writes the
    row of a finished remote job as json_line would: change them together.)"""
    return _row(
        job.id, job.file, job.lang, job.client_id, job.server_id, job.state._value_, job.local, job.rerun_of,
        job.started, job.ended, job.lost, job.exit_code, job.real_msec, job.user_msec, job.sys_msec,
        job.in_uncompressed, job.out_uncompressed, requested, submitter, server,
    )


def _row(
    job_id: int, file: str, lang: int | None, client_id: int | None, server_id: int | None, state: str,
    local: bool, rerun_of: int | None, started: float | None, ended: float | None, lost: bool,
    exit_code: int, real_msec: int, user_msec: int, sys_msec: int, in_bytes: int, out_bytes: int,
    requested: float | None, submitter: str | None, server: str | None,
) -> Row:
    """job_row from the job's fields (``state``: its JobState's value), as a FINISHED tuple of
    the feed holds them."""
    if submitter is None and client_id is not None:
        submitter = f"#{client_id}"
    if server is None and server_id is not None:
        server = f"#{server_id}"
    if state == _DONE_VALUE or state == _FAILED_VALUE:  # a MON_JOB_DONE was seen: what the host measured
        outcome = ("lost" if lost else "failed") if state == _FAILED_VALUE else "ok"
        return (
            job_id, file, _LANGS[lang] if lang in _LANGS else str(lang), submitter, server,
            "local" if local else "remote", outcome, rerun_of,
            requested, started, ended,
            None if requested is None or started is None else round((started - requested) * 1000, 3),
            None if started is None or ended is None else round((ended - started) * 1000, 3),
            real_msec, user_msec, sys_msec, in_bytes, out_bytes, exit_code,
        )
    if state == _LOCAL_DONE_VALUE:
        outcome = "lost" if lost else "ok"
    else:
        outcome = "unfinished"
        ended = None
    return (
        job_id, file, _LANGS[lang] if lang in _LANGS else str(lang), submitter, server,
        "local" if local else "remote", outcome, rerun_of,
        requested, started, ended, _ms(requested, started), _ms(started, ended),
        None, None, None, None, None, None,
    )


#: Language number -> name (an unknown number shows as itself; no language: None).
_LANGS: dict[int | None, str | None] = {None: None, **m.LANG_NAMES}


# ---- output -------------------------------------------------------------------------------

class RowWriter:
    """Writes rows to a stream as CSV (with a header row), JSON Lines or a text table, in
    batches (one write per ``batch`` rows)."""

    def __init__(self, out: TextIO, form: str, *, batch: int = 1024) -> None:
        if form not in ("csv", "json", "text"):
            raise ValueError(f"unknown form {form!r}")
        self.out = out
        self.form = form
        self._batch_size = batch
        self._rows: list[Row] = []
        self._csv = csv.writer(out, lineterminator="\n") if form == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)
        elif form == "text":
            out.write(_TEXT_HEADER + "\n")
        self._line = json_line if form == "json" else _text_line

    def write(self, row: Row) -> None:
        rows = self._rows
        rows.append(row)
        if len(rows) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        rows = self._rows
        if rows:
            if self._csv is not None:
                self._csv.writerows(rows)  # None is written as an empty field
            else:
                line = self._line
                self.out.write("".join([line(row) for row in rows]))
            rows.clear()
        self.out.flush()


_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C-accelerated where available

#: JSON texts of recent values, for json_line: a float's repr costs 250-400 ns, and a recording's
#: times repeat (a scheduler sends in batches: many frames share one time) as do durations in
#: milliseconds, host names and files. Keys are None, strings (escaped) and floats that are not
#: whole numbers: so no int (or bool) can find a float's text by being equal to it, and 0.0 and
#: -0.0 (equal keys that print differently) are never cached. Cleared when full.
_texts: dict[Any, str] = {None: "null"}
_TEXTS_LIMIT = 8192


def _float_text(value: float | None) -> str:
    """A time or duration of a row (a float, or None) as JSON, as json.dumps writes it (repr);
    remembered in _texts when it may be."""
    if value is None:
        return "null"
    if not value:
        return repr(value)  # 0.0 or -0.0 (or an int 0)
    text = repr(value)
    if value.__class__ is float and not value.is_integer():
        if len(_texts) >= _TEXTS_LIMIT:
            _texts.clear()
            _texts[None] = "null"
        _texts[value] = text
    return text


def _str_text(value: str | None) -> str:
    """A name, language or file of a row (a str, or None) as JSON; remembered in _texts."""
    if value is None:
        return "null"
    text = _str(value)
    if len(_texts) >= _TEXTS_LIMIT:
        _texts.clear()
        _texts[None] = "null"
    _texts[value] = text
    return text


def json_line(row: Row) -> str:
    """``json.dumps(dict(zip(COLUMNS, row), ensure_ascii=False))`` plus a newline, in a fraction
    of the time: a row's types are known (see job_row), and the texts of its floats and strings
    are looked up in _texts before being formatted."""
    (job_id, file, lang, submitter, server, kind, outcome, rerun_of, requested, started, ended,
     wait_ms, run_ms, real_msec, user_msec, sys_msec, in_bytes, out_bytes, exit_code) = row
    n = "null"
    text = _texts.get
    return (
        f'{{"id": {job_id}, "file": {text(file) or _str_text(file)}, "lang": {text(lang) or _str_text(lang)}, '
        f'"submitter": {text(submitter) or _str_text(submitter)}, "server": {text(server) or _str_text(server)}, '
        f'"kind": "{kind}", "outcome": "{outcome}", "rerun_of": {n if rerun_of is None else rerun_of}, '
        f'"requested": {text(requested) or _float_text(requested)}, "started": {text(started) or _float_text(started)}, '
        f'"ended": {text(ended) or _float_text(ended)}, "wait_ms": {text(wait_ms) or _float_text(wait_ms)}, '
        f'"run_ms": {text(run_ms) or _float_text(run_ms)}, "real_msec": {n if real_msec is None else real_msec}, '
        f'"user_msec": {n if user_msec is None else user_msec}, "sys_msec": {n if sys_msec is None else sys_msec}, '
        f'"in_bytes": {n if in_bytes is None else in_bytes}, "out_bytes": {n if out_bytes is None else out_bytes}, '
        f'"exit_code": {n if exit_code is None else exit_code}}}\n'
    )


_TEXT_HEADER = (
    f"{'id':>7} {'kind':<6} {'outcome':<10} {'submitter':<14} {'server':<14} {'requested':>10} "
    f"{'wait ms':>9} {'run ms':>9} {'real ms':>8} {'exit':>4} {'rerun of':>8}  file"
)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _name_cell(value: str | None) -> str:
    if value is None:
        return "-"
    text = printable(value)
    return text if len(text) <= 14 else text[:13] + "~"


def _text_line(row: Row) -> str:
    (job_id, file, _lang, submitter, server, kind, outcome, rerun_of, requested, _started, _ended,
     wait_ms, run_ms, real_msec, *_, exit_code) = row
    requested_cell = "-" if requested is None else f"{requested:.3f}"
    wait_cell = "-" if wait_ms is None else f"{wait_ms:.1f}"
    run_cell = "-" if run_ms is None else f"{run_ms:.1f}"
    return (
        f"{job_id:>7} {kind:<6} {outcome:<10} {_name_cell(submitter):<14} {_name_cell(server):<14} "
        f"{requested_cell:>10} {wait_cell:>9} {run_cell:>9} {_cell(real_msec):>8} {_cell(exit_code):>4} {_cell(rerun_of):>8}  "
        f"{printable(file) if file else '-'}\n"
    )


class _JobsSink:
    """The rows made from a feed's batches (a JobsBuilder), written to ``out`` by a RowWriter."""

    def __init__(self, out: TextIO, form: str, since: float | None, until: float | None) -> None:
        self._writer = RowWriter(out, form)
        self._builder = JobsBuilder(self._writer.write, since=since, until=until)

    def write(self, items: list[Item]) -> None:
        self._builder.take_all(items)  # type: ignore[arg-type]

    def finish(self) -> None:
        self._writer.flush()


def write_jobs(
    reader: CaptureReader,
    out: TextIO,
    form: str,
    *,
    since: float | None = None,
    until: float | None = None,
    progress_stream: TextIO | None = None,
    pipeline: bool | None = None,
) -> ReplayResult:
    """Replay the capture as fast as possible and write its job rows to ``out`` (``form``:
    ``csv``, ``json`` or ``text``): with a formatter process if ``pipeline`` (by default: when
    it pays, see icetools.feed.pipelined); the text is the same either way. Rows written before
    a damaged record stay written."""
    if form not in ("csv", "json", "text"):
        raise ValueError(f"unknown form {form!r}")
    return write_fed(
        reader, out, lambda out: _JobsSink(out, form, since, until), "jobs",
        progress_stream=progress_stream, pipeline=pipeline, keep_on_error=True,
    )
