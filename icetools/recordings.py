"""Many capture files read as one recording (issue 12: rotating recordings, restarts of record).

:func:`open_recording` takes the paths a user gave (files, directories, whose ``*.icecap`` are
taken, and globs the shell left alone), opens every file, orders them by their header's
``start`` (then ``part``), refuses files of different schedulers, and returns a
:class:`Recording`: an object the reading commands use where they used a
:class:`~icetools.capture.CaptureReader`, with the same ``header``, ``pump()``, iteration,
``frames`` and ``warning()``.

Times are seconds since the FIRST file's start: each file is read with its
``CaptureReader.time_offset_us`` set to its start minus the first file's (whole µs), so the fast
path (``pump``) adds the offset where it computes a time, with no wrapper per frame.

Between two files there is either a continuation (the next part of a rotating series: same
``series``, the next ``part``, and a first connect record marked ``rotated``; its first connect
record and its carried frames were live in the previous file and are skipped) or a gap: a
:class:`GapRecord` from the last record of one file to the start of the next goes to
``on_event`` (and is yielded by iteration), then the next file is read as it is (its connect
record starts the model over, its carried frames give the state it began with). See
docs/capture-format.md ("Many files").

A single file is read exactly as a lone CaptureReader reads it.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .capture import (
    FILE_SUFFIX,
    CaptureHeader,
    CaptureReader,
    CarriedRecord,
    ConnectRecord,
    FrameRecord,
    PumpResult,
    Record,
)
from .errors import CaptureError, OptionError
from .messages import Message

#: A file may start this much before the previous one's last record and still follow it: the
#: start is the recorder's wall clock, record times its monotonic clock, and clocks get adjusted.
OVERLAP_TOLERANCE = 1.0
_GLOB_CHARS = re.compile(r"[*?[]")


class GapRecord(NamedTuple):
    """No recording from ``t`` (the last record of one file) to ``until`` (the start of the
    next, which does not continue it), both in seconds since the recording started."""

    t: float
    until: float


class RecordingError(CaptureError):
    """The files given cannot be read as one recording."""


@dataclasses.dataclass(slots=True)
class RecordingFile:
    """One file of a recording, in reading order."""

    path: Path
    header: CaptureHeader
    #: Seconds from the first file's start to this file's start (what its times are shifted by).
    offset: float
    #: The next part of the previous file's rotating series (no gap between them).
    continues_previous: bool = False
    #: Its reader (open until the recording is closed).
    reader: CaptureReader = dataclasses.field(repr=False, default=None)  # type: ignore[assignment]


# ---- paths ----------------------------------------------------------------------------------


def expand_paths(args: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files named by ``args``: a directory stands for its ``*.icecap`` (not recursive), a
    pattern with ``*``, ``?`` or ``[`` that is not itself a file for the files it matches
    (as the shell would have expanded it). Duplicates are dropped later, by identity."""
    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        text = os.fspath(arg)
        if path.is_dir():
            found = sorted(p for p in path.glob("*" + FILE_SUFFIX) if p.is_file())
            if not found:
                raise RecordingError(f"{path} is a directory, not a capture file, and holds no *{FILE_SUFFIX} files")
            out.extend(found)
        elif not os.path.lexists(text) and _GLOB_CHARS.search(text):
            found = sorted(Path(p) for p in glob.glob(text) if not os.path.isdir(p))
            if not found:
                raise RecordingError(f"no file matches {text}")
            out.extend(found)
        else:
            out.append(path)  # checked (and opened) by CaptureReader, which names it in errors
    return out


def header_value(header: CaptureHeader, key: str) -> Any:
    """A format 2 header key (``series``, ``part``, ``netname``): an attribute of the header
    where the reader has one, else from its ``extra`` keys; None when the file has none."""
    value = getattr(header, key, None)
    return value if value is not None else header.extra.get(key)


def _scheduler_of(header: CaptureHeader) -> str:
    netname = header_value(header, "netname")
    return header.scheduler + (f", netname {netname}" if isinstance(netname, str) else "")


def _same_scheduler(a: CaptureHeader, b: CaptureHeader) -> bool:
    series = header_value(a, "series")
    if series is not None and series == header_value(b, "series"):
        return True  # one recording session (a recorder that found its scheduler elsewhere)
    if a.scheduler != b.scheduler:
        return False
    na, nb = header_value(a, "netname"), header_value(b, "netname")
    return not (isinstance(na, str) and isinstance(nb, str) and na != nb)


def _part(header: CaptureHeader) -> int:
    part = header_value(header, "part")
    return part if type(part) is int else 0


def open_recording(
    paths: Sequence[str | os.PathLike[str]], *, salvage: bool = False
) -> Recording:
    """Open the files ``paths`` name as one recording (see the module's docstring)."""
    files: list[RecordingFile] = []
    seen: set[tuple[int, int]] = set()
    try:
        for path in expand_paths(paths):
            reader = CaptureReader(path, salvage=salvage)
            st = os.fstat(reader._file.fileno())
            if (st.st_dev, st.st_ino) in seen:  # the same file named twice counts once
                reader.close()
                continue
            seen.add((st.st_dev, st.st_ino))
            files.append(RecordingFile(path, reader.header, 0.0, reader=reader))
        if not files:
            raise RecordingError("no capture files given")
        files.sort(key=lambda f: (f.header.start, _part(f.header), str(f.path)))
        first = files[0]
        others = [f for f in files if not _same_scheduler(f.header, first.header)]
        if others:
            other = others[0]
            raise RecordingError(
                "will not read as one recording files from different schedulers: "
                f"{first.path} ({_scheduler_of(first.header)}), {other.path} ({_scheduler_of(other.header)})"
            )
        for previous, f in zip(files, files[1:]):
            # In whole microseconds (the records' resolution): every time is then the float a
            # single file would give for it, not a sum with rounding errors in its last digits.
            offset_us = round((f.header.start - first.header.start) * 1_000_000)
            f.offset = offset_us / 1_000_000
            f.reader.time_offset_us = offset_us
            f.continues_previous = _continues(previous, f)
            # After a gap, the carried frames (the state the file began with) come after the
            # gap and the file's connect record, never before them.
            f.reader.clamp_carried = not f.continues_previous
    except BaseException:
        for f in files:
            f.reader.close()
        raise
    return Recording(files)


def _continues(previous: RecordingFile, f: RecordingFile) -> bool:
    """Whether ``f`` is the next part of ``previous``'s rotating series: the same ``series``,
    the next ``part``, and its first record a connect record marked ``rotated`` (no new
    handshake happened between them)."""
    series = header_value(f.header, "series")
    part = header_value(f.header, "part")
    before = header_value(previous.header, "part")
    if not (
        isinstance(series, str)
        and series == header_value(previous.header, "series")
        and type(part) is int
        and type(before) is int
        and part == before + 1
    ):
        return False
    reader = f.reader
    try:
        first = next(iter(reader), None)  # only the first record (its block) is read
    except CaptureError:
        first = None  # damage right at the start: read it as a file of its own, which says so
    reader.rewind()
    return type(first) is ConnectRecord and getattr(first, "rotated", False) is True


# ---- the recording --------------------------------------------------------------------------


class Recording:
    """Several capture files (or one) read as one recording: the reader-like object the reading
    commands use. ``files`` lists them in reading order (path, header, offset,
    continues_previous); ``header`` is the first file's; ``gaps`` collects the gaps handed out
    so far."""

    def __init__(self, files: list[RecordingFile]) -> None:
        self.files = files
        self.header = files[0].header
        self.salvage = files[0].reader.salvage
        self.gaps: list[GapRecord] = []
        self._index = 0  # the file being read
        #: Whether a file's beginning (the gap before it, or its skipped connect record) was
        #: handed out; the first file has none.
        self._entered = [i == 0 for i in range(len(files))]
        self._last_t: float | None = None  # the time of the last record handed out
        self.total_size = 0
        for f in files:
            try:
                self.total_size += os.fstat(f.reader._file.fileno()).st_size
            except OSError:
                pass

    # -- what readers have ----------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The first file (a title, a name for messages)."""
        return self.files[0].path

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    @property
    def reader(self) -> CaptureReader:
        """The reader of the file being read."""
        return self.files[self._index].reader

    @property
    def protocol(self) -> int:
        return self.reader.protocol

    @property
    def frames(self) -> int:
        """Frame records read, all files together."""
        return sum(f.reader.frames for f in self.files)

    @property
    def position(self) -> int:
        """Bytes read, all files together (for progress bars: see ``total_size``)."""
        done = 0
        for f in self.files[: self._index]:
            done += f.reader.size or f.reader.position
        return done + self.reader.position

    def name(self) -> str:
        """The files for a title: ``a.icecap`` or ``a.icecap ... c.icecap (3 files)``."""
        if len(self.files) == 1:
            return self.files[0].path.name
        return f"{self.files[0].path.name} ... {self.files[-1].path.name} ({len(self.files)} files)"

    def warning(self) -> str | None:
        """Every file's warning (torn tails, damage skipped), in one line, or None."""
        parts = [w for f in self.files if (w := f.reader.warning()) is not None]
        return "; ".join(parts) or None

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self.files:
            f.reader.close()

    def rewind(self) -> None:
        """Start the next pump or iteration at the first record of the first file again."""
        for f in self.files:
            f.reader.rewind()
        self._index = 0
        self._entered = [i == 0 for i in range(len(self.files))]
        self._last_t = None
        self.gaps.clear()

    def start_at_file(self, index: int, last_t: float | None = None) -> None:
        """Go on from where file ``index``'s reader stands (after a seek in it, the last record
        applied at ``last_t``), as if everything before had been read."""
        self._index = index
        self._entered = [i <= index for i in range(len(self.files))]
        self._last_t = last_t

    def file_at(self, t: float) -> int:
        """The index of the file that holds the moment ``t``: the last one that starts at or
        before it (every file stands on its own, so the state at ``t`` is that file's)."""
        index = 0
        for i, f in enumerate(self.files):
            if f.offset <= t:
                index = i
        return index

    # -- reading -------------------------------------------------------------------------

    def _enter(self, on_event: Callable[[Record], object] | None) -> GapRecord | None:
        """Begin the file ``self._index`` (not the first): the gap before it, or with a
        continuation its first connect record skipped. Returns the gap (already handed to
        ``on_event`` if given)."""
        index = self._index
        self._entered[index] = True
        f = self.files[index]
        previous = self.files[index - 1]
        end = self._last_t if self._last_t is not None else previous.offset
        if end - f.offset > OVERLAP_TOLERANCE:
            raise RecordingError(
                f"{previous.path} and {f.path} overlap ({f.path.name} starts {end - f.offset:.1f} s "
                f"before the last record of {previous.path.name}): two recordings of the same time "
                "cannot be read as one"
            )
        if f.continues_previous:
            reader = f.reader
            records = iter(reader)
            next(records, None)  # the connect record: the connection was live in the previous file
            reader.seek(reader.position, reader.protocol, reader.frames)
            return None
        gap = GapRecord(end, max(end, f.offset))
        self.gaps.append(gap)
        if on_event is not None:
            on_event(gap)  # type: ignore[arg-type]
        return gap

    def pump(
        self,
        handlers: Mapping[type[Message], Callable[[Any, float], object]],
        on_event: Callable[[Record], object],
        *,
        until: float | None = None,
        max_frames: int | None = None,
        fields: bool = False,
        on_undecodable: Callable[[FrameRecord], object] | None = None,
        carried: bool = True,
        on_carried: Callable[[CarriedRecord], object] | None = None,
        on_settled: Callable[[float], object] | None = None,
    ) -> PumpResult:
        """:meth:`CaptureReader.pump` over the files in order: the same arguments, results and
        state left behind; a :class:`GapRecord` goes to ``on_event`` between files that do
        not continue each other, and the carried frames of a file that continues the one
        before are skipped (they were live there: no ``on_settled`` for them). ``stopped`` is "end" only at the end of the
        last file."""
        if len(self.files) == 1:
            return self.files[0].reader.pump(
                handlers, on_event, until=until, max_frames=max_frames, fields=fields,
                on_undecodable=on_undecodable, carried=carried, on_carried=on_carried, on_settled=on_settled,
            )
        frames = undecodable = 0
        last_t: float | None = None
        while True:
            if not self._entered[self._index]:
                if until is not None and self.files[self._index].offset > until:
                    # The next file begins after ``until``: stop before its gap.
                    return PumpResult(frames, undecodable, last_t, "until")
                gap = self._enter(on_event)
                if gap is not None:
                    last_t = self._last_t = gap.t
            left = None if max_frames is None else max_frames - frames
            going_on = self.files[self._index].continues_previous
            result = self.reader.pump(
                handlers, on_event, until=until, max_frames=left, fields=fields, on_undecodable=on_undecodable,
                carried=carried and not going_on, on_carried=None if going_on else on_carried,
                on_settled=on_settled,
            )
            frames += result.frames
            undecodable += result.undecodable
            if result.last_t is not None:
                last_t = self._last_t = result.last_t
            if result.stopped != "end" or self._index == len(self.files) - 1:
                return PumpResult(frames, undecodable, last_t, result.stopped)
            self._index += 1

    def __iter__(self) -> Iterator[Record]:
        """Every record of every file in order, times since the recording started, with a
        :class:`GapRecord` between files that do not continue each other."""
        if len(self.files) == 1:
            yield from self.files[0].reader
            return
        while True:
            if not self._entered[self._index]:
                gap = self._enter(None)
                if gap is not None:
                    self._last_t = gap.t
                    yield gap  # type: ignore[misc]
            going_on = self.files[self._index].continues_previous
            for record in self.reader:
                if going_on and type(record) is CarriedRecord:
                    continue  # live in the file before
                self._last_t = record.t
                yield record
            if self._index == len(self.files) - 1:
                return
            self._index += 1


# ---- moments: seconds or wall-clock times ---------------------------------------------------

def parse_time(text: str) -> float | datetime.datetime:
    """``text`` as a number of seconds (finite, not negative) or a wall-clock time (ISO 8601:
    ``2026-12-01 09:00``, ``2026-12-01T09:00:00+01:00``, ``...Z``; local time unless it has an
    offset). Raises ValueError with the reason."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a finite number.")
        if seconds < 0:
            raise ValueError(f"{text!r} is before the recording started (times are seconds from its start).")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither seconds nor a date and time (e.g. 2026-12-01 09:00, "
            "2026-12-01T09:00:00+01:00)."
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()  # local, as people read clocks


def to_seconds(moment: float | datetime.datetime, start: float, option: str) -> float:
    """A moment from :func:`parse_time` as seconds since the recording started at ``start``
    (Unix time). A wall-clock time before the start is an error; one after the end is
    allowed (nothing is that late: empty output, or the state at the end)."""
    if not isinstance(moment, datetime.datetime):
        return moment
    # Whole microseconds, the records' resolution (the difference of two Unix times as floats
    # is off in its last digits).
    seconds = round(moment.timestamp() - start, 6)
    if seconds < 0:
        raise OptionError(
            f"{option} {moment.isoformat(sep=' ')} is before the recording started "
            f"({format_wall(start, date=True)})"
        )
    return seconds


def format_wall(epoch: float, *, date: bool = False) -> str:
    """A Unix time as local wall-clock time, ``HH:MM:SS`` or with ``date`` ``YYYY-mm-dd HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(epoch))


def format_duration(seconds: float) -> str:
    """``3h 12m``, ``2d 4h``, ``5m 3s``, ``12.5s``: a gap's length for people."""
    s = int(round(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def gap_text(gap: GapRecord, start: float) -> str:
    """The line dump prints for a gap: ``--- no recording for 3h 12m (09:00:00 to 12:12:00) ---``
    (with dates when it spans midnight)."""
    a, b = start + gap.t, start + gap.until
    date = time.localtime(a)[:3] != time.localtime(b)[:3]
    return (
        f"--- no recording for {format_duration(gap.until - gap.t)} "
        f"({format_wall(a, date=date)} to {format_wall(b, date=date)}) ---"
    )


__all__ = [
    "GapRecord",
    "Recording",
    "RecordingError",
    "RecordingFile",
    "expand_paths",
    "format_duration",
    "gap_text",
    "open_recording",
    "parse_time",
    "to_seconds",
]
