"""Capture files: the writer `icetools record` uses and the reader everything else uses.

The format is specified in docs/capture-format.md. In short: a magic, a format version and a
JSON header, then records of ``kind u8 | body length u32 | time u64 (µs) | body``. The writer
appends each batch of records with one ``write(2)`` on an unbuffered descriptor, so a killed
recorder loses nothing that was complete; the reader keeps everything before a torn tail and
reports what it ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from . import __version__
from .errors import CaptureError, NewerFormatError
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
FORMAT_VERSION = 1
FILE_SUFFIX = ".icecap"

KIND_FRAME = 0x01
KIND_CONNECT = 0x02
KIND_DISCONNECT = 0x03
KIND_END = 0x04
#: Kinds from here on may be skipped by readers that do not know them.
FIRST_OPTIONAL_KIND = 0x80

_PREAMBLE = struct.Struct(">8sHI")  # magic, format version, header length
_RECORD = struct.Struct(">BIQ")  # kind, body length, time in microseconds
RECORD_HEADER_SIZE = _RECORD.size
MAX_FRAME_BODY = MAX_MSG_SIZE + 4
MAX_JSON_BODY = 65536
MAX_HEADER = 65536
READ_BLOCK = 1 << 20
_BE32 = struct.Struct(">I")
#: A frame record's header and the frame's own length prefix and type word, read at once.
_FRAME_RECORD = struct.Struct(">BIQII")


@dataclasses.dataclass(frozen=True, slots=True)
class CaptureHeader:
    protocol: int
    peer_version: int
    offered: int
    scheduler: str
    start: float
    icetools: str
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


class DisconnectRecord(NamedTuple):
    t: float
    reason: str


class EndRecord(NamedTuple):
    t: float
    frames: int
    reason: str


Record = FrameRecord | ConnectRecord | DisconnectRecord | EndRecord


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
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        #: Where the records go until the first connection: the path itself, or with
        #: ``overwrite`` a temporary name beside it.
        self._open_path = self.path
        if overwrite:
            if self.path.is_dir():
                raise CaptureError(f"cannot create {self.path}: it is a directory")
            self._open_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                self._open_path.unlink()  # left by a recorder of the same pid that was killed
        try:
            self._fd: int | None = os.open(self._open_path, flags, 0o644)
        except FileExistsError:
            raise CaptureError(f"{self.path} already exists (use --overwrite to replace it)") from None
        except OSError as e:
            raise CaptureError(f"cannot create {self.path}: {e.strerror}") from None
        self._t0 = time.monotonic()
        self.start = time.time()
        self.header: CaptureHeader | None = None
        self.frames_written = 0
        self.bytes_written = 0
        self._last_us = 0

    def _now_us(self, t: float | None = None) -> int:
        """Microseconds for a record made now (or at ``t`` seconds since the start, for tools
        that rewrite recordings); never behind the previous record, as the format requires."""
        if t is None:
            t = time.monotonic() - self._t0
        us = max(int(round(t * 1_000_000)), self._last_us)
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
            raise CaptureError(
                f"cannot write {self.path}: {e.strerror} ({self.frames_written} frames recorded "
                "before are kept)"
            ) from None
        self.bytes_written += len(data)

    @staticmethod
    def _json_record(kind: int, us: int, body: dict[str, Any]) -> bytes:
        raw = json.dumps(body, separators=(",", ":")).encode()
        return _RECORD.pack(kind, len(raw), us) + raw

    def connected(
        self, protocol: int, peer_version: int, offered: int, scheduler: str, t: float | None = None
    ) -> None:
        """A (re)connection was negotiated: the header first time, a connect record always."""
        us = self._now_us(t)
        out = b""
        header = self.header
        reconnect = header is not None
        if header is None:
            header = CaptureHeader(protocol, peer_version, offered, scheduler, self.start, __version__)
            raw = json.dumps(header.to_json(), separators=(",", ":")).encode()
            out += _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw
        out += self._json_record(
            KIND_CONNECT,
            us,
            {
                "protocol": protocol,
                "peer_version": peer_version,
                "offered": offered,
                "scheduler": scheduler,
                "reconnect": reconnect,
            },
        )
        self._write(out)
        self.header = header  # only once it is on disk: a writer whose header failed has nothing
        if self._open_path != self.path:
            # The first connection: now the recording replaces the old file, all at once.
            try:
                os.fsync(self._fd)  # type: ignore[arg-type]
                os.replace(self._open_path, self.path)
            except OSError as e:
                raise CaptureError(f"cannot replace {self.path}: {e.strerror}") from None
            self._open_path = self.path

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

    def disconnected(self, reason: str, t: float | None = None) -> None:
        if self.header is not None:
            self._write(self._json_record(KIND_DISCONNECT, self._now_us(t), {"reason": reason}))

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
        self, path: str | os.PathLike[str], *, follow: bool = False, poll: float = 0.2
    ) -> None:
        self.path = Path(path)
        self.follow = follow
        self.poll = poll
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        except FileNotFoundError:
            raise CaptureError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{self.path} is a directory, not a capture") from None
        except OSError as e:
            raise CaptureError(f"cannot open {self.path}: {e.strerror}") from None
        self.frames = 0
        #: File offset just past the last record handed out (for progress bars).
        self.position = 0
        self.torn_bytes = 0
        self.ended = False
        self.size = 0
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
        if length > MAX_HEADER:
            raise CaptureError(f"{self.path}: header length {length} is implausible (corrupt?)")
        raw = self._read_exact_waiting(length)
        if len(raw) < length:
            raise CaptureError(
                f"{self.path} ends after {_PREAMBLE.size + len(raw)} bytes, inside its "
                f"{length}-byte header"
            )
        try:
            data = json.loads(raw)
            header = CaptureHeader(
                protocol=int(data.pop("protocol")),
                peer_version=int(data.pop("peer_version")),
                offered=int(data.pop("offered")),
                scheduler=str(data.pop("scheduler")),
                start=float(data.pop("start")),
                icetools=str(data.pop("icetools")),
                extra=data,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CaptureError(f"{self.path}: header is not valid ({e.__class__.__name__})") from None
        _check_protocol(self.path, header.protocol, "header")
        return header

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def warning(self) -> str | None:
        """One line for people when a torn tail was ignored, else None."""
        if not self.torn_bytes:
            return None
        return (
            f"{self.path}: kept {self.frames} frames, ignored {self.torn_bytes} trailing bytes "
            "of an incomplete record (the recorder was stopped while writing)"
        )

    def __iter__(self) -> Iterator[Record]:
        """Every record in order. This is the hot path under dump, replay and stats: it reads
        the file in blocks (so memory stays flat however large the file), checks the fixed record
        headers and builds each frame record in one call. When following, an incomplete tail is
        waited for instead of reported."""
        base, self._protocol, self.frames = self._start  # base: file offset of tail[0]
        self.ended = False
        tail = b""  # the start of a record whose end has not been read yet
        last_us = 0
        self._file.seek(base)
        while not self.ended:
            chunk = self._file.read(READ_BLOCK)
            if not chunk:
                if not self.follow:
                    break
                time.sleep(self.poll)
                continue
            data = tail + chunk if tail else chunk
            pos, last_us = yield from self._scan(data, 0, len(data), last_us, offset=base)
            tail = data[pos:]
            base += pos
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
        while pos + header_size <= end:
            kind, length, us = unpack_record(data, pos)
            body_start = pos + header_size
            body_end = body_start + length
            if kind == KIND_FRAME:
                if not 8 <= length <= MAX_FRAME_BODY or us < last_us:
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
                yield new(FrameRecord, (us / 1_000_000, body, self._protocol))
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
        """
        if self.follow:
            raise ValueError("pump() reads what is in the file; iterate a following reader")
        base, protocol, frames = self._start  # base: file offset of data[0]
        first_frames = frames
        undecodable = 0
        last_t: float | None = None
        limit = frames + max_frames if max_frames is not None else -1
        stop_after = float("inf") if until is None else until
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
        while not self.ended:
            chunk = read(READ_BLOCK)
            if not chunk:
                break
            data = tail + chunk if tail else chunk
            end = len(data)
            pos = 0
            while pos + record_header_size <= end:
                if pos + frame_header_size <= end:
                    kind, length, us, frame_length, type_word = frame_record(data, pos)
                else:  # a short record at the end of the block: no room for a frame header
                    kind, length, us = event_record(data, pos)
                    frame_length = type_word = -1
                body = pos + record_header_size
                stop = body + length
                if kind == 1:  # KIND_FRAME
                    if length > MAX_FRAME_BODY or length < 8 or us < last_us:
                        self.frames = frames
                        self._check_frame_record(base + pos, length, us, last_us)
                    if stop > end:
                        break
                    if frame_length + 4 != length:
                        self.frames = frames
                        self._corrupt(base + pos, "frame length prefix disagrees with its record")
                    t = us / 1_000_000
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
                self._check_event_record(base + pos, kind, length, us, last_us)
                if stop > end:
                    break
                if us / 1_000_000 > stop_after:
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
        if us < last_us:
            self._corrupt(where, "record time goes backwards")

    def _check_frame_record(self, where: int, length: int, us: int, last_us: int) -> None:
        """Raise for a frame record header that cannot be right (both readers' check)."""
        if not 8 <= length <= MAX_FRAME_BODY:
            self._corrupt(where, f"frame record of {length} bytes")
        if us < last_us:
            self._corrupt(where, "record time goes backwards")

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
        """A connect, disconnect or end record from its JSON body."""
        t = us / 1_000_000
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            self._corrupt(where, "event record is not a JSON object")
        try:
            if kind == KIND_CONNECT:
                record: Record = ConnectRecord(
                    t,
                    int(body["protocol"]),
                    int(body["peer_version"]),
                    int(body.get("offered", 0)),
                    str(body.get("scheduler", "")),
                    bool(body.get("reconnect", False)),
                )
            elif kind == KIND_DISCONNECT:
                record = DisconnectRecord(t, str(body.get("reason", "")))
            else:
                record = EndRecord(t, int(body.get("frames", 0)), str(body.get("reason", "")))
                self.ended = True
        except (KeyError, ValueError, TypeError):
            self._corrupt(where, "event record lacks its fields")
        if kind == KIND_CONNECT:
            _check_protocol(self.path, record.protocol, f"connect record at {t:.6f} s")
            self._protocol = record.protocol
        return record

    def _corrupt(self, pos: int, what: str) -> NoReturn:
        raise CaptureError(
            f"corrupt capture {self.path} at byte {pos}: {what} "
            f"(kept {self.frames} frames before it)"
        )


def _check_protocol(path: Path, protocol: int, where: str) -> None:
    if not MIN_PROTOCOL_VERSION <= protocol <= MAX_SANE_PROTOCOL:
        raise CaptureError(f"{path}: {where} names protocol {protocol}, which icecream never spoke")


def read_all(path: str | os.PathLike[str]) -> tuple[CaptureHeader, list[Record], CaptureReader]:
    """Convenience for tests and small files: the header, every record, and the reader."""
    with CaptureReader(path) as reader:
        return reader.header, list(reader), reader
