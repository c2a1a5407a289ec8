"""The Monitor's job and host events as plain tuples (a :class:`Feed`), and the means to build
an output from them in a second process (:func:`write_fed`).

``trace`` and ``jobs`` read a whole capture and write one text per job. Their books (lanes and
flows, the order of request) and their text cost more than the replay itself, so on two cores
they run in a forked process (the formatter) while this one only replays: a :class:`Feed` on the
replaying Monitor turns each event into a tuple of primitives (what marshal writes), tagged by
its first item, and batches of them go down a pipe to the formatter, where a *sink* (a trace or
jobs builder and its writer) turns them into text. Small captures, one core or an output
without a file descriptor: the same sink in this process. The output is the same either way.

A job's tuple carries the job's fields as they stand after the event (the Monitor changes a job
only where it tells its publishers), and host tuples carry the hosts' names, so a builder knows
what the Monitor knew at each event without the Monitor (tests check it after every event of
random streams): the jobs in flight from their last tuple (:func:`job_of`), the hosts' names
and which are offline from a :class:`HostNames`.
"""

from __future__ import annotations

import io
import marshal
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from .capture import CaptureReader
from .errors import IcetoolsError
from .monitor import Event, EventKind, Job, JobState, Monitor, Publisher
from .output import terminated_as_exit
from .progress import Progress
from .replay import ReplayResult, replay_fast

#: (SUBMITTED, t, id, file, lang, client_id): a new job, requested at t (MON_GET_CS).
SUBMITTED = 0
#: (STARTED, t, id, file, lang, client_id, server_id, is_local_start, local, submitted,
#: seen_submit, rerun_of): begun at t on server_id; is_local_start: a new local job
#: (MON_LOCAL_JOB_BEGIN), else a compile (MON_JOB_BEGIN).
STARTED = 1
#: (FINISHED, t, id, file, lang, client_id, server_id, state (its value), local, started,
#: seen_submit, rerun_of, exit_code, real_msec, user_msec, sys_msec, in_bytes, out_bytes, lost):
#: ended at t.
FINISHED = 2
#: (HOST_ADDED or HOST_CHANGED, t, host id, name, load): a host's report.
HOST_ADDED = 3
HOST_CHANGED = 4
#: (HOST_OFFLINE, t, host id).
HOST_OFFLINE = 5
#: (RESET, t): the Monitor forgot its hosts and jobs.
RESET = 6
#: (END, t): the end of the recording.
END = 7
# The most frequent two in short, for the jobs a builder already knows (the feed leaves out
# what the job's last tuple told, which is most of it; see begun_in_full and ended_in_full):
#: (BEGUN, t, id, server_id): a compile's start, of the job last told under this id (one that
#: was requested or started locally since the Monitor's start or its last reset).
BEGUN = 8
#: (ENDED, t, id, state (its value), exit_code, real_msec, user_msec, sys_msec, in_bytes,
#: out_bytes, lost): the end of a job that had started.
ENDED = 9
#: What a feed hands on: one of the tuples above, or a finished text that a sink writes as it is.
Item = str | tuple[Any, ...]

_JOB_SUBMITTED = EventKind.JOB_SUBMITTED
_JOB_STARTED = EventKind.JOB_STARTED
_JOB_FINISHED = EventKind.JOB_FINISHED
_LOCAL_START = JobState.LOCAL


class Feed(Publisher):
    """The Monitor's job and host events, handed to ``add`` as the tuples above: this side of
    a builder does nothing else, so that the replay runs nearly as fast as without it. Call
    :meth:`finish` after the last record."""

    kinds = frozenset(EventKind)

    def __init__(self, add: Callable[[Item], None]) -> None:
        self._add = add

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        # A function per kind, ``add`` bound in it: they run for nearly every frame of a recording.
        add = self._add

        def submitted(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            _, t, _, job = event
            add((SUBMITTED, t, job.id, job.file, job.lang, job.client_id))  # type: ignore[union-attr]

        def started(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            _, t, _, job = event
            if job.state is not _LOCAL_START and job.seen_submit:  # type: ignore[union-attr]
                add((BEGUN, t, job.id, job.server_id))  # type: ignore[union-attr]
                return
            add((  # type: ignore[union-attr]
                STARTED, t, job.id, job.file, job.lang, job.client_id, job.server_id,  # type: ignore[union-attr]
                job.state is _LOCAL_START, job.local, job.submitted, job.seen_submit, job.rerun_of,  # type: ignore[union-attr]
            ))

        def finished(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            _, t, _, job = event
            if job.started is not None:  # type: ignore[union-attr]
                add((  # type: ignore[union-attr]
                    ENDED, t, job.id, job.state._value_, job.exit_code, job.real_msec,  # type: ignore[union-attr]
                    job.user_msec, job.sys_msec, job.in_uncompressed, job.out_uncompressed, job.lost,  # type: ignore[union-attr]
                ))
                return
            add((  # type: ignore[union-attr]
                FINISHED, t, job.id, job.file, job.lang, job.client_id, job.server_id,  # type: ignore[union-attr]
                job.state._value_, job.local, job.started, job.seen_submit, job.rerun_of,  # type: ignore[union-attr]
                job.exit_code, job.real_msec, job.user_msec, job.sys_msec,  # type: ignore[union-attr]
                job.in_uncompressed, job.out_uncompressed, job.lost,  # type: ignore[union-attr]
            ))

        def host_added(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            _, t, host, _ = event
            # (host.load would apply the host's pending reports in full: see Host.report)
            add((HOST_ADDED, t, host.id, host.name, host.reported_load()))  # type: ignore[union-attr]

        def host_changed(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            _, t, host, _ = event
            add((HOST_CHANGED, t, host.id, host.name, host.reported_load()))  # type: ignore[union-attr]

        def offline(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            add((HOST_OFFLINE, event.t, event.host.id))  # type: ignore[union-attr]

        def reset(event: Event, monitor: Monitor, add: Callable[[Item], None] = add) -> None:
            add((RESET, event.t))

        return {
            _JOB_SUBMITTED: submitted,
            _JOB_STARTED: started,
            _JOB_FINISHED: finished,
            EventKind.HOST_ADDED: host_added,
            EventKind.HOST_CHANGED: host_changed,
            EventKind.HOST_OFFLINE: offline,
            EventKind.RESET: reset,
        }[kind]

    def publish(self, event: Event, monitor: Monitor) -> None:
        self.receiver(event.kind)(event, monitor)  # type: ignore[misc]

    def finish(self, monitor: Monitor) -> None:
        """The end of the recording (the jobs still in flight end there, as unfinished)."""
        self._add((END, monitor.now))


class FedPublisher(Publisher):
    """A builder of a feed's tuples as one publisher of the Monitor (per event, in this
    process): a :class:`Feed` handing each event straight to ``take``. Call :meth:`finish`
    after the last record."""

    kinds = frozenset(EventKind)

    def __init__(self, take: Callable[[Any], None]) -> None:
        self._feed = Feed(take)

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        return self._feed.receiver(kind)

    def publish(self, event: Event, monitor: Monitor) -> None:
        self._feed.publish(event, monitor)

    def finish(self, monitor: Monitor) -> None:
        """The end of the recording: the builder ends the jobs still in flight."""
        self._feed.finish(monitor)


# ---- what a builder makes of the tuples -----------------------------------------------------


def job_of(item: tuple[Any, ...]) -> Job:
    """The job a job's tuple (SUBMITTED, STARTED or FINISHED) describes, as the Monitor had it."""
    tag = item[0]
    job = Job(item[2], item[3], item[4], item[5], item[1] if tag == SUBMITTED else None)
    if tag == STARTED:
        (_, t, _, _, _, _, job.server_id, is_local_start, job.local, job.submitted, job.seen_submit,
         job.rerun_of) = item
        job.state = _LOCAL_START if is_local_start else JobState.COMPILING
        job.started = t
    elif tag == FINISHED:
        (_, job.ended, _, _, _, _, job.server_id, state, job.local, job.started, job.seen_submit,
         job.rerun_of, job.exit_code, job.real_msec, job.user_msec, job.sys_msec,
         job.in_uncompressed, job.out_uncompressed, job.lost) = item
        job.state = JobState(state)
    return job


def started_of(item: tuple[Any, ...]) -> float | None:
    """When the job of a job's tuple started (None: not yet)."""
    tag = item[0]
    return item[1] if tag == STARTED else item[9] if tag == FINISHED else None


def begun_in_full(item: tuple[Any, ...], last: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """A BEGUN tuple as the STARTED tuple it stands for, ``last`` being the job's last tuple
    (None: the builder knows no job under its id, which a feed does not send)."""
    _, t, job_id, server_id = item
    if last is None:
        last = (SUBMITTED, t, job_id, "", None, None)
    if last[0] == SUBMITTED:
        return (STARTED, t, job_id, last[3], last[4], last[5], server_id, False, False, last[1], True, None)
    return (STARTED, t, job_id, last[3], last[4], last[5], server_id, False, *last[8:12])


def ended_in_full(item: tuple[Any, ...], last: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """An ENDED tuple as the FINISHED tuple it stands for, ``last`` being the job's last tuple
    (a STARTED one from a feed: the job had started)."""
    _, t, job_id, *end = item
    if last is not None and last[0] == STARTED:
        # file, lang, client_id, server_id; local, started, seen_submit, rerun_of
        return (FINISHED, t, job_id, *last[3:7], end[0], last[8], last[1], *last[10:12], *end[1:])
    if last is not None:  # (not from a feed: the job had started)
        return (FINISHED, t, job_id, *last[3:6], None, end[0], False, None, True, None, *end[1:])
    return (FINISHED, t, job_id, "", None, None, None, end[0], False, None, False, None, *end[1:])


class HostNames:
    """The hosts' names and which are offline, as the Monitor knows them, from the host tuples:
    ``names`` holds the hosts that have a name (host id -> name), ``offline`` the ids of those
    that went offline."""

    __slots__ = ("names", "offline")

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.offline: set[int] = set()

    def added(self, host_id: int, name: str) -> None:
        names, offline = self.names, self.offline
        if name and offline:
            # A daemon that logged in again gets a new id: the Monitor forgets its old, offline
            # one (as Monitor._on_stats does).
            for old in [i for i in offline if names.get(i) == name]:
                del names[old]
                offline.discard(old)
        self.changed(host_id, name)

    def changed(self, host_id: int, name: str) -> None:
        if name:
            self.names[host_id] = name
        elif host_id in self.names:
            del self.names[host_id]
        if self.offline:
            self.offline.discard(host_id)  # (a report: it is online)

    def went_offline(self, host_id: int) -> None:
        self.offline.add(host_id)

    def reset(self) -> None:
        self.names.clear()
        self.offline.clear()


# ---- feeding a sink, here or in a formatter process ------------------------------------------


class Sink(Protocol):
    """Where a feed's batches go: a builder and the writer of its text."""

    def write(self, items: list[Item]) -> None:
        """A batch of the feed's items, in order."""

    def finish(self) -> None:
        """The last batch was written: write the end of the output."""


class FormatterError(IcetoolsError):
    """The formatter process failed in a way that is not a problem with the output file."""


class _Pipeline:
    """The output made and written by a second process (the formatter: a sink), while this one
    replays with a Feed: the sink's books and text are more than half of the command's own time,
    so on two cores the two halves overlap.

    Batches of the feed's items go down a pipe marshalled (tuples of numbers and strings, which
    marshal writes a little faster than pickle and reads back in two thirds of its time; a file
    name repeated in a batch is written once); an empty message ends the output, and the
    formatter answers with None or the exception it met. Closing the pipe without that end
    (an error or an interrupt here) makes it stop without writing the rest, and it is killed in
    any case before this process goes on, so no formatter outlives the command and the atomic
    writer (output.py) can remove its temporary file.

    The formatter is forked: it needs nothing but the sink and ``out``'s file descriptor, which
    a fork gives it at no cost, where forkserver or spawn would start a new interpreter and
    import icetools (about 0.1 s, an eighth of the time saved on 1M frames) and would have to be
    handed the descriptor. The command has no other thread at that point (the replay has not
    begun), which is what makes a fork safe."""

    def __init__(self, out: TextIO, make_sink: Callable[[TextIO], Sink], what: str) -> None:
        import multiprocessing

        self.what = what
        # Nothing buffered may be left to be written twice (by both processes).
        for stream in (out, sys.stdout, sys.stderr):
            stream.flush()
        context = multiprocessing.get_context("fork")
        receive, self._send = context.Pipe(duplex=False)
        _widen(self._send.fileno())
        self._answer, answer = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_formatter, args=(out, make_sink, what, receive, self._send, answer),
            name=f"icetools {what} formatter", daemon=True,
        )
        self.process.start()
        receive.close()
        answer.close()

    def write(self, items: list[Item]) -> None:
        try:
            self._send.send_bytes(marshal.dumps(items))
        except OSError:  # (the formatter is gone: finish() says why)
            self.finish()
            raise FormatterError(f"the {self.what} formatter process stopped early") from None

    def finish(self) -> None:
        """Wait for the formatter to write the end of the output; its failure raised here."""
        try:
            self._send.send_bytes(b"")
        except OSError:
            pass
        try:
            error = self._answer.recv()
        except (EOFError, OSError):
            self.process.join()
            raise FormatterError(f"the {self.what} formatter process died (exit code {self.process.exitcode})") from None
        finally:
            self.close()
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the formatter (if it still runs) and wait for it to be gone."""
        self._send.close()
        self._answer.close()
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()


#: Bytes a pipe to the formatter holds (Linux' default limit for a user): a batch is
#: about 100 kB, more than a pipe's default 64 kB, so without it this process would wait for the
#: formatter to finish the batch before at every send instead of running ahead.
_PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Make the pipe hold _PIPE_BYTES if the system lets it (Linux; elsewhere it stays as is)."""
    import fcntl

    if hasattr(fcntl, "F_SETPIPE_SZ"):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass


def _formatter(out: TextIO, make_sink: Callable[[TextIO], Sink], what: str, receive: Any, send: Any, answer: Any) -> None:
    """The formatter process: the sink's output from the batches, into ``out``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (Ctrl-C reaches both: the replay's side stops it)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (not terminated_as_exit's: just end)
    send.close()  # (else the end of the pipe would never be seen)
    loads = marshal.loads
    try:
        sink = make_sink(out)
        while data := receive.recv_bytes():
            sink.write(loads(data))
        sink.finish()
        out.flush()
    except EOFError:  # the replay stopped: write no more
        os._exit(1)
    except BaseException as e:  # noqa: BLE001 - handed to the replay's side, which raises it
        if not isinstance(e, OSError):
            e = FormatterError(f"the {what} formatter failed: {type(e).__name__}: {e}")
        try:
            answer.send(e)
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(1)
    answer.send(None)


#: Frames replayed between two batches of a feed's items: about 1,500 items.
BATCH_FRAMES = 2048
#: Captures from this size on (bytes, about 30k frames) are written with a formatter process when
#: there are two cores: below it, starting the process costs about what it saves.
PIPELINE_FROM = 2_000_000


def pipelined(reader: CaptureReader, out: TextIO) -> bool:
    """Whether to make the text in a formatter process: two cores, a system that forks, a big
    capture, and an output with a file descriptor the formatter can write to."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):  # (one core, or Windows)
        return False
    try:
        out.fileno()
        # (several files read as one: their sizes together)
        size = sum(os.path.getsize(path) for path in getattr(reader, "paths", [reader.path]))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return size >= PIPELINE_FROM


def write_fed(
    reader: CaptureReader,
    out: TextIO,
    make_sink: Callable[[TextIO], Sink],
    what: str,
    *,
    progress_stream: TextIO | None = None,
    pipeline: bool | None = None,
    last: Callable[[list[Item]], None] | None = None,
    keep_on_error: bool = False,
) -> ReplayResult:
    """Replay the capture as fast as possible with a :class:`Feed`, its items going in batches to
    the sink ``make_sink(out)``: in a formatter process (named after ``what``) if ``pipeline``
    (by default: when it pays, see :func:`pipelined`), else in this one; the output is the same
    either way. ``last`` may add items after the feed's end. If the replay fails (a damaged
    capture, an interrupt), the sink is finished with what was fed so far if ``keep_on_error``
    (output that is complete piece by piece, such as rows: the feed's end is not sent, so only
    what was complete is written), else stopped where it stands."""
    if pipeline is None:
        pipeline = pipelined(reader, out)
    with terminated_as_exit():  # (standard output: the formatter is stopped on SIGTERM too)
        sink: Sink = _Pipeline(out, make_sink, what) if pipeline else make_sink(out)
        try:
            items: list[Item] = []

            def flush() -> None:
                if items:
                    sink.write(items)
                    items.clear()

            feed = Feed(items.append)
            monitor = Monitor(publishers=[feed])
            if progress_stream is None:
                result = replay_fast(monitor, reader, every=BATCH_FRAMES, between=flush)
            else:
                with Progress(reader, progress_stream) as progress:  # (as replay_file shows it)

                    def between() -> None:
                        flush()
                        progress.update()

                    result = replay_fast(monitor, reader, every=BATCH_FRAMES, between=between)
        except BaseException:
            if keep_on_error:
                _finish_quietly(sink, flush)
            raise
        else:
            feed.finish(monitor)
            if last is not None:
                last(items)
            flush()
            sink.finish()
        finally:
            if isinstance(sink, _Pipeline):
                sink.close()
    return result


def _finish_quietly(sink: Sink, flush: Callable[[], None]) -> None:
    """The sink finished with what was fed, after a failure that is raised instead of any
    failure of this (the output's own problem, if it has one, comes again at its next write)."""
    try:
        flush()
        sink.finish()
    except Exception:  # noqa: BLE001 - the replay's failure is the one to report
        pass
