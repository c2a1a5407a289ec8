"""Rotating recordings: a series of capture files instead of one that grows for ever.

:class:`RotatingWriter` has the methods of :class:`~icetools.capture.CaptureWriter` that a
recorder uses (``connected``, ``frames``, ``disconnected``, ``close``, ``frames_written``,
``bytes_written``, ``path``), so ``record`` and ``serve --record`` take either. Between two
batches of frames, once the current file is old or large enough, it ends that file with an end
record ``reason: "rotated"`` and begins the next part of the series (format 2, see
docs/capture-format.md): same ``series``, ``part`` + 1, ``start`` = the previous start plus the
monotonic time elapsed, a connect record with ``rotated: true`` and the *carried frames*, the
state the scheduler had given so far, which :class:`CarriedState` keeps by decoding each frame
just enough. A frame is never split, lost or written twice: rotation happens only between the
batches handed to :meth:`RotatingWriter.frames`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import messages as m
from .capture import FILE_SUFFIX, CaptureWriter
from .errors import CaptureError
from .messages import MalformedFrame
from .monitor import MAX_ACTIVE_JOBS

#: The file name a directory output gets for each part (strftime, local time, as ``record``'s
#: default name).
DEFAULT_PATTERN = "icecream-%Y%m%d-%H%M%S" + FILE_SUFFIX

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_ROTATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    """When to begin the next file: after ``seconds`` of recording, or once the file has
    ``size`` bytes (exactly one of them is set)."""

    seconds: float | None = None
    size: int | None = None

    def __str__(self) -> str:
        return f"every {self.seconds:g} s" if self.seconds is not None else f"at {self.size} bytes"


def parse_rotation(text: str) -> Rotation:
    """``30m``, ``1h``, ``1d``, ``90s`` (a duration) or ``64KB``, ``100MB``, ``1GB`` (a size:
    KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024). Raises ValueError with the reason."""
    match = _ROTATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is neither a duration (30m, 1h, 1d, 90s) nor a size (64KB, 100MB, 1GiB)")
    number, unit = float(match.group(1)), match.group(2)
    if unit in _DURATION_UNITS:
        seconds = number * _DURATION_UNITS[unit]
        if seconds < 1:
            raise ValueError(f"{text!r}: a rotation needs a duration of a second at least")
        return Rotation(seconds=seconds)
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"{text!r}: unknown unit {unit!r} (durations: s, m, h, d; sizes: KB, MB, GB, KiB, MiB, GiB)"
        )
    size = int(number * factor)
    if size < 1000:
        raise ValueError(f"{text!r}: a rotation needs a size of 1KB at least")
    return Rotation(size=size)


# ------------------------------------------------------------------------------------------
# What a new part carries


class CarriedState:
    """The state the scheduler has given so far, as the frames that gave it: for each online
    host its latest MON_STATS; for each job not yet done its MON_GET_CS and MON_JOB_BEGIN; for
    each running local job its MON_LOCAL_JOB_BEGIN. It reads the messages as the Monitor does
    (monitor.py): ``State:Offline`` takes a host away with its local jobs, MON_JOB_DONE ends a
    remote job, JOB_LOCAL_DONE a local one. A (re)connection or a disconnect forgets everything
    (a scheduler that comes back numbers hosts and jobs from 1 again).

    Frames are kept with the time they were received (any clock the caller likes) and an order
    number, so :meth:`frames` gives them in the order they were received."""

    def __init__(self) -> None:
        self.protocol = m.PROTOCOL_VERSION
        self._seq = 0
        #: host id -> (order, time, MON_STATS frame)
        self.hosts: dict[int, tuple[int, float, bytes]] = {}
        #: job id -> its MON_GET_CS and MON_JOB_BEGIN, as (order, time, frame)
        self.jobs: dict[int, list[tuple[int, float, bytes]]] = {}
        #: local job id -> (host id, (order, time, MON_LOCAL_JOB_BEGIN frame))
        self.local: dict[int, tuple[int, tuple[int, float, bytes]]] = {}
        self._decoders: dict[int, tuple[Callable[..., Any] | None, Callable[..., None] | None]] = {}

    def connected(self, protocol: int) -> None:
        self.reset()
        self.protocol = protocol
        self._decoders.clear()

    def reset(self) -> None:
        self.hosts.clear()
        self.jobs.clear()
        self.local.clear()

    def feed(self, frames: list[bytes], t: float) -> None:
        """Take a batch of frames received at ``t``."""
        decoders = self._decoders
        for frame in frames:
            if len(frame) < 8:
                continue
            type_word = int.from_bytes(frame[4:8], "big")
            entry = decoders.get(type_word)
            if entry is None:
                entry = decoders[type_word] = self._entry(type_word)
            decoder, handle = entry
            if handle is None:
                continue  # a message that does not change what is carried
            try:
                fields = decoder(frame, 0, len(frame))  # type: ignore[misc]
            except MalformedFrame:
                continue
            if fields is None or fields.__class__ is int:
                continue  # undecodable (or trailing bytes): the Monitor skips it too
            self._seq += 1
            handle(fields, (self._seq, t, frame))

    def _entry(self, type_word: int) -> tuple[Callable[..., Any] | None, Callable[..., None] | None]:
        cls = m.message_class(type_word)
        handle = {
            m.MonStats: self._stats,
            m.MonGetCS: self._get_cs,
            m.MonJobBegin: self._job_begin,
            m.MonJobDone: self._job_done,
            m.MonLocalJobBegin: self._local_begin,
            m.JobLocalDone: self._local_done,
        }.get(cls.__mro__[1] if cls in (m.MonGetCSHead, m.MonJobDoneHead) else cls)  # type: ignore[union-attr]
        if handle is None:
            return None, None
        return m.frame_decoder(type_word, self.protocol, fields_only=True), handle

    def _stats(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        host_id, statmsg = fields
        if statmsg.startswith("State:Offline"):
            self.hosts.pop(host_id, None)
            # The Monitor ends the host's local jobs with it (no JOB_LOCAL_DONE follows).
            for job_id in [j for j, (h, _) in self.local.items() if h == host_id]:
                del self.local[job_id]
        else:
            self.hosts[host_id] = item

    def _get_cs(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        job_id = fields[-2]
        self.jobs.pop(job_id, None)  # a job id used again: the new job replaces the old one
        self.jobs[job_id] = [item]
        if len(self.jobs) > MAX_ACTIVE_JOBS:  # as the Monitor: jobs never ended are dropped
            del self.jobs[next(iter(self.jobs))]

    def _job_begin(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        job = self.jobs.get(fields[0])
        if job is None:
            # Submitted before the recording connected: its begin is all there is to carry.
            self.jobs[fields[0]] = [item]
            if len(self.jobs) > MAX_ACTIVE_JOBS:
                del self.jobs[next(iter(self.jobs))]
        else:
            job.append(item)

    def _job_done(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        self.jobs.pop(fields[0], None)

    def _local_begin(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        self.local[fields[1]] = (fields[0], item)
        if len(self.local) > MAX_ACTIVE_JOBS:
            del self.local[next(iter(self.local))]

    def _local_done(self, fields: tuple[Any, ...], item: tuple[int, float, bytes]) -> None:
        self.local.pop(fields[0], None)

    def frames(self) -> list[tuple[float, bytes]]:
        """What a new part carries: (time received, frame), in the order they were received."""
        items = list(self.hosts.values())
        for job in self.jobs.values():
            items += job
        items += [item for _, item in self.local.values()]
        items.sort()
        return [(t, frame) for _, t, frame in items]


# ------------------------------------------------------------------------------------------
# Naming the parts


def output_pattern(output: str | None) -> str:
    """Where the parts of a rotating recording go, as a strftime pattern: in a directory (one
    that exists, or a path ending in '/'), ``DEFAULT_PATTERN`` in it; a pattern as it is; no
    output, ``DEFAULT_PATTERN`` in the current directory."""
    if output is None:
        return DEFAULT_PATTERN
    text = output  # a string, not a Path: Path("dir/") would forget the '/'
    if text.endswith(os.sep) or os.path.isdir(text):
        return os.path.join(text, DEFAULT_PATTERN)
    return text


def is_pattern(output: str) -> bool:
    """Whether an output names files by strftime (``%`` directives)."""
    return "%" in output


def expand(pattern: str, when: float, taken: Callable[[Path], bool]) -> Path:
    """The name of the part begun at ``when``: ``pattern`` by strftime (local time); a name that
    is ``taken`` gets ``-1``, ``-2``, ... before its suffix."""
    try:
        name = time.strftime(pattern, time.localtime(when))
    except ValueError as e:
        raise CaptureError(f"cannot name a file by {pattern!r}: {e}") from None
    path = Path(name)
    if not taken(path):
        return path
    suffix = FILE_SUFFIX if path.name.endswith(FILE_SUFFIX) else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    n = 1
    while True:
        candidate = path.with_name(f"{stem}-{n}{suffix}")
        if not taken(candidate):
            return candidate
        n += 1


# ------------------------------------------------------------------------------------------
# The rotating sink


class RotatingWriter:
    """A capture that goes on in a new file of its series whenever ``rotation`` says so.

    ``pattern`` names each part (see :func:`expand`); ``keep`` (None: all) is how many files of
    this series stay on disk: after each successful rotation the oldest beyond it are deleted.
    Files of other series (an earlier ``record`` run) are never touched.

    It stamps every record itself, from ``clock`` (the ``t`` arguments of the CaptureWriter
    methods, for tools that rewrite recordings, are not taken). A failure to write (a full
    disk) raises :class:`CaptureError` as CaptureWriter does, with every earlier part whole: a new part that could not be written completely is removed, and
    the part before it keeps its end record (or, if even that did not fit, ends at a whole
    record as any capture whose recorder stopped).
    """

    def __init__(
        self,
        pattern: str,
        rotation: Rotation,
        *,
        keep: int | None = None,
        netname: str | None = None,
        series: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError("keep must be at least 1")
        self.pattern = pattern
        self.rotation = rotation
        self.keep = keep
        self.netname = netname
        self._clock = clock
        self._wall = wall
        self.state = CarriedState()
        #: The earlier parts of this series still on disk, oldest first (not the current one).
        self.paths: list[Path] = []
        self._frames_before = 0  # frames written to earlier parts
        self._bytes_before = 0
        self._connected = False  # a connection is up (what a new part would continue)
        self._connection: tuple[int, int, int, str] | None = None
        now = clock()
        self.writer: CaptureWriter | _Stopped = self._open(series=series, part=0, origin=(wall(), now))
        self._t0 = now
        #: Parts begun (the current part's number is ``parts - 1``).
        self.parts = 1
        self.series = self.writer.series

    # -- the CaptureWriter interface ---------------------------------------------------------

    @property
    def path(self) -> Path:
        """The current file."""
        return self.writer.path

    @property
    def frames_written(self) -> int:
        """Frame records written, in all parts (carried frames not counted)."""
        return self._frames_before + self.writer.frames_written

    @property
    def bytes_written(self) -> int:
        """Bytes written, in all parts."""
        return self._bytes_before + self.writer.bytes_written

    @property
    def header(self) -> Any:
        return self.writer.header

    def connected(
        self, protocol: int, peer_version: int, offered: int, scheduler: str, t: float | None = None
    ) -> None:
        """A (re)connection: a new handshake, so nothing is carried (the scheduler starts over).
        A rotation that fell due while disconnected begins the new part here."""
        if self._due():
            self._rotate(None)
        self.writer.connected(protocol, peer_version, offered, scheduler, self._t())
        self.state.connected(protocol)
        self._connected = True
        self._connection = (protocol, peer_version, offered, scheduler)

    def frames(self, frames: list[bytes], t: float | None = None) -> None:
        """Write a batch of frames, first beginning a new part if one is due."""
        if not frames:
            return
        if self._connected and self._due():
            self._rotate(self._connection)
        now = self._t()
        self.writer.frames(frames, now)
        self.state.feed(frames, self._mono(now))

    def disconnected(self, reason: str, t: float | None = None) -> None:
        self.writer.disconnected(reason, self._t())
        self.state.reset()
        self._connected = False

    def close(self, reason: str, t: float | None = None, *, end_record: bool = True) -> None:
        self.writer.close(reason, self._t(), end_record=end_record)

    def __enter__(self) -> RotatingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("closed")

    # -- rotation ----------------------------------------------------------------------------

    def _t(self) -> float:
        """Now, in seconds since the current part's start (its records' clock)."""
        return self._clock() - self._t0

    def _mono(self, t: float) -> float:
        """A time of the current part on the monotonic clock (what the carried state keeps)."""
        return t + self._t0

    def _due(self) -> bool:
        writer = self.writer
        if writer.header is None:
            return False  # nothing recorded in this part yet: it simply goes on
        if self.rotation.seconds is not None:
            return self._t() >= self.rotation.seconds
        assert self.rotation.size is not None
        return writer.bytes_written >= self.rotation.size

    def _open(self, *, series: str | None, part: int, origin: tuple[float, float]) -> CaptureWriter:
        """Create the file of part ``part`` (its header comes with its first connect record)."""
        planned = set(self.paths)
        if part:
            planned.add(self.writer.path)
        path = expand(self.pattern, origin[0], lambda p: p in planned or os.path.lexists(p))
        if not path.parent.is_dir():
            with contextlib.suppress(OSError):  # if it cannot be made, creating the file says why
                path.parent.mkdir(parents=True, exist_ok=True)
        return CaptureWriter(path, series=series, part=part, netname=self.netname, origin=origin)

    def _rotate(self, connection: tuple[int, int, int, str] | None) -> None:
        """End the current part and begin the next; with ``connection`` (the connection goes
        on) the new part begins with a rotated connect record and the carried frames.

        The new part is written first and the old one ended after it, so that a failure (a
        full disk) leaves things as they were: a new part that could not be written whole is
        removed and the old one stays the current part (its recorder ends it); an old part
        whose end record did not fit ends at a whole record, and its successor is removed."""
        old = self.writer
        now = self._clock()
        elapsed = now - self._t0
        start = old.start + elapsed  # the previous start + the monotonic time elapsed
        new = self._open(series=old.series, part=self.parts, origin=(start, now))
        try:
            if connection is not None:
                new.connected(*connection, 0.0, rotated=True)
                new.carried([(t - now, frame) for t, frame in self.state.frames()])
        except CaptureError as e:
            self._discard(new)
            raise CaptureError(
                f"cannot write the next file of the recording, {new.path}: "
                f"{getattr(e, 'strerror', None) or e} (the {self.frames_written} frames recorded "
                f"before are kept, the last of them in {old.path})"
            ) from None
        except BaseException:
            self._discard(new)
            raise
        try:
            old.close("rotated", elapsed)
        except BaseException:
            self._discard(new)
            self.writer = _Stopped(old)
            raise
        self._frames_before += old.frames_written
        self._bytes_before += old.bytes_written
        self.paths.append(old.path)
        self.parts += 1
        self.writer = new
        self._t0 = now
        self._prune()

    @staticmethod
    def _discard(writer: CaptureWriter) -> None:
        """Remove a part that could not be begun whole."""
        with contextlib.suppress(OSError, CaptureError):
            writer.close("error", end_record=False)
        with contextlib.suppress(OSError):
            writer.path.unlink()

    def _prune(self) -> None:
        """Delete the oldest files of this series beyond ``keep`` (the current one counts)."""
        if self.keep is None:
            return
        while self.paths and len(self.paths) + 1 > self.keep:
            oldest = self.paths.pop(0)
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()


class _Stopped:
    """What a RotatingWriter writes to after a rotation failed: nothing (the error was raised
    once; the recorder stops), but it still answers like the writer it was."""

    def __init__(self, last: CaptureWriter) -> None:
        self.path = last.path
        self.series = last.series
        self.frames_written = 0
        self.bytes_written = 0
        self.header = last.header
        self.start = last.start

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: object, **kwargs: object) -> None:
            if name == "close":
                return None
            raise CaptureError(f"the recording stopped at {self.path} (a rotation failed)")

        return refuse
