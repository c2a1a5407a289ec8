"""A seek index for captures: the cluster state at any moment without replaying from the start.

The first full replay of a capture takes a checkpoint every :data:`CHECKPOINT_EVERY` frames: the
Monitor's whole state (pickled, compressed), the file offset of the next record, the protocol in
force and the frame count. Later, the state at time T is the last checkpoint before T plus at
most that many frames replayed: a few tens of milliseconds for any point of a day-long capture.

The index lives in icetools' cache folder (``$XDG_CACHE_HOME/icetools``, else
``~/.cache/icetools``), never beside the capture: it holds pickles, and icetools only unpickles
what it wrote itself. Its name is a hash of the capture's real path, size and modification time,
so a capture that changes (a recording still growing, say) simply gets a new index. See
docs/capture-format.md.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .capture import CaptureReader, Record
from .monitor import Monitor
from .recordings import Recording
from .replay import replay_fast

#: Frames between checkpoints: at most this many frames are replayed to reach any moment.
CHECKPOINT_EVERY = 32768
#: Changes whenever the pickled Monitor state does (2: lazy host reports, plain jobs, stats
#: aggregates), so that an index written by an older icetools is rebuilt, never misread.
INDEX_MAGIC = b"ICETIDX2"


class Checkpoint(NamedTuple):
    t: float  # time of the last record applied
    offset: int  # file offset of the next record
    protocol: int  # protocol in force for the records that follow
    frames: int  # frame records read before ``offset``
    state: bytes  # zlib(pickle(Monitor.export_state()))


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "icetools"


def index_path(capture: Path, offset: int = 0) -> Path:
    """Where the index of ``capture`` read with its times shifted by ``offset`` µs (as a
    later file of a recording, see :mod:`icetools.recordings`) lives."""
    stat = capture.stat()
    key = f"{os.path.realpath(capture)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{__version__}"
    if offset:  # the checkpoints hold times: one index per offset (none for a file read alone)
        key += f"\0{offset}"
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".idx")


def load(capture: Path, offset: int = 0) -> list[Checkpoint] | None:
    """The checkpoints of ``capture``'s index, or None when there is none (or it is unusable)."""
    path = index_path(capture, offset)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO there would block the read
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(INDEX_MAGIC):
        return None
    try:
        return [Checkpoint(*c) for c in pickle.loads(zlib.decompress(data[len(INDEX_MAGIC) :]))]
    except Exception:  # noqa: BLE001 - a damaged cache entry (of any shape) is simply rebuilt
        return None


def _save(capture: Path, checkpoints: list[Checkpoint], offset: int = 0) -> None:
    """Write the index atomically (a reader never sees half of one); failing is harmless."""
    path = index_path(capture, offset)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = INDEX_MAGIC + zlib.compress(pickle.dumps([tuple(c) for c in checkpoints], 5), 1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".idx-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        pass


def _checkpoint(monitor: Monitor, reader: CaptureReader) -> Checkpoint:
    state = zlib.compress(pickle.dumps(monitor.export_state(), 5), 1)
    return Checkpoint(monitor.now, reader.position, reader.protocol, reader.frames, state)


def build(capture: Path, every: int = CHECKPOINT_EVERY, offset: int = 0) -> list[Checkpoint]:
    """Replay the whole capture once (its times shifted by ``offset`` µs), taking a
    checkpoint every ``every`` frames, and store the index."""
    monitor = Monitor()
    checkpoints: list[Checkpoint] = []
    with CaptureReader(capture) as reader:
        reader.time_offset_us = offset
        replay_fast(
            monitor, reader, every=every, between=lambda: checkpoints.append(_checkpoint(monitor, reader))
        )
    _save(capture, checkpoints, offset)
    return checkpoints


def state_at(capture: Path, t: float | None, *, build_missing: bool = True) -> Monitor:
    """The Monitor as it stood at ``t`` seconds into ``capture`` (its end if ``t`` is None)."""
    with CaptureReader(capture) as reader:  # first: a missing or bad file is the error to show
        monitor, _ = open_at(reader, t, build_missing=build_missing)
    return monitor


def open_at(
    reader: CaptureReader, t: float | None, *, build_missing: bool = True
) -> tuple[Monitor, Iterator[Record]]:
    """The Monitor at ``t`` and an iterator over the records after ``t`` (to play on from).
    A salvaging reader replays from the start: an index is only built from a capture that
    reads without damage, and the reader must meet (and count) the damage itself."""
    capture = reader.path
    offset = reader.time_offset_us
    monitor = Monitor()
    checkpoints = None if reader.salvage else load(capture, offset)
    if checkpoints is None and build_missing and not reader.salvage:
        checkpoints = build(capture, offset=offset)
    usable = [c for c in checkpoints or () if t is None or c.t <= t]
    if usable:
        last = usable[-1]
        monitor.import_state(pickle.loads(zlib.decompress(last.state)))
        reader.seek(last.offset, last.protocol, last.frames)
    else:
        reader.rewind()
    replay_fast(monitor, reader, until=t)
    return monitor, iter(reader)  # from the first record after ``t``


def recording_at(
    recording: Recording, t: float | None, *, build_missing: bool = True
) -> tuple[Monitor, Iterator[Record]]:
    """:func:`open_at` for a recording of several files: the state at ``t`` is the state of
    the file that holds ``t`` (the last one starting at or before it; every file stands on its
    own), from that file's index; the iterator goes on from there through the later files
    (gaps included). One file is exactly :func:`open_at`."""
    files = recording.files
    if len(files) == 1:
        return open_at(files[0].reader, t, build_missing=build_missing)
    index = len(files) - 1 if t is None else recording.file_at(t)
    recording.rewind()
    monitor, _ = open_at(files[index].reader, t, build_missing=build_missing)
    recording.start_at_file(index, monitor.now)
    return monitor, iter(recording)


__all__ = ["CHECKPOINT_EVERY", "Checkpoint", "build", "cache_dir", "index_path", "load", "open_at", "recording_at", "state_at"]
