"""Capture files: the writer `icetools record` uses and the reader everything else uses.

The format is specified in docs/capture-format.md. In short: a magic, a format version and a
JSON header, then records of ``kind u8 | body length u32 | time u64 (µs) | body``. The writer
appends each batch of records with one ``write(2)`` on an unbuffered descriptor, so a killed
recorder loses nothing that was complete; the reader keeps everything before a torn tail and
reports what it ignored.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import os
import re
import secrets
import stat
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, NoReturn

from . import __version__
from .errors import CaptureDamage, CaptureError, NewerFormatError
from .messages import (
    MAX_MSG_SIZE,
    MIN_PROTOCOL_VERSION,
    MalformedFrame,
    Message,
    frame_decoder,
    message_class,
)
from .protocol import MAX_SANE_PROTOCOL

MAGIC = b"\x89ICECAP\n"
FORMAT_VERSION = 2
FILE_SUFFIX = ".icecap"

KIND_FRAME = 0x01
KIND_CONNECT = 0x02
KIND_DISCONNECT = 0x03
KIND_END = 0x04
#: A frame received before this file began, repeated so that the file stands on its own.
KIND_CARRIED = 0x05
#: Kinds from here on may be skipped by readers that do not know them.
FIRST_OPTIONAL_KIND = 0x80

_PREAMBLE = struct.Struct(">8sHI")  # magic, format version, header length
_RECORD = struct.Struct(">BIQ")  # kind, body length, time in microseconds
RECORD_HEADER_SIZE = _RECORD.size
MAX_FRAME_BODY = MAX_MSG_SIZE + 4
MAX_JSON_BODY = 65536
#: Optional records are skipped by readers that do not know them, but still buffered whole: a
#: length beyond this is damage, not a reason to read the rest of the file into memory.
MAX_OPTIONAL_BODY = 16 << 20
MAX_HEADER = 65536
READ_BLOCK = 1 << 20
_BE32 = struct.Struct(">I")
#: A carried frame's body starts with the time it was really received (signed µs since this
#: file's start), then the frame as a frame record holds it.
_ORIGINAL = struct.Struct(">q")
_CARRIED_HEAD = struct.Struct(">qI")  # original time, the frame's own length prefix
#: A carried record's body: the 8-byte original time and a frame of 8 bytes at least.
MIN_CARRIED_BODY = 8 + 8
MAX_CARRIED_BODY = 8 + MAX_FRAME_BODY
#: A frame record's header and the frame's own length prefix and type word, read at once.
_FRAME_RECORD = struct.Struct(">BIQII")
#: The latest record time a reader believes: 2^53 µs (285 years) is the last a float holds
#: exactly, so times convert to seconds and back without loss; anything later is damage.
MAX_TIME_US = 1 << 53
#: Where a record may start when a salvaging reader looks for one after damage: a frame or
#: carried-frame record (kind 1 or 5, length below 2^21) or a connect, disconnect or end record
#: (kind 2-4, length below 2^17, then 8 bytes of time and a body that starts with '{').
_RECORD_START = re.compile(rb"(?s)(?=[\x01\x05]\x00[\x00-\x10].{10}|[\x02-\x04]\x00\x00[\x00\x01].{9}\{)")
#: A header's ``series``: 128 random bits in lowercase hex.
_SERIES = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True, slots=True)
class CaptureHeader:
    protocol: int
    peer_version: int
    offered: int
    scheduler: str
    start: float
    icetools: str
    #: Format 2 (absent from format 1 files): the recording session this file belongs to
    #: (32 lowercase hex digits, shared by every part of one rotating recording), its position
    #: in it, and the netname the recorder looked for (None when it connected by address).
    series: str | None = None
    part: int | None = None
    netname: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update(
            protocol=self.protocol,
            peer_version=self.peer_version,
            offered=self.offered,
            scheduler=self.scheduler,
            start=self.start,
            icetools=self.icetools,
        )
        for key in ("series", "part", "netname"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        return data


# Records are named tuples rather than dataclasses: a reader hands out millions of them, and a
# tuple is built in one C call.


class FrameRecord(NamedTuple):
    """A frame as received; ``protocol`` is the layout in force on its connection."""

    t: float
    data: bytes
    protocol: int


class ConnectRecord(NamedTuple):
    t: float
    protocol: int
    peer_version: int
    offered: int
    scheduler: str
    reconnect: bool
    #: True on the first connect record of a rotated part: the same connection as at the end
    #: of the previous part, no new handshake (format 2).
    rotated: bool = False


class CarriedRecord(NamedTuple):
    """A frame received before this file began (format 2), repeated at the file's start so that
    the file stands on its own: ``t`` is the record's time (its first connect record's),
    ``original`` when the frame was really received (seconds since this file's start, <= 0 for
    frames of earlier parts), ``data`` the frame as in :class:`FrameRecord`."""

    t: float
    original: float
    data: bytes
    protocol: int


class DisconnectRecord(NamedTuple):
    t: float
    reason: str


class EndRecord(NamedTuple):
    t: float
    frames: int
    reason: str


Record = FrameRecord | ConnectRecord | DisconnectRecord | EndRecord | CarriedRecord


class PumpResult(NamedTuple):
    """What one :meth:`CaptureReader.pump` call did."""

    frames: int  # frame records read (decodable or not)
    undecodable: int
    last_t: float | None  # time of the last record handed out, None if none was
    stopped: str  # "end" (of the file or an end record), "until" or "max_frames"


def _no_message(buf: bytes, pos: int, end: int) -> None:
    return None


def _ignore(msg: Message, t: float) -> None:
    return None


# ------------------------------------------------------------------------------------------
# Writing


class CaptureWriter:
    """Append records to a new capture file, each batch with a single unbuffered write.

    The file is created at once (so a bad path fails before any connection is made); the header
    goes in with the first :meth:`connected`, when the negotiated protocol is known. With
    ``overwrite`` an existing file is only replaced then: until the first connection the
    recording goes to a temporary file beside it, renamed over it atomically once it has its
    header, so a recording that never reached a scheduler costs the old file nothing. A writer
    closed before any connection leaves no file behind.

    A write that fails (a full disk) raises :class:`CaptureError` and takes back the part of the
    batch that made it to disk: the file always ends at a whole record.

    ``series`` (a new random id by default), ``part`` and ``netname`` go into the header (see
    docs/capture-format.md). ``origin`` = (wall-clock start, monotonic time of that start)
    continues the clock of a previous part: a rotating recorder passes the previous part's
    start plus the monotonic time elapsed, so that record times line up exactly across parts.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        series: str | None = None,
        part: int = 0,
        netname: str | None = None,
        origin: tuple[float, float] | None = None,
    ) -> None:
        self.path = Path(path)
        if series is None:
            series = secrets.token_hex(16)
        elif _SERIES.fullmatch(series) is None:
            raise ValueError(f"series {series!r} is not 32 lowercase hex digits")
        if type(part) is not int or part < 0:
            raise ValueError(f"part {part!r} is not a count")
        self.series = series
        self.part = part
        self.netname = netname
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        # A special file where the capture should go is refused before anything is opened: a
        # FIFO would block until somebody reads it.
        try:
            existing = os.stat(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CaptureError(f"cannot create {self.path}: {e.strerror}") from None
        else:
            if not stat.S_ISREG(existing.st_mode):
                raise CaptureError(f"cannot create {self.path}: it is {file_kind(existing.st_mode)}")
            if not overwrite:
                raise CaptureError(f"{self.path} already exists (use --overwrite to replace it)")
        #: Where the records go until the first connection: the path itself, or with
        #: ``overwrite`` a temporary name beside it.
        self._open_path = self.path
        if overwrite:
            self._open_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                self._open_path.unlink()  # left by a recorder of the same pid that was killed
        try:
            # O_NONBLOCK: something put in the file's place meanwhile fails (ENXIO for a FIFO)
            # instead of blocking; the descriptor is made blocking once it is a regular file.
            fd = os.open(self._open_path, flags | os.O_NONBLOCK, 0o644)
        except FileExistsError:
            raise CaptureError(f"{self.path} already exists (use --overwrite to replace it)") from None
        except OSError as e:
            raise CaptureError(f"cannot create {self.path}: {e.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise CaptureError(f"cannot create {self.path}: it is {file_kind(mode)}")
        os.set_blocking(fd, True)
        self._fd: int | None = fd
        if origin is None:
            self._t0 = time.monotonic()
            self.start = time.time()
        else:
            self.start, self._t0 = origin
        self.header: CaptureHeader | None = None
        self.frames_written = 0
        #: Carried-frame records written (not counted in ``frames_written``).
        self.carried_written = 0
        self.bytes_written = 0
        self._last_us = 0
        #: Carried frames may only follow the first connect record directly.
        self._may_carry = False

    def _now_us(self, t: float | None = None) -> int:
        """Microseconds for a record made now (or at ``t`` seconds since the start, for tools
        that rewrite recordings); never behind the previous record, as the format requires."""
        if t is None:
            t = time.monotonic() - self._t0
        us = max(int(round(t * 1_000_000)), self._last_us)
        if us > MAX_TIME_US:  # no reader would believe it (and it may not fit the u64)
            raise CaptureError(f"cannot write {self.path}: record time {t} s is out of range")
        self._last_us = us
        return us

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise CaptureError(f"{self.path} is already closed")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            # Take back what part of the batch got written (the file only ever grew by our
            # writes, so its old end is bytes_written): a reader then finds whole records only.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.bytes_written)
            error = CaptureError(
                f"cannot write {self.path}: {e.strerror} ({self.frames_written} frames recorded "
                "before are kept)"
            )
            error.strerror = e.strerror  # type: ignore[attr-defined]  (for a rotating writer's message)
            raise error from None
        self.bytes_written += len(data)

    @staticmethod
    def _json_record(kind: int, us: int, body: dict[str, Any]) -> bytes:
        raw = json.dumps(body, separators=(",", ":")).encode()
        return _RECORD.pack(kind, len(raw), us) + raw

    def connected(
        self,
        protocol: int,
        peer_version: int,
        offered: int,
        scheduler: str,
        t: float | None = None,
        *,
        rotated: bool = False,
    ) -> None:
        """A (re)connection was negotiated: the header first time, a connect record always.
        ``rotated``: this is the first connect record of a rotated part, the same connection as
        at the end of the previous part (no new handshake)."""
        us = self._now_us(t)
        out = b""
        header = self.header
        reconnect = header is not None
        if rotated and reconnect:
            raise ValueError("only a file's first connect record can be rotated")
        if header is None:
            header = CaptureHeader(
                protocol, peer_version, offered, scheduler, self.start, __version__,
                series=self.series, part=self.part, netname=self.netname,
            )
            raw = json.dumps(header.to_json(), separators=(",", ":")).encode()
            out += _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw
        body: dict[str, Any] = {
            "protocol": protocol,
            "peer_version": peer_version,
            "offered": offered,
            "scheduler": scheduler,
            "reconnect": reconnect,
        }
        if rotated:
            body["rotated"] = True
        out += self._json_record(KIND_CONNECT, us, body)
        self._write(out)
        self.header = header  # only once it is on disk: a writer whose header failed has nothing
        self._may_carry = not reconnect
        if self._open_path != self.path:
            # The first connection: now the recording replaces the old file, all at once.
            try:
                os.fsync(self._fd)  # type: ignore[arg-type]
                os.replace(self._open_path, self.path)
            except OSError as e:
                raise CaptureError(f"cannot replace {self.path}: {e.strerror}") from None
            self._open_path = self.path

    def carried(self, frames: list[tuple[float, bytes]]) -> None:
        """Write carried frames, right after the first connect record, in one write: each is
        (when it was really received, in seconds since this file's start (<= 0 for frames of
        earlier parts), the frame as received). The records take the connect record's time."""
        if not frames:
            return
        if not self._may_carry:
            raise ValueError("carried frames must come right after a file's first connect record")
        us = self._last_us  # the connect record's: nothing was written since
        pack = _RECORD.pack
        original = _ORIGINAL.pack
        out = []
        for t, frame in frames:
            o = int(round(t * 1_000_000))
            if not -MAX_TIME_US <= o <= us:
                raise ValueError(f"carried frame's time {t} s is out of range")
            out.append(pack(KIND_CARRIED, len(frame) + 8, us) + original(o) + frame)
        self._write(b"".join(out))
        self.carried_written += len(frames)

    def frames(self, frames: list[bytes], t: float | None = None) -> None:
        """Append frames that arrived together, in one write, stamped now or at ``t`` seconds
        since the start (for tools that rewrite recordings)."""
        if not frames:
            return
        if self.header is None:
            raise CaptureError("frames cannot be written before the first connection")
        us = self._now_us(t)
        pack = _RECORD.pack
        self._write(b"".join(pack(KIND_FRAME, len(f), us) + f for f in frames))
        self.frames_written += len(frames)
        self._may_carry = False

    def disconnected(self, reason: str, t: float | None = None) -> None:
        if self.header is not None:
            self._write(self._json_record(KIND_DISCONNECT, self._now_us(t), {"reason": reason}))
            self._may_carry = False

    def close(self, reason: str, t: float | None = None, *, end_record: bool = True) -> None:
        """Write the end record (if anything was recorded) and close the file."""
        if self._fd is None:
            return
        try:
            if self.header is not None and end_record:
                self._write(
                    self._json_record(
                        KIND_END, self._now_us(t), {"frames": self.frames_written, "reason": reason}
                    )
                )
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise CaptureError(f"cannot write {self.path}: {e.strerror}") from None
        finally:
            os.close(self._fd)
            self._fd = None
            if self.header is None:
                # Nothing was recorded: no empty file (nor temporary one) is left behind.
                with contextlib.suppress(OSError):
                    self._open_path.unlink()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close("closed")


# ------------------------------------------------------------------------------------------
# Reading


class CaptureReader:
    """Read a capture: ``header``, then iterate records.

    After iteration, ``frames`` counts frame records, ``torn_bytes`` says how many trailing
    bytes of an incomplete last record were ignored, and ``ended`` whether an end record was
    seen. :meth:`warning` phrases a torn tail for people. Corruption raises
    :class:`CaptureError` at the point it is met, after every record before it was yielded.

    With ``follow=True`` an incomplete tail means "not written yet": iteration waits for the
    file to grow (polling every ``poll`` seconds) until an end record arrives.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        follow: bool = False,
        poll: float = 0.2,
        salvage: bool = False,
    ) -> None:
        self.path = Path(path)
        self.follow = follow
        self.poll = poll
        #: Read on past damage (from the next record that checks out) instead of raising;
        #: ``damage`` says what was skipped.
        self.salvage = salvage
        #: Damaged regions skipped when salvaging: file offset -> bytes skipped.
        self.damage: dict[int, int] = {}
        self._file = open_regular(self.path)
        self.frames = 0
        #: Carried-frame records read (format 2; not counted in ``frames``).
        self.carried = 0
        #: The file's format version (1 or 2; a version 1 file reads as a version 2 file
        #: without the new header keys and records).
        self.version = 0
        #: File offset just past the last record handed out (for progress bars).
        self.position = 0
        self.torn_bytes = 0
        self.ended = False
        self.size = 0
        #: Microseconds added to every record time handed out (iteration and pump): a file read
        #: as a later part of a recording (icetools.recordings) gives times since the recording's
        #: first file started, not its own. ``until`` is in the same times. Whole microseconds,
        #: added before the division, so a time is the very float a single file would give.
        self.time_offset_us = 0
        #: Carried frames no earlier than their record (see :meth:`_carried_time`).
        self.clamp_carried = False
        self.header = self._read_header()
        self._data_start = self._file.tell()
        self._start = (self._data_start, self.header.protocol, 0)
        self._protocol = self.header.protocol

    @property
    def protocol(self) -> int:
        """The protocol in force for the frames that follow the last record handed out."""
        return self._protocol

    def rewind(self) -> None:
        """Start the next iteration at the first record again."""
        self._start = (self._data_start, self.header.protocol, 0)

    def seek(self, offset: int, protocol: int, frames: int) -> None:
        """Start the next iteration at ``offset`` (a record boundary from an index), where
        ``protocol`` is in force and ``frames`` frame records came before."""
        if not self._data_start <= offset:
            raise CaptureError(f"{self.path}: cannot seek to byte {offset}, inside the header")
        self._start = (offset, protocol, frames)

    def _read_exact_waiting(self, n: int) -> bytes:
        data = self._file.read(n)
        while self.follow and len(data) < n:
            time.sleep(self.poll)
            data += self._file.read(n - len(data))
        return data

    def _read_header(self) -> CaptureHeader:
        pre = self._read_exact_waiting(_PREAMBLE.size)
        if len(pre) < len(MAGIC) and MAGIC.startswith(pre):
            if not pre:
                raise CaptureError(
                    f"{self.path} is empty (the recorder never reached a scheduler?)"
                )
            raise CaptureError(f"{self.path} ends after {len(pre)} bytes, inside the magic")
        if not pre.startswith(MAGIC):
            raise CaptureError(f"{self.path} is not an icetools capture (bad magic)")
        if len(pre) < _PREAMBLE.size:
            raise CaptureError(f"{self.path} ends after {len(pre)} bytes, inside its header")
        _, version, length = _PREAMBLE.unpack(pre)
        if version > FORMAT_VERSION:
            raise NewerFormatError(
                f"{self.path} was written by a newer icetools (capture format {version}, "
                f"this one reads up to {FORMAT_VERSION}), please upgrade"
            )
        if version < 1:
            raise CaptureError(f"{self.path}: capture format {version} does not exist")
        self.version = version
        if length > MAX_HEADER:
            raise CaptureError(f"{self.path}: header length {length} is implausible (corrupt?)")
        raw = self._read_exact_waiting(length)
        if len(raw) < length:
            raise CaptureError(
                f"{self.path} ends after {_PREAMBLE.size + len(raw)} bytes, inside its "
                f"{length}-byte header"
            )
        data = _json_object(raw)
        if data is None:
            raise CaptureError(f"{self.path}: header is not a JSON object (corrupt?)")
        for step in range(version, FORMAT_VERSION):
            data = _CONVERTERS[step](data)
        try:
            series = _str_field(data, "series") if "series" in data else None
            if series is not None and _SERIES.fullmatch(series) is None:
                raise ValueError(f"'series' is {_shown(series)}, not 32 lowercase hex digits")
            header = CaptureHeader(
                protocol=_int_field(data, "protocol"),
                peer_version=_int_field(data, "peer_version"),
                offered=_int_field(data, "offered"),
                scheduler=_str_field(data, "scheduler"),
                start=_time_field(data, "start"),
                icetools=_str_field(data, "icetools"),
                series=series,
                part=_int_field(data, "part") if "part" in data else None,
                netname=_str_field(data, "netname") if "netname" in data else None,
                extra={k: v for k, v in data.items() if k not in _HEADER_KEYS},
            )
        except ValueError as e:
            raise CaptureError(f"{self.path}: header is not valid: {e}") from None
        _check_protocol(self.path, header.protocol, "header")
        return header

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def warning(self) -> str | None:
        """One line for people when damage was skipped or a torn tail ignored, else None."""
        parts = []
        if self.damage:
            regions = _merged(self.damage)
            parts.append(
                f"{self.path}: skipped {sum(n for _, n in regions)} damaged bytes in "
                f"{len(regions)} region{'s' if len(regions) != 1 else ''} (the first at byte "
                f"{regions[0][0]}) and kept {self.frames} frames"
            )
        if self.torn_bytes:
            parts.append(
                f"{self.path}: kept {self.frames} frames, ignored {self.torn_bytes} trailing bytes "
                "of an incomplete record (the recorder was stopped while writing)"
            )
        return "; ".join(parts) or None

    def __iter__(self) -> Iterator[Record]:
        """Every record in order. This is the hot path under dump, replay and stats: it reads
        the file in blocks (so memory stays flat however large the file), checks the fixed record
        headers and builds each frame record in one call. When following, an incomplete tail is
        waited for instead of reported. Damage raises :class:`CaptureDamage`, or when salvaging
        is skipped (see :meth:`_skip_damage`)."""
        start, last_us = self._start, 0
        while True:
            try:
                yield from self._records(start, last_us)
                return
            except CaptureDamage as e:
                if not self.salvage:
                    raise
                start, last_us = self._skip_damage(e), e.last_us

    def _records(self, start: tuple[int, int, int], last_us: int) -> Iterator[Record]:
        base, self._protocol, self.frames = start  # base: file offset of tail[0]
        if base == self._data_start:
            self.carried = 0
        self.ended = False
        self.torn_bytes = 0
        tail = b""  # the start of a record whose end has not been read yet
        self._file.seek(base)
        try:
            while not self.ended:
                chunk = self._file.read(READ_BLOCK)
                if not chunk:
                    if tail:  # a torn record, or one being written; never damage
                        self._check_tail(tail, base, last_us)
                    if not self.follow:
                        break
                    time.sleep(self.poll)
                    continue
                data = tail + chunk if tail else chunk
                pos, last_us = yield from self._scan(data, 0, len(data), last_us, offset=base)
                tail = data[pos:]
                base += pos
            if self.ended and not self.follow:
                self._check_after_end(self.position)
        except CaptureDamage as e:
            e.last_us = last_us
            raise
        self.size = base + len(tail)
        self.torn_bytes = 0 if self.ended else len(tail)

    def _scan(
        self, data: Any, pos: int, end: int, last_us: int, offset: int = 0
    ) -> Iterator[Record]:
        """Yield the whole records of ``data[pos:end]``; return (position of the first
        incomplete record, time of the last record). ``offset`` turns positions into file
        offsets for messages."""
        unpack_record = _RECORD.unpack_from
        header_size = RECORD_HEADER_SIZE
        be32 = _BE32.unpack_from
        new = tuple.__new__
        offset_us = self.time_offset_us
        while pos + header_size <= end:
            kind, length, us = unpack_record(data, pos)
            body_start = pos + header_size
            body_end = body_start + length
            if kind == KIND_FRAME:
                if not 8 <= length <= MAX_FRAME_BODY or not last_us <= us <= MAX_TIME_US:
                    self._check_frame_record(offset + pos, length, us, last_us)
                if body_end > end:
                    break
                body = data[body_start:body_end]
                if be32(body, 0)[0] + 4 != length:
                    self._corrupt(offset + pos, "frame length prefix disagrees with its record")
                self.frames += 1
                pos = body_end
                last_us = us
                self.position = offset + pos
                yield new(FrameRecord, ((us + offset_us) / 1_000_000 if offset_us else us / 1_000_000, body, self._protocol))
                continue
            if kind == KIND_CARRIED:
                self._check_carried_record(offset + pos, length, us, last_us, self.frames)
                if body_end > end:
                    break
                original = self._carried_original(data, body_start, length, us, offset + pos)
                self.carried += 1
                pos = body_end
                last_us = us
                self.position = offset + pos
                yield new(
                    CarriedRecord,
                    ((us + offset_us) / 1_000_000, self._carried_time(original, us), data[body_start + 8 : body_end], self._protocol),
                )
                continue
            self._check_event_record(offset + pos, kind, length, us, last_us)
            if body_end > end:
                break
            if kind < FIRST_OPTIONAL_KIND:
                record = self._event(kind, us, data[body_start:body_end], offset + pos)
            else:
                record = None  # an optional record we do not know: skipped
            pos = body_end
            last_us = us
            self.position = offset + pos
            if record is not None:
                yield record
        return pos, last_us

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
        """Decode the frames from where iteration would start and hand each message to the
        handler of its class, with its time; hand connect, disconnect and end records to
        ``on_event``. This is the fast path under ``replay --fast``, ``stats`` and the seek index:
        no record objects, no per-frame copies, one dispatch per frame. Frames that cannot be
        decoded are counted in ``PumpResult.undecodable`` and handed to ``on_undecodable`` (as a
        FrameRecord) if given; frames of classes without a handler are skipped.

        It stops at the end of the file, before the first record later than ``until``, or
        after ``max_frames`` frames. The reader is then left where it stopped: ``position``,
        ``frames`` and ``protocol`` are up to date, and the next ``pump()`` or iteration goes on
        from the first record not yet handed out. Errors are those of iteration, at the same
        records. Not for ``follow`` readers.

        With ``fields=True`` a handler gets the plain tuple of the message's field values (in its
        class's field order) instead of the message: for handlers that unpack by position, it
        saves making a message object per frame.

        Carried frames (format 2: the state given before the file began, at its start) are
        decoded and handed to their handlers like frames, with the time they were really
        received (``original``, seconds, may be negative), so that a file read alone gives the
        state at its start; with ``carried=False`` they are not. Either way they are counted in
        ``carried``, not in ``frames`` (nor in ``PumpResult.frames`` and ``undecodable``: those
        count what was received during this file), and handed as a :class:`CarriedRecord` to
        ``on_carried`` if given (``dump`` shows them so). Once the last carried frame of the file
        has been handed out (``carried=True``), ``on_settled`` is called with its record's time
        (the first connect record's: see Monitor.carried_settled).

        Damage raises :class:`CaptureDamage`; a salvaging reader skips it (see
        :meth:`_skip_damage`) and goes on, and the result counts what was read on both sides.
        """
        carry = (carried, on_carried, on_settled if carried else None)
        if not self.salvage:
            return self._pump(handlers, on_event, until, max_frames, fields, on_undecodable, carry)
        frames = undecodable = 0
        last_t: float | None = None
        while True:
            left = None if max_frames is None else max_frames - frames
            try:
                result = self._pump(handlers, on_event, until, left, fields, on_undecodable, carry)
            except CaptureDamage as e:
                done: PumpResult = e.partial  # type: ignore[assignment]
                frames += done.frames
                undecodable += done.undecodable
                last_t = done.last_t if done.last_t is not None else last_t
                self._start = self._skip_damage(e)
                continue
            return PumpResult(
                frames + result.frames,
                undecodable + result.undecodable,
                result.last_t if result.last_t is not None else last_t,
                result.stopped,
            )

    def _pump(
        self,
        handlers: Mapping[type[Message], Callable[[Any, float], object]],
        on_event: Callable[[Record], object],
        until: float | None,
        max_frames: int | None,
        fields: bool,
        on_undecodable: Callable[[FrameRecord], object] | None,
        carry: tuple[bool, Callable[[CarriedRecord], object] | None, Callable[[float], object] | None] = (True, None, None),
    ) -> PumpResult:
        """pump() without salvaging."""
        if self.follow:
            raise ValueError("pump() reads what is in the file; iterate a following reader")
        base, protocol, frames = self._start  # base: file offset of data[0]
        if base == self._data_start:
            self.carried = 0
        first_frames = frames
        undecodable = 0
        last_t: float | None = None
        limit = frames + max_frames if max_frames is not None else -1
        stop_after = float("inf") if until is None else until
        offset_us = self.time_offset_us
        self.ended = False
        tables: dict[int, dict[int, tuple[Any, Any]]] = {}  # protocol -> type word -> (decoder, handler)
        dispatch = tables.setdefault(protocol, {})
        frame_record = _FRAME_RECORD.unpack_from
        frame_header_size = _FRAME_RECORD.size
        record_header_size = RECORD_HEADER_SIZE
        event_record = _RECORD.unpack_from
        malformed = MalformedFrame
        read = self._file.read
        self._file.seek(base)
        tail = b""
        last_us = 0
        pos = 0
        stopped = "end"
        on_settled = carry[2]
        settle_at: float | None = None  # the carried frames' time, until a record of another kind
        try:
            while not self.ended:
                chunk = read(READ_BLOCK)
                if not chunk:
                    break
                data = tail + chunk if tail else chunk
                end = len(data)
                pos = 0
                if settle_at is not None and data[0] != 5:  # (a block began after the last carried frame)
                    on_settled(settle_at)  # type: ignore[misc]
                    settle_at = None
                while pos + record_header_size <= end:
                    if pos + frame_header_size <= end:
                        kind, length, us, frame_length, type_word = frame_record(data, pos)
                    else:  # a short record at the end of the block: no room for a frame header
                        kind, length, us = event_record(data, pos)
                        frame_length = type_word = -1
                    body = pos + record_header_size
                    stop = body + length
                    if kind == 1:  # KIND_FRAME
                        if length > MAX_FRAME_BODY or length < 8 or us < last_us or us > MAX_TIME_US:
                            self.frames = frames
                            self._check_frame_record(base + pos, length, us, last_us)
                        if stop > end:
                            break
                        if frame_length + 4 != length:
                            self.frames = frames
                            self._corrupt(base + pos, "frame length prefix disagrees with its record")
                        # (the offset only where there is one: a file read alone pays no addition)
                        t = (us + offset_us) / 1_000_000 if offset_us else us / 1_000_000
                        if t > stop_after:
                            stopped = "until"
                            break
                        frames += 1
                        last_us = us
                        pos = stop
                        last_t = t
                        decoder, handler = dispatch.get(type_word) or self._dispatch_miss(dispatch, type_word, protocol, handlers, fields)
                        try:
                            msg = decoder(data, body, stop)
                        except malformed:
                            msg = None
                        if msg is None or msg.__class__ is int:
                            undecodable += 1
                            if on_undecodable is not None:
                                on_undecodable(tuple.__new__(FrameRecord, (t, data[body:stop], protocol)))
                        else:
                            handler(msg, t)
                        if frames == limit:
                            stopped = "max_frames"
                            break
                        continue
                    self.frames = frames
                    if kind == 5:  # KIND_CARRIED: rare (a file's start), off the frames' path
                        self._check_carried_record(base + pos, length, us, last_us, frames)
                        if stop > end:
                            break
                        if (us + offset_us) / 1_000_000 > stop_after:
                            stopped = "until"
                            break
                        self._pump_carried(data, body, stop, us, base + pos, protocol, dispatch, handlers, fields, carry)
                        last_us = us
                        pos = stop
                        self.position = base + pos
                        last_t = (us + offset_us) / 1_000_000
                        if on_settled is not None:
                            settle_at = None
                            if pos >= end:
                                settle_at = last_t  # (the next block tells)
                            elif data[pos] != 5:  # the last carried frame: the state is given
                                on_settled(last_t)
                        continue
                    self._check_event_record(base + pos, kind, length, us, last_us)
                    if stop > end:
                        break
                    if (us + offset_us) / 1_000_000 > stop_after:
                        stopped = "until"
                        break
                    last_us = us
                    if kind < FIRST_OPTIONAL_KIND:
                        self.frames = frames
                        record = self._event(kind, us, data[body:stop], base + pos)
                        pos = stop
                        self.position = base + pos
                        last_t = record.t
                        on_event(record)
                        if self._protocol != protocol:
                            protocol = self._protocol
                            dispatch = tables.setdefault(protocol, {})
                        if self.ended:
                            break
                    else:
                        pos = stop  # an optional record we do not know: skipped
                if stopped != "end" or self.ended:
                    break  # stopped inside the block: resume at ``pos``
                tail = data[pos:]
                base += pos
            if settle_at is not None and stopped == "end":  # (the file ended after its carried frames)
                on_settled(settle_at)  # type: ignore[misc]
            if stopped == "end" and not self.ended and tail:
                self.frames = frames
                self._check_tail(tail, base, last_us)  # a torn record, not damage
            if self.ended:
                self._check_after_end(base + pos)
        except CaptureDamage as e:
            # What was done before the damage, for a salvaging pump() to go on from.
            e.last_us = last_us
            e.partial = PumpResult(frames - first_frames, undecodable, last_t, "damage")
            self.frames = frames
            self._protocol = protocol
            raise
        if stopped == "end" and not self.ended:
            # The whole file was read: ``tail`` is what is left of an incomplete last record.
            self.size = base + len(tail)
            self.torn_bytes = len(tail)
            resume = base
        else:
            resume = base + pos
            self.torn_bytes = 0
        self.frames = frames
        self.position = resume
        self._protocol = protocol
        self._start = (resume, protocol, frames)
        return PumpResult(frames - first_frames, undecodable, last_t, stopped if not self.ended else "end")

    def _check_event_record(self, where: int, kind: int, length: int, us: int, last_us: int) -> None:
        """Raise for a non-frame record header that cannot be right (both readers' check)."""
        if kind < FIRST_OPTIONAL_KIND:
            if kind not in (KIND_CONNECT, KIND_DISCONNECT, KIND_END):
                self._corrupt(where, f"unknown record kind 0x{kind:02x}")
            if length > MAX_JSON_BODY:
                self._corrupt(where, f"event record of {length} bytes")
        elif length > MAX_OPTIONAL_BODY:
            self._corrupt(where, f"optional record (kind 0x{kind:02x}) of {length} bytes")
        self._check_time(where, us, last_us)

    def _check_carried_record(self, where: int, length: int, us: int, last_us: int, frames: int) -> None:
        """Raise for a carried-frame record header that cannot be right (both readers' check)."""
        if not MIN_CARRIED_BODY <= length <= MAX_CARRIED_BODY:
            self._corrupt(where, f"carried frame record of {length} bytes")
        if frames:
            self._corrupt(where, "carried frame after frame records")
        self._check_time(where, us, last_us)

    def _carried_original(self, data: Any, body: int, length: int, us: int, where: int) -> int:
        """A whole carried record's original time (µs), once its body checks out."""
        original, frame_length = _CARRIED_HEAD.unpack_from(data, body)
        if frame_length + 12 != length:
            self._corrupt(where, "carried frame's length prefix disagrees with its record")
        if not -MAX_TIME_US <= original <= us:
            self._corrupt(where, f"carried frame received at {original} µs, after it was carried at {us} µs")
        return original

    def _carried_time(self, original_us: int, us: int) -> float:
        """A carried frame's time in seconds: when it was received (``original_us``), shifted
        by ``time_offset_us``; with ``clamp_carried`` no earlier than the record's own time (a
        file after a gap in a recording of several: its carried frames must not go back before
        the records already handed out)."""
        offset_us = self.time_offset_us
        if self.clamp_carried and original_us < us:
            original_us = us
        return (original_us + offset_us) / 1_000_000

    def _pump_carried(
        self,
        data: Any,
        body: int,
        stop: int,
        us: int,
        where: int,
        protocol: int,
        dispatch: dict[int, tuple[Any, Any]],
        handlers: Mapping[type[Message], Callable[[Any, float], object]],
        fields: bool,
        carry: tuple[bool, Callable[[CarriedRecord], object] | None, Callable[[float], object] | None],
    ) -> None:
        """pump()'s handling of one whole carried-frame record at ``data[body - 13:stop]``."""
        original = self._carried_time(self._carried_original(data, body, stop - body, us, where), us)
        self.carried += 1
        apply, on_carried, _ = carry
        frame = body + 8
        if apply:
            type_word = _BE32.unpack_from(data, frame + 4)[0]
            decoder, handler = dispatch.get(type_word) or self._dispatch_miss(dispatch, type_word, protocol, handlers, fields)
            try:
                msg = decoder(data, frame, stop)
            except MalformedFrame:
                msg = None
            if msg is not None and msg.__class__ is not int:
                handler(msg, original)
        if on_carried is not None:
            on_carried(tuple.__new__(CarriedRecord, ((us + self.time_offset_us) / 1_000_000, original, data[frame:stop], protocol)))

    def _check_frame_record(self, where: int, length: int, us: int, last_us: int) -> None:
        """Raise for a frame record header that cannot be right (both readers' check)."""
        if not 8 <= length <= MAX_FRAME_BODY:
            self._corrupt(where, f"frame record of {length} bytes")
        self._check_time(where, us, last_us)

    def _check_time(self, where: int, us: int, last_us: int) -> None:
        if us < last_us:
            self._corrupt(where, "record time goes backwards")
        if us > MAX_TIME_US:
            self._corrupt(where, f"record time {us} µs is implausible")

    def _check_tail(self, tail: bytes, where: int, last_us: int) -> None:
        """The file ends inside the record at ``where`` (whose bytes so far are ``tail``): that
        is a torn tail only if ``tail`` can be the start of a record; else it is damage."""
        problem = torn_problem(tail, last_us)
        if problem is not None:
            self._corrupt(where, f"{problem}, in a record cut short by the end of the file")

    def _check_after_end(self, position: int) -> None:
        """Nothing may follow the end record: bytes after it are damage (an end record is only
        ever written last)."""
        size = os.fstat(self._file.fileno()).st_size
        if size > position:
            self._corrupt(position, f"{size - position} bytes follow the end record")

    def _skip_damage(self, damage: CaptureDamage) -> tuple[int, int, int]:
        """Where a salvaging reader goes on after ``damage``: the next record that checks out
        (or the end of the file), noting the bytes skipped."""
        resume = resync(self._file, damage.offset + 1, damage.last_us)
        self.damage[damage.offset] = resume - damage.offset
        self.position = resume
        return (resume, self._protocol, self.frames)

    @staticmethod
    def _dispatch_miss(
        table: dict[int, tuple[Any, Any]],
        type_word: int,
        protocol: int,
        handlers: Mapping[type[Message], Callable[[Any, float], object]],
        fields: bool,
    ) -> tuple[Any, Any]:
        """Resolve a type word met for the first time in this pump."""
        decoder = frame_decoder(type_word, protocol, fields_only=fields)
        if decoder is None:  # no such message: every frame of it is undecodable
            entry: tuple[Any, Any] = (_no_message, _ignore)
        else:
            entry = (decoder, handlers.get(message_class(type_word), _ignore))
        table[type_word] = entry
        return entry

    def _event(self, kind: int, us: int, raw: bytes, where: int) -> Record:
        """A connect, disconnect or end record from its JSON body (strictly: the documented
        fields with their JSON types, or the record is damage)."""
        t = (us + self.time_offset_us) / 1_000_000
        body = _json_object(raw)
        if body is None:
            self._corrupt(where, "event record is not a JSON object")
        try:
            if kind == KIND_CONNECT:
                record: Record = ConnectRecord(
                    t,
                    _int_field(body, "protocol"),
                    _int_field(body, "peer_version"),
                    _int_field(body, "offered", 0),
                    _str_field(body, "scheduler", ""),
                    _bool_field(body, "reconnect", False),
                    _bool_field(body, "rotated", False),
                )
            elif kind == KIND_DISCONNECT:
                record = DisconnectRecord(t, _str_field(body, "reason", ""))
            else:
                record = EndRecord(t, _int_field(body, "frames", 0), _str_field(body, "reason", ""))
        except ValueError as e:
            self._corrupt(where, f"event record is not valid: {e}")
        if kind == KIND_CONNECT:
            if record.rotated and record.reconnect:
                self._corrupt(where, "connect record is both a reconnection and a rotation")
            if not MIN_PROTOCOL_VERSION <= record.protocol <= MAX_SANE_PROTOCOL:
                self._corrupt(where, f"connect record names protocol {record.protocol}, which icecream never spoke")
            self._protocol = record.protocol
        elif kind == KIND_END:
            self.ended = True
        return record

    def _corrupt(self, pos: int, what: str) -> NoReturn:
        raise CaptureDamage(
            f"corrupt capture {self.path} at byte {pos}: {what} "
            f"(kept {self.frames} frames before it; --salvage reads on past damage)",
            pos,
        )


def _check_protocol(path: Path, protocol: int, where: str) -> None:
    if not MIN_PROTOCOL_VERSION <= protocol <= MAX_SANE_PROTOCOL:
        raise CaptureError(f"{path}: {where} names protocol {protocol}, which icecream never spoke")


# ------------------------------------------------------------------------------------------
# Reading helpers: opening, strict JSON, telling a torn tail from damage, resynchronising


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading. Anything else (a FIFO, socket, device or directory) is
    an error at once: it is stat()ed first and opened with O_NONBLOCK, so that neither a FIFO
    without a writer nor one swapped in after the stat can block the open."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file") from None
    except OSError as e:
        raise CaptureError(f"cannot open {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CaptureError(f"{path} is {file_kind(mode)}, not a capture file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CaptureError(f"cannot open {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CaptureError(f"{path} is {file_kind(mode)}, not a capture file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


_EVENT_KINDS = (KIND_CONNECT, KIND_DISCONNECT, KIND_END)
_CRITICAL_KINDS = (KIND_FRAME, KIND_CONNECT, KIND_DISCONNECT, KIND_END, KIND_CARRIED)

#: Strict JSON: NaN, Infinity and -Infinity are not JSON, whatever Python's json accepts.
_JSON_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_HEADER_KEYS = frozenset(
    ("protocol", "peer_version", "offered", "scheduler", "start", "icetools", "series", "part", "netname")
)


def convert_1_to_2(header: dict[str, Any]) -> dict[str, Any]:
    """A format 1 header as format 2: the same (format 2 only added optional header keys, the
    connect record's optional ``rotated`` and the carried-frame record, none of which a format
    1 file has)."""
    return header


#: Format N's header -> format N+1's, by N (see docs/capture-format.md).
_CONVERTERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: convert_1_to_2}
_REQUIRED: Any = object()
_JSON_TEXT_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` as a JSON object (strict UTF-8, no NaN/Infinity, nesting Python can parse), or
    None if it is not one."""
    try:
        value = _JSON_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return value if type(value) is dict else None


def _int_field(data: dict[str, Any], key: str, default: Any = _REQUIRED, limit: int = 1 << 63) -> int:
    """An integer field: a JSON integer from 0 below ``limit``, not a float or a boolean."""
    value = data.get(key, default)
    if value is _REQUIRED:
        raise ValueError(f"no {key!r}")
    if type(value) is not int or not 0 <= value < limit:
        raise ValueError(f"{key!r} is {_shown(value)}, not a count")
    return value


def _str_field(data: dict[str, Any], key: str, default: Any = _REQUIRED) -> str:
    value = data.get(key, default)
    if value is _REQUIRED:
        raise ValueError(f"no {key!r}")
    if type(value) is not str:
        raise ValueError(f"{key!r} is {_shown(value)}, not a string")
    return value


def _bool_field(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if type(value) is not bool:
        raise ValueError(f"{key!r} is {_shown(value)}, not true or false")
    return value


def _time_field(data: dict[str, Any], key: str) -> float:
    value = data.get(key, _REQUIRED)
    if value is _REQUIRED:
        raise ValueError(f"no {key!r}")
    if type(value) not in (int, float) or not 0 <= value < 1e12:  # 1e12 s: year 33658
        raise ValueError(f"{key!r} is {_shown(value)}, not a time")
    return float(value)


def _shown(value: Any) -> str:
    """A JSON value in a few characters, for an error message."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def torn_problem(tail: bytes, last_us: int = 0) -> str | None:
    """Why ``tail`` (the bytes from a record's start to the end of the file, fewer than the
    record needs) cannot be the start of a record cut short, or None if it can. The header
    must be plausible as far as it goes (a known kind, a length within the limits, a time no
    earlier than ``last_us``), a frame's own length prefix must agree with its record, and the
    start of a JSON body must be the start of UTF-8 JSON text."""
    kind = tail[0]
    if kind < FIRST_OPTIONAL_KIND and kind not in _CRITICAL_KINDS:
        return f"unknown record kind 0x{kind:02x}"
    if len(tail) < 5:
        return None
    (length,) = _BE32.unpack_from(tail, 1)
    if kind == KIND_FRAME and not 8 <= length <= MAX_FRAME_BODY:
        return f"frame record of {length} bytes"
    if kind == KIND_CARRIED and not MIN_CARRIED_BODY <= length <= MAX_CARRIED_BODY:
        return f"carried frame record of {length} bytes"
    if kind in _EVENT_KINDS and length > MAX_JSON_BODY:
        return f"event record of {length} bytes"
    if kind >= FIRST_OPTIONAL_KIND and length > MAX_OPTIONAL_BODY:
        return f"optional record (kind 0x{kind:02x}) of {length} bytes"
    if len(tail) < RECORD_HEADER_SIZE:
        return None
    _, _, us = _RECORD.unpack_from(tail)
    if us < last_us:
        return "record time goes backwards"
    if us > MAX_TIME_US:
        return f"record time {us} µs is implausible"
    body = tail[RECORD_HEADER_SIZE:]
    if kind == KIND_FRAME:
        if len(body) >= 4 and _BE32.unpack_from(body)[0] + 4 != length:
            return "frame length prefix disagrees with its record"
    elif kind == KIND_CARRIED:
        if len(body) >= 8 and not -MAX_TIME_US <= _ORIGINAL.unpack_from(body)[0] <= us:
            return "carried frame received after it was carried"
        if len(body) >= 12 and _BE32.unpack_from(body, 8)[0] + 12 != length:
            return "carried frame's length prefix disagrees with its record"
    elif kind < FIRST_OPTIONAL_KIND and body:
        if body[:1] != b"{":
            return "event record is not a JSON object"
        try:  # not final: the cut may fall inside a character
            text = codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
        except UnicodeDecodeError:
            return "event record is not UTF-8 text"
        if _JSON_TEXT_BAD.search(text):
            return "event record is not JSON text"
    return None


def _record_checks_out(buf: bytes, pos: int, min_us: int, at_eof: bool) -> int | None:
    """If a frame, carried frame, connect, disconnect or end record that checks out (header
    within the limits, time from ``min_us``, a frame's own length prefix agreeing, a JSON object
    for a body) starts at ``buf[pos]``, where it ends; -1 if a torn tail starts there; else
    None."""
    if len(buf) - pos < RECORD_HEADER_SIZE:
        return -1 if at_eof and torn_problem(buf[pos:], min_us) is None else None
    kind, length, us = _RECORD.unpack_from(buf, pos)
    if kind == KIND_FRAME:
        if not 8 <= length <= MAX_FRAME_BODY:
            return None
    elif kind == KIND_CARRIED:
        if not MIN_CARRIED_BODY <= length <= MAX_CARRIED_BODY:
            return None
    elif kind in _EVENT_KINDS:
        if length > MAX_JSON_BODY:
            return None
    else:
        return None  # an optional record cannot be checked: not a place to resume at
    if not min_us <= us <= MAX_TIME_US:
        return None
    end = pos + RECORD_HEADER_SIZE + length
    if end > len(buf):
        return -1 if at_eof and torn_problem(buf[pos:], min_us) is None else None
    body = buf[pos + RECORD_HEADER_SIZE : end]
    if kind == KIND_FRAME:
        if _BE32.unpack_from(body)[0] + 4 != length:
            return None
    elif kind == KIND_CARRIED:
        original, frame_length = _CARRIED_HEAD.unpack_from(body)
        if frame_length + 12 != length or not -MAX_TIME_US <= original <= us:
            return None
    elif _json_object(body) is None:
        return None
    return end


#: Records that must check out in a row (or reach the end of the file) where a salvaging
#: reader resumes: one alone may be bytes of the damage that happen to look like a record.
RESYNC_RECORDS = 2


def resync(file: BinaryIO, offset: int, min_us: int = 0) -> int:
    """The file offset of the first place at or after ``offset`` where records that check out
    follow one another (:data:`RESYNC_RECORDS` of them, or up to the end of the file, or to a
    torn tail), or the file's size if there is none. The slow path of salvaging: candidates
    are found with a regular expression, each checked in Python."""
    size = os.fstat(file.fileno()).st_size
    reach = RESYNC_RECORDS * (RECORD_HEADER_SIZE + MAX_FRAME_BODY)  # what one check may read
    while offset < size:
        file.seek(offset)
        buf = file.read(READ_BLOCK + reach)
        at_eof = offset + len(buf) >= size
        scan_to = len(buf) if at_eof else READ_BLOCK
        for match in _RECORD_START.finditer(buf):
            pos = match.start()
            if pos >= scan_to:
                break
            at, us = pos, min_us
            for _ in range(RESYNC_RECORDS):
                end = _record_checks_out(buf, at, us, at_eof)
                if end is None:
                    break
                if end == -1 or (end == len(buf) and at_eof):
                    end = len(buf)
                    break
                us = _RECORD.unpack_from(buf, at)[2]
                at = end
            else:
                return offset + pos
            if end is not None and end == len(buf):
                return offset + pos
        if at_eof:
            break
        offset += scan_to
    return size


def _merged(regions: dict[int, int]) -> list[tuple[int, int]]:
    """Skipped regions (offset -> length), adjacent or overlapping ones merged, in order."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(regions.items()):
        if out and start <= out[-1][0] + out[-1][1]:
            first, n = out[-1]
            out[-1] = (first, max(n, start + length - first))
        else:
            out.append((start, length))
    return out


def read_all(path: str | os.PathLike[str]) -> tuple[CaptureHeader, list[Record], CaptureReader]:
    """Convenience for tests and small files: the header, every record, and the reader."""
    with CaptureReader(path) as reader:
        return reader.header, list(reader), reader
