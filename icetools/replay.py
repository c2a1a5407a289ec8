"""Driving the Monitor from a recording, as fast as possible or in recorded time.

Timing is a small pure generator (asciinema's way): :func:`paced` yields records no earlier than
their recorded time divided by the speed, given a clock and a sleep function, so it is tested
without sleeping.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from . import messages
from .capture import CaptureReader, CarriedRecord, ConnectRecord, DisconnectRecord, FrameRecord, Record
from .errors import ProtocolError
from .monitor import JobState, Monitor
from .progress import Progress
from .recordings import GapRecord
from .render import printable


@dataclasses.dataclass(slots=True)
class ReplayResult:
    records: int = 0
    frames: int = 0
    undecodable: int = 0
    reached_until: bool = False
    #: The first record past ``until``, read but not applied (to resume from).
    pending: Record | None = None


#: What a gap between files (days, maybe) takes in a paced replay: this many seconds of wall
#: time at most, whatever the speed; nothing happened in it, so nobody wants to wait it out.
GAP_PAUSE = 1.0


def skipped_by_gap(gap: GapRecord, speed: float) -> float:
    """The recorded seconds a paced replay skips at ``gap``: all of it but GAP_PAUSE of wall time."""
    return max(0.0, (gap.until - gap.t) - GAP_PAUSE * speed)


def paced(
    records: Iterable[Record],
    speed: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Record]:
    """Yield each record once ``record.t / speed`` seconds have passed since the first one,
    gaps between files shortened to GAP_PAUSE."""
    start: float | None = None
    skipped = 0.0
    for record in records:
        if type(record) is GapRecord:
            skipped += skipped_by_gap(record, speed)
        if start is None:
            start = clock() - record.t / speed
        delay = start + (record.t - skipped) / speed - clock()
        if delay > 0:
            sleep(delay)
        yield record


def apply_record(monitor: Monitor, record: Record) -> bool:
    """Apply one record to the Monitor; False for a frame that could not be decoded (dump shows
    and counts those; a replay skips what it cannot read). A carried frame is applied as what
    it is, a frame received at its ``original`` time (as pump() does), but neither counted in the
    Monitor's frames nor moving its clock back."""
    kind = type(record)
    if kind is FrameRecord:
        try:
            msg = messages.decode(record.data, record.protocol, monitor=True)
        except ProtocolError:
            return False
        monitor.feed(msg, record.t)
    elif kind is CarriedRecord:
        try:
            msg = messages.decode(record.data, record.protocol, monitor=True)
        except ProtocolError:
            return True  # not counted as undecodable: that count is of the file's frames
        handler = monitor.handlers.get(type(msg))
        if handler is not None:
            handler(msg, record.original)
    else:
        apply_event(monitor, record)
    return True


def apply_event(monitor: Monitor, record: Record) -> None:
    """Apply a connect, disconnect, end or gap record."""
    if type(record) is ConnectRecord:
        monitor.connected(record.protocol, record.t)
    elif type(record) is DisconnectRecord:
        monitor.disconnected(record.t)
    elif type(record) is GapRecord:
        monitor.gap(record.t)
    else:
        monitor.now = record.t


def replay(
    monitor: Monitor,
    records: Iterable[Record],
    *,
    until: float | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> ReplayResult:
    """Apply records to ``monitor`` up to time ``until`` (seconds since the recording began),
    one by one: for paced replays and anything that needs each record. (A whole file as fast
    as possible goes through :func:`replay_fast`.)"""
    result = ReplayResult()
    carried_at: float | None = None  # the carried frames' time, until a record of another kind
    for record in records:
        if carried_at is not None and type(record) is not CarriedRecord:
            monitor.carried_settled(carried_at)  # (as pump's on_settled)
            carried_at = None
        if until is not None and record.t > until:
            result.reached_until = True
            result.pending = record
            monitor.now = until
            break
        if type(record) is CarriedRecord:
            carried_at = record.t
        result.records += 1
        if type(record) is FrameRecord:
            result.frames += 1
        if not apply_record(monitor, record):
            result.undecodable += 1
        if on_record is not None:
            on_record(record)  # after the record was applied
    if carried_at is not None and not result.reached_until:
        monitor.carried_settled(carried_at)
    return result


#: Frames per pump() call in a fast replay: between calls it updates the Monitor's clock and
#: frame count, the progress bar and checkpoints.
PUMP_FRAMES = 32768


def replay_fast(
    monitor: Monitor,
    reader: CaptureReader,
    *,
    until: float | None = None,
    every: int = PUMP_FRAMES,
    between: Callable[[], None] | None = None,
) -> ReplayResult:
    """Replay from where ``reader`` stands as fast as possible, up to time ``until``: what
    :func:`replay` does, through :meth:`CaptureReader.pump` (no record objects, decoded in
    place), about twice as fast. ``between`` is called every ``every`` frames, with the Monitor
    and the reader up to date (for checkpoints and progress bars). The reader is left at the
    first record not applied."""
    result = ReplayResult()
    handlers = monitor.handlers
    totals = monitor.totals

    def on_event(record: Record) -> None:
        result.records += 1
        apply_event(monitor, record)

    while True:
        # The Monitor's handlers read messages by position: plain field tuples will do.
        pumped = reader.pump(
            handlers, on_event, until=until, max_frames=every, fields=True, on_settled=monitor.carried_settled,
        )
        decoded = pumped.frames - pumped.undecodable
        result.frames += pumped.frames
        result.records += pumped.frames
        result.undecodable += pumped.undecodable
        totals.frames += decoded
        if pumped.last_t is not None:
            monitor.now = pumped.last_t
        if pumped.stopped == "until":
            result.reached_until = True
            monitor.now = until if until is not None else monitor.now
            return result
        if pumped.stopped == "end":
            return result
        if between is not None:
            between()


def replay_file(
    monitor: Monitor,
    reader: CaptureReader,
    *,
    speed: float | None = None,
    until: float | None = None,
    progress_stream: TextIO | None = None,
) -> ReplayResult:
    """Replay a capture file; ``speed=None`` means as fast as possible (with a progress bar on
    ``progress_stream`` if that takes more than a second)."""
    if speed is None:
        if progress_stream is None:
            return replay_fast(monitor, reader, until=until)
        with Progress(reader, progress_stream) as progress:
            return replay_fast(monitor, reader, until=until, between=progress.update)
    return replay(monitor, paced(reader, speed), until=until)


# ---- the state, for people ---------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def render_state(monitor: Monitor) -> str:
    """Hosts with their counters, running jobs and totals, as a terminal would show them."""
    lines: list[str] = []
    state = "connected" if monitor.is_connected else "disconnected"
    lines.append(f"cluster at {monitor.now:.1f} s ({state}, protocol {monitor.protocol or '-'})")
    lines.append("")
    header = f"{'id':>4}  {'host':<16} {'ip':<15} {'state':<7} {'jobs':>7} {'load':>5} {'speed':>8}  {'compiled':>8} {'submitted':>9} {'local':>6} {'failed':>6}"
    lines.append(header)
    for host in sorted(monitor.hosts.values(), key=lambda h: h.id):
        c = host.counters
        jobs = f"{len(host.jobs_as_server)}/{host.max_jobs}"
        lines.append(
            f"{host.id:>4}  {printable(host.name)[:16]:<16} {printable(host.ip)[:15]:<15} "
            f"{'online' if host.online else 'offline':<7} {jobs:>7} {host.load:>5} {host.speed:>8.1f}  "
            f"{c.compiled:>8} {c.submitted:>9} {c.local:>6} {c.failed:>6}"
        )
    running = [j for j in monitor.jobs.values() if j.state is not JobState.WAITING]
    waiting = len(monitor.jobs) - len(running)
    lines.append("")
    lines.append(f"running jobs: {len(running)}, waiting: {waiting}")
    names = {h.id: printable(h.name) or f"#{h.id}" for h in monitor.hosts.values()}
    for job in sorted(running, key=lambda j: j.id)[:20]:
        since = monitor.now - (job.started or monitor.now)
        kind = "local" if job.local else f"{names.get(job.client_id, '?')} -> {names.get(job.server_id, '?')}"
        lines.append(f"  {job.id:>6}  {kind:<24} {since:6.1f} s  {printable(job.file)}")
    if len(running) > 20:
        lines.append(f"  ... and {len(running) - 20} more")
    t = monitor.totals
    lines.append("")
    lines.append(
        f"totals: {t.remote_done} remote jobs done ({t.remote_failed} failed, {t.lost} lost with "
        f"their host), {t.local_done} local jobs, {t.reruns} failed jobs re-run locally"
    )
    lines.append(
        f"        {_mib(t.in_bytes)} in, {_mib(t.out_bytes)} out, {t.frames} frames"
        + (f", {t.resets} reconnects (state restarted)" if t.resets else "")
    )
    return "\n".join(lines)
