"""Every icecream message, at every protocol version from 21 to 44.

Each message is declared once, as a frozen dataclass whose fields carry their wire type and the
protocol version that introduced (``since``) or removed (``until``, exclusive) them. That one
declaration drives both directions: for each (message, version) pair a decoder and an encoder are
generated on first use and cached, so adding a field in a new protocol version is one line.

Wire facts (see docs/protocol-notes in the icecream sources and ``../shared/docs``):

* a frame is ``u32 L`` (big-endian, length of what follows), ``u32 type``, payload;
* integers are big-endian u32 (a few are signed); booleans are u32 0/1;
* a string is ``u32 n`` (byte length + 1), the bytes, one NUL;
* a strlist is a count then strings; an envlist a count then (platform, name) string pairs.

Strings are bytes on the wire. They are exposed as ``str`` decoded as UTF-8 with
``surrogateescape``, so any byte string (a Latin-1 file name, say) survives decode -> encode
unchanged.

Decoding is strict where icecream >= 1.2 is strict (a frame must be consumed exactly: missing or
trailing bytes are a :class:`~icetools.errors.DecodeError`), so ``encode(decode(frame)) == frame``
holds for every frame that decodes.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from .errors import DecodeError, FrameTooLarge, LocalProtocolError

#: Oldest protocol the scheduler accepts, and the newest one icecream has defined (HEAD).
MIN_PROTOCOL_VERSION = 21
PROTOCOL_VERSION = 44
#: Largest value of the frame length prefix icecream accepts (MAX_MSG_SIZE).
MAX_MSG_SIZE = 1 << 20


class MsgType(enum.IntEnum):
    """icecream's message type enum (services/comm.h); starts at 'A' and never reordered."""

    UNKNOWN = 0x41
    PING = 0x42
    END = 0x43
    TIMEOUT = 0x44
    GET_NATIVE_ENV = 0x45
    NATIVE_ENV = 0x46
    GET_CS = 0x47
    USE_CS = 0x48
    COMPILE_FILE = 0x49
    FILE_CHUNK = 0x4A
    COMPILE_RESULT = 0x4B
    JOB_BEGIN = 0x4C
    JOB_DONE = 0x4D
    JOB_LOCAL_BEGIN = 0x4E
    JOB_LOCAL_DONE = 0x4F
    LOGIN = 0x50
    STATS = 0x51
    MON_LOGIN = 0x52
    MON_GET_CS = 0x53
    MON_JOB_BEGIN = 0x54
    MON_JOB_DONE = 0x55
    MON_LOCAL_JOB_BEGIN = 0x56
    MON_STATS = 0x57
    TRANFER_ENV = 0x58  # sic: icecream's spelling
    TEXT = 0x59
    STATUS_TEXT = 0x5A
    GET_INTERNALS = 0x5B
    CS_CONF = 0x5C
    VERIFY_ENV = 0x5D
    VERIFY_ENV_RESULT = 0x5E
    BLACKLIST_HOST_ENV = 0x5F
    NO_CS = 0x60


class Lang(enum.IntEnum):
    """Values of the ``lang`` fields (3 is ObjC++ since icecream 1.2)."""

    C = 0
    CXX = 1
    OBJC = 2
    OBJCXX = 3
    CUSTOM = 4


LANG_NAMES = {0: "C", 1: "C++", 2: "ObjC", 3: "ObjC++", 4: "custom"}

#: JOB_DONE flag bits.
FROM_SUBMITTER = 1
UNKNOWN_JOB_ID = 2


class Kind(enum.Enum):
    """How a field is laid out on the wire."""

    U32 = "u32"
    INT = "int"  # signed 32-bit
    BOOL = "bool"  # u32, any non-zero is true
    STRING = "string"
    STRLIST = "strlist"
    ENVLIST = "envlist"


_DEFAULTS: dict[Kind, Any] = {
    Kind.U32: 0,
    Kind.INT: 0,
    Kind.BOOL: False,
    Kind.STRING: "",
    Kind.STRLIST: (),
    Kind.ENVLIST: (),
}


def _wire(kind: Kind, since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    """Declare a wire field: its layout and the protocol versions ``[since, until)`` that carry it."""
    return dataclasses.field(
        default=_DEFAULTS[kind], metadata={"kind": kind, "since": since, "until": until}
    )


def u32(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.U32, since, until)


def i32(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.INT, since, until)


def boolean(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.BOOL, since, until)


def string(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.STRING, since, until)


def strlist(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.STRLIST, since, until)


def envlist(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _wire(Kind.ENVLIST, since, until)


@dataclasses.dataclass(frozen=True, slots=True)
class WireField:
    name: str
    kind: Kind
    since: int
    until: int | None

    def present(self, protocol: int) -> bool:
        return self.since <= protocol and (self.until is None or protocol < self.until)


class Message:
    """Base of all messages. Subclasses are frozen, slotted dataclasses made by :func:`message`."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    #: Wire fields in wire order (fields of every version; filter with ``present``).
    FIELDS: ClassVar[tuple[WireField, ...]]

    @property
    def type(self) -> MsgType:
        return self.TYPE

    @property
    def type_name(self) -> str:
        return self.TYPE.name

    def pack(self, protocol: int) -> bytes:
        """The whole frame (length prefix included) for a channel at ``protocol``."""
        return encode(self, protocol)

    def fields(self, protocol: int | None = None) -> dict[str, Any]:
        """Field values by icecream's names, only those on the wire at ``protocol`` if given."""
        return {
            f.name: getattr(self, f.name)
            for f in self.FIELDS
            if protocol is None or f.present(protocol)
        }


MESSAGE_CLASSES: dict[int, type[Message]] = {}


def message(type_: MsgType) -> Callable[[type], type[Message]]:
    """Class decorator: make a frozen slotted dataclass message of ``type_`` and register it."""

    def wrap(cls: type) -> type[Message]:
        cls = dataclasses.dataclass(frozen=True, slots=True, repr=True)(cls)
        cls.TYPE = type_
        cls.FIELDS = tuple(
            WireField(f.name, f.metadata["kind"], f.metadata["since"], f.metadata["until"])
            for f in dataclasses.fields(cls)
            if "kind" in f.metadata
        )
        MESSAGE_CLASSES[type_] = cls
        return cls

    return wrap


# --------------------------------------------------------------------------------------------
# The messages, in enum order. Field names are icecream's, in snake_case.


@message(MsgType.UNKNOWN)
class Unknown(Message):
    """Never valid on the wire; icecream closes a channel that receives it."""


@message(MsgType.PING)
class Ping(Message):
    """Scheduler liveness probe, only used by channels below protocol 27."""


@message(MsgType.END)
class End(Message):
    """End of a file-chunk stream; sent to the scheduler it means "closing"."""


@message(MsgType.TIMEOUT)
class Timeout(Message):
    """Never valid on the wire."""


@message(MsgType.GET_NATIVE_ENV)
class GetNativeEnv(Message):
    compiler: str = string(since=32)
    extrafiles: tuple[str, ...] = strlist(since=32)
    compression: str = string(since=42)


@message(MsgType.NATIVE_ENV)
class NativeEnv(Message):
    native_version: str = string()


@message(MsgType.GET_CS)
class GetCS(Message):
    versions: tuple[tuple[str, str], ...] = envlist()
    filename: str = string()
    lang: int = u32()
    count: int = u32()
    target: str = string()
    arg_flags: int = u32()
    client_id: int = u32()
    preferred_host: str = string(since=22)
    unverified_flag: int = u32(since=31)
    minimal_host_version: int = i32(since=34)
    client_count: int = u32(since=39)
    required_features: int = u32(since=42)
    niceness: int = u32(since=43)


@message(MsgType.USE_CS)
class UseCS(Message):
    job_id: int = u32()
    port: int = u32()
    hostname: str = string()
    host_platform: str = string()
    got_env: int = u32()
    client_id: int = u32()
    matched_job_id: int = u32(since=28)


@message(MsgType.COMPILE_FILE)
class CompileFile(Message):
    lang: int = u32()
    job_id: int = u32()
    args: tuple[str, ...] = strlist(since=41)
    remote_args: tuple[str, ...] = strlist(until=41)
    rest_args: tuple[str, ...] = strlist(until=41)
    environment_version: str = string()
    target: str = string()
    compiler_name: str = string(since=30)
    input_file: str = string(since=34)
    working_directory: str = string(since=34)
    output_file: str = string(since=35)
    dwarf_fission: bool = boolean(since=35)


@message(MsgType.FILE_CHUNK)
class FileChunk(Message):
    """A (compressed) piece of a file. ``compressed_len`` on the wire is ``len(data)``."""

    uncompressed_len: int = u32()
    compression: int = u32(since=40)  # 0 LZO, 1 ZSTD; LZO implied below 40
    data: bytes = b""


@message(MsgType.COMPILE_RESULT)
class CompileResult(Message):
    err: str = string()
    out: str = string()
    status: int = i32()
    was_out_of_memory: bool = boolean()
    have_dwo_file: bool = boolean(since=35)


@message(MsgType.JOB_BEGIN)
class JobBegin(Message):
    job_id: int = u32()
    stime: int = u32()
    client_count: int = u32(since=39)


@message(MsgType.JOB_DONE)
class JobDone(Message):
    job_id: int = u32()
    exitcode: int = i32()
    real_msec: int = u32()
    user_msec: int = u32()
    sys_msec: int = u32()
    pfaults: int = u32()
    in_compressed: int = u32()
    in_uncompressed: int = u32()
    out_compressed: int = u32()
    out_uncompressed: int = u32()
    flags: int = u32()
    client_count: int = u32(since=39)


@message(MsgType.JOB_LOCAL_BEGIN)
class JobLocalBegin(Message):
    stime: int = u32()
    outfile: str = string()
    id: int = u32()
    fulljob: bool = boolean(since=44)


@message(MsgType.JOB_LOCAL_DONE)
class JobLocalDone(Message):
    job_id: int = u32()


@message(MsgType.LOGIN)
class Login(Message):
    port: int = u32()
    max_kids: int = u32()
    envs: tuple[tuple[str, str], ...] = envlist()
    nodename: str = string()
    host_platform: str = string()
    chroot_possible: bool = boolean()
    noremote: bool = boolean(since=26)
    supported_features: int = u32(since=42)


@message(MsgType.STATS)
class Stats(Message):
    load: int = u32()
    load_avg1: int = u32()
    load_avg5: int = u32()
    load_avg10: int = u32()
    free_mem: int = u32()


@message(MsgType.MON_LOGIN)
class MonLogin(Message):
    """A monitor's first (and only) message to the scheduler."""


@message(MsgType.MON_GET_CS)
class MonGetCS(Message):
    """A job was requested. Below protocol 29 the body is a whole GET_CS plus job and host id.

    ``client_id`` is the *host id of the submitting daemon* (icecream's ``clientid``); the GET_CS
    client id embedded in the old layout is ``request_client_id``.
    """

    versions: tuple[tuple[str, str], ...] = envlist(until=29)
    filename: str = string()
    lang: int = u32()
    count: int = u32(until=29)
    target: str = string(until=29)
    arg_flags: int = u32(until=29)
    request_client_id: int = u32(until=29)
    preferred_host: str = string(since=22, until=29)
    job_id: int = u32()
    client_id: int = u32()
    #: The type word the frame carried: 0x53, or 0x47 from a HEAD scheduler (see decode()).
    type_word: int = dataclasses.field(default=MsgType.MON_GET_CS, compare=False, repr=False)


@message(MsgType.MON_JOB_BEGIN)
class MonJobBegin(Message):
    job_id: int = u32()
    stime: int = u32()
    host_id: int = u32()


@message(MsgType.MON_JOB_DONE)
class MonJobDone(Message):
    """A job ended (the JOB_DONE layout). Exit code 255 with zero counters: its host went away."""

    job_id: int = u32()
    exitcode: int = i32()
    real_msec: int = u32()
    user_msec: int = u32()
    sys_msec: int = u32()
    pfaults: int = u32()
    in_compressed: int = u32()
    in_uncompressed: int = u32()
    out_compressed: int = u32()
    out_uncompressed: int = u32()
    flags: int = u32()
    client_count: int = u32(since=39)
    #: The type word the frame carried: 0x55, or 0x4D from a HEAD scheduler (see decode()).
    type_word: int = dataclasses.field(default=MsgType.MON_JOB_DONE, compare=False, repr=False)


@message(MsgType.MON_LOCAL_JOB_BEGIN)
class MonLocalJobBegin(Message):
    host_id: int = u32()
    job_id: int = u32()
    stime: int = u32()
    file: str = string()


@message(MsgType.MON_STATS)
class MonStats(Message):
    """A host's state as ``Key:Value`` lines; ``State:Offline`` alone when it left."""

    host_id: int = u32()
    statmsg: str = string()

    @property
    def stats(self) -> dict[str, str]:
        return parse_statmsg(self.statmsg)

    @property
    def offline(self) -> bool:
        return self.statmsg.startswith("State:Offline")


@message(MsgType.TRANFER_ENV)
class TranferEnv(Message):
    name: str = string()
    target: str = string()


@message(MsgType.TEXT)
class Text(Message):
    """A line of the scheduler's text (control) port. It has no binary-channel encoding."""

    text: str = string()


@message(MsgType.STATUS_TEXT)
class StatusText(Message):
    text: str = string()


@message(MsgType.GET_INTERNALS)
class GetInternals(Message):
    pass


@message(MsgType.CS_CONF)
class CSConf(Message):
    max_scheduler_pong: int = u32()
    max_scheduler_ping: int = u32()
    bench_source: str = string()


@message(MsgType.VERIFY_ENV)
class VerifyEnv(Message):
    environment: str = string()
    target: str = string()


@message(MsgType.VERIFY_ENV_RESULT)
class VerifyEnvResult(Message):
    ok: bool = boolean()


@message(MsgType.BLACKLIST_HOST_ENV)
class BlacklistHostEnv(Message):
    environment: str = string()
    target: str = string()
    hostname: str = string()


@message(MsgType.NO_CS)
class NoCS(Message):
    job_id: int = u32()
    client_id: int = u32()


# Seed (pyicemon) name for the monitor login.
LoginMessage = MonLogin

# --------------------------------------------------------------------------------------------
# MON_STATS bodies


def parse_statmsg(text: str) -> dict[str, str]:
    """Parse ``Key:Value\\n`` lines. Unknown keys are kept; a value may itself contain ':'."""
    result: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, _, value = line.partition(":")
        result[key] = value
    return result


def format_statmsg(stats: Mapping[str, object]) -> str:
    """The inverse of :func:`parse_statmsg`, in the mapping's order."""
    return "".join(f"{key}:{value}\n" for key, value in stats.items())


# --------------------------------------------------------------------------------------------
# Primitive encoders (used by the generated encoders and by FILE_CHUNK)

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">II")


def _enc_string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return _U32.pack(len(raw) + 1) + raw + b"\0"


def _enc_strlist(values: tuple[str, ...]) -> bytes:
    return _U32.pack(len(values)) + b"".join(_enc_string(v) for v in values)


def _enc_envlist(values: tuple[tuple[str, str], ...]) -> bytes:
    return _U32.pack(len(values)) + b"".join(
        _enc_string(platform) + _enc_string(name) for platform, name in values
    )


# Primitive decoders for the variable-length kinds. Each takes (frame, pos) and returns
# (value, new_pos); the frame is exactly one frame, so its end is len(frame).


def _dec_string(frame: bytes, pos: int) -> tuple[str, int]:
    end = len(frame)
    if pos + 4 > end:
        raise _Short(pos, 4)
    (n,) = _U32.unpack_from(frame, pos)
    pos += 4
    if n == 0:
        raise _Bad(pos - 4, "string length 0 (must count its NUL terminator)")
    if pos + n > end:
        raise _Short(pos, n)
    stop = pos + n - 1
    if frame[stop] != 0:
        raise _Bad(stop, "string is not NUL-terminated")
    raw = frame[pos:stop]
    if b"\0" in raw:
        raise _Bad(pos, "string contains a NUL byte")
    return raw.decode("utf-8", "surrogateescape"), stop + 1


def _dec_count(frame: bytes, pos: int, min_item: int) -> tuple[int, int]:
    if pos + 4 > len(frame):
        raise _Short(pos, 4)
    (count,) = _U32.unpack_from(frame, pos)
    # Bound the count by what the frame could hold before looping (icecream does not).
    if count * min_item > len(frame) - pos - 4:
        raise _Bad(pos, f"list count {count} cannot fit in the {len(frame) - pos - 4} bytes left")
    return count, pos + 4


def _dec_strlist(frame: bytes, pos: int) -> tuple[tuple[str, ...], int]:
    count, pos = _dec_count(frame, pos, 5)
    items = []
    for _ in range(count):
        item, pos = _dec_string(frame, pos)
        items.append(item)
    return tuple(items), pos


def _dec_envlist(frame: bytes, pos: int) -> tuple[tuple[tuple[str, str], ...], int]:
    count, pos = _dec_count(frame, pos, 10)
    items = []
    for _ in range(count):
        platform, pos = _dec_string(frame, pos)
        name, pos = _dec_string(frame, pos)
        items.append((platform, name))
    return tuple(items), pos


class _Short(Exception):
    """Internal: the frame ended at ``pos`` while ``need`` more bytes were expected."""

    def __init__(self, pos: int, need: int) -> None:
        self.pos, self.need = pos, need


class _Bad(Exception):
    """Internal: malformed value at ``pos``."""

    def __init__(self, pos: int, what: str) -> None:
        self.pos, self.what = pos, what


# --------------------------------------------------------------------------------------------
# Generated codecs

_FIXED_CODE = {Kind.U32: "I", Kind.INT: "i", Kind.BOOL: "I"}
_VAR_DECODER = {Kind.STRING: "_dec_string", Kind.STRLIST: "_dec_strlist", Kind.ENVLIST: "_dec_envlist"}
_VAR_ENCODER = {Kind.STRING: "_enc_string", Kind.STRLIST: "_enc_strlist", Kind.ENVLIST: "_enc_envlist"}

Decoder = Callable[[bytes], Message]
Encoder = Callable[[Message], bytes]
_decoders: dict[tuple[type[Message], int], Decoder] = {}
_encoders: dict[tuple[type[Message], int], Encoder] = {}


def _runs(fields: list[WireField]) -> Iterator[tuple[str, list[WireField]]]:
    """Group consecutive fixed-size fields into one struct run; variable fields stand alone."""
    run: list[WireField] = []
    for f in fields:
        if f.kind in _FIXED_CODE:
            run.append(f)
            continue
        if run:
            yield "fixed", run
            run = []
        yield "var", [f]
    if run:
        yield "fixed", run


def _build_decoder(cls: type[Message], protocol: int) -> Decoder:
    """Generate ``decode(frame) -> message`` for one message class at one protocol version.

    The generated code unpacks runs of integers with one precompiled struct each and assigns
    slots directly (bypassing the frozen dataclass ``__init__``), which is what makes decoding a
    million frames a second possible in pure Python.
    """
    fields = [f for f in cls.FIELDS if f.present(protocol)]
    namespace: dict[str, Any] = {
        "_dec_string": _dec_string,
        "_dec_strlist": _dec_strlist,
        "_dec_envlist": _dec_envlist,
        "_Short": _Short,
        "_new": object.__new__,
        "_cls": cls,
        "_struct_error": struct.error,
    }
    lines = ["def decode(frame):", "    pos = 8", "    end = len(frame)"]
    for i, (what, run) in enumerate(_runs(fields)):
        if what == "fixed":
            st = struct.Struct(">" + "".join(_FIXED_CODE[f.kind] for f in run))
            namespace[f"_st{i}"] = st
            names = ", ".join(f"v_{f.name}" for f in run)
            lines += [
                f"    if pos + {st.size} > end: raise _Short(pos, {st.size})",
                f"    {names}, = _st{i}.unpack_from(frame, pos)",
                f"    pos += {st.size}",
            ]
            lines += [f"    v_{f.name} = v_{f.name} != 0" for f in run if f.kind is Kind.BOOL]
        else:
            f = run[0]
            lines.append(f"    v_{f.name}, pos = {_VAR_DECODER[f.kind]}(frame, pos)")
    lines.append("    if pos != end: return pos")
    lines.append("    msg = _new(_cls)")
    # Every dataclass field gets a value: the wire's, or the declared default for fields the
    # protocol version lacks (and for non-wire fields such as type_word).
    wire_names = {f.name for f in fields}
    for i, dfield in enumerate(dataclasses.fields(cls)):
        setter = f"_set{i}"
        namespace[setter] = getattr(cls, dfield.name).__set__
        if dfield.name in wire_names:
            lines.append(f"    {setter}(msg, v_{dfield.name})")
        else:
            namespace[f"_default{i}"] = dfield.default
            lines.append(f"    {setter}(msg, _default{i})")
    lines.append("    return msg")
    exec("\n".join(lines), namespace)  # noqa: S102 - source built only from our declarations
    return namespace["decode"]


def _build_encoder(cls: type[Message], protocol: int) -> Encoder:
    fields = [f for f in cls.FIELDS if f.present(protocol)]
    namespace: dict[str, Any] = {
        "_enc_string": _enc_string,
        "_enc_strlist": _enc_strlist,
        "_enc_envlist": _enc_envlist,
    }
    parts = []
    for i, (what, run) in enumerate(_runs(fields)):
        if what == "fixed":
            st = struct.Struct(">" + "".join(_FIXED_CODE[f.kind] for f in run))
            namespace[f"_st{i}"] = st
            args = ", ".join(
                f"int(msg.{f.name})" if f.kind is Kind.BOOL else f"msg.{f.name}" for f in run
            )
            parts.append(f"_st{i}.pack({args})")
        else:
            f = run[0]
            parts.append(f"{_VAR_ENCODER[f.kind]}(msg.{f.name})")
    body = " + ".join(parts) if parts else "b''"
    exec(f"def encode(msg):\n    return {body}\n", namespace)  # noqa: S102
    return namespace["encode"]


def _decode_file_chunk(protocol: int) -> Decoder:
    def decode(frame: bytes) -> Message:
        head = ">III" if protocol >= 40 else ">II"
        size = struct.calcsize(head)
        if len(frame) < 8 + size:
            raise _Short(8, size)
        values = struct.unpack_from(head, frame, 8)
        uncompressed_len, compressed_len = values[0], values[1]
        compression = values[2] if protocol >= 40 else 0
        start = 8 + size
        if start + compressed_len != len(frame):
            if start + compressed_len > len(frame):
                raise _Short(start, compressed_len)
            return start + compressed_len  # trailing bytes
        return FileChunk(uncompressed_len, compression, bytes(frame[start:]))

    return decode


def _encode_file_chunk(protocol: int) -> Encoder:
    def encode(msg: Message) -> bytes:
        assert isinstance(msg, FileChunk)
        if protocol >= 40:
            head = struct.pack(">III", msg.uncompressed_len, len(msg.data), msg.compression)
        else:
            head = struct.pack(">II", msg.uncompressed_len, len(msg.data))
        return head + msg.data

    return encode


def decoder_for(cls: type[Message], protocol: int) -> Decoder:
    key = (cls, protocol)
    dec = _decoders.get(key)
    if dec is None:
        dec = _decode_file_chunk(protocol) if cls is FileChunk else _build_decoder(cls, protocol)
        _decoders[key] = dec
    return dec


def encoder_for(cls: type[Message], protocol: int) -> Encoder:
    key = (cls, protocol)
    enc = _encoders.get(key)
    if enc is None:
        enc = _encode_file_chunk(protocol) if cls is FileChunk else _build_encoder(cls, protocol)
        _encoders[key] = enc
    return enc


# --------------------------------------------------------------------------------------------
# Frames

#: On a monitor connection a scheduler built from icecream HEAD (after release 1.4) puts the
#: GET_CS and JOB_DONE type words on MON_GET_CS and MON_JOB_DONE frames (a constructor
#: refactoring bug). A scheduler never sends a monitor real GET_CS or JOB_DONE messages, so on a
#: monitor connection these type words are read as the monitor messages they really are.
MONITOR_TYPE_ALIASES: dict[int, type[Message]] = {MsgType.GET_CS: MonGetCS, MsgType.JOB_DONE: MonJobDone}


def _check_protocol(protocol: int) -> None:
    if not MIN_PROTOCOL_VERSION <= protocol:
        raise LocalProtocolError(
            f"protocol {protocol} is below icecream's minimum {MIN_PROTOCOL_VERSION}"
        )


def frame_type(frame: bytes) -> int:
    """The type word of a whole frame (0 when the frame is too short to have one)."""
    return _U32.unpack_from(frame, 4)[0] if len(frame) >= 8 else 0


def decode(frame: bytes, protocol: int, *, monitor: bool = True) -> Message:
    """Decode one whole frame (length prefix included) sent on a channel at ``protocol``.

    ``monitor`` says the frame came from a scheduler to a monitor, where the HEAD type words
    0x47/0x4D mean MON_GET_CS/MON_JOB_DONE (see :data:`MONITOR_TYPE_ALIASES`).
    Raises :class:`DecodeError` (or :class:`FrameTooLarge`) for anything that is not exactly one
    valid frame.
    """
    size = len(frame)
    if size < 8:
        raise DecodeError(f"frame of {size} bytes is shorter than the 8-byte frame header")
    length, type_word = _HEADER.unpack_from(frame, 0)
    if length > MAX_MSG_SIZE:
        raise FrameTooLarge(f"frame length {length} exceeds icecream's maximum {MAX_MSG_SIZE}")
    if length != size - 4:
        raise DecodeError(f"frame length prefix says {length} bytes but {size - 4} follow it")
    cls = MONITOR_TYPE_ALIASES.get(type_word) if monitor else None
    if cls is None:
        cls = MESSAGE_CLASSES.get(type_word)
        if cls is None:
            raise DecodeError(f"unknown message type 0x{type_word:02X} in a frame of {size} bytes")
    if cls is Text:
        raise DecodeError("TEXT (0x59) belongs to the text port and cannot appear in a binary frame")
    try:
        result = decoder_for(cls, protocol)(frame)
    except _Short as e:
        raise DecodeError(
            f"{cls.TYPE.name} (protocol {protocol}) ends at byte {size}, "
            f"field at byte {e.pos} needs {e.need}"
        ) from None
    except _Bad as e:
        raise DecodeError(f"{cls.TYPE.name} (protocol {protocol}): {e.what} at byte {e.pos}") from None
    if isinstance(result, int):
        raise DecodeError(
            f"{cls.TYPE.name} (protocol {protocol}) has {size - result} trailing bytes "
            f"after its last field at byte {result}"
        )
    if type_word != cls.TYPE:
        # Keep the odd type word so that re-encoding gives back the very same frame.
        object.__setattr__(result, "type_word", type_word)
    return result


def encode(msg: Message, protocol: int) -> bytes:
    """The whole frame for ``msg`` at ``protocol``: exactly the fields that version carries."""
    if isinstance(msg, Text):
        raise LocalProtocolError("TEXT has no binary encoding; use text_line() on the text port")
    _check_protocol(protocol)
    payload = encoder_for(type(msg), protocol)(msg)
    length = len(payload) + 4
    if length > MAX_MSG_SIZE:
        raise LocalProtocolError(
            f"{msg.TYPE.name} would be {length} bytes, over icecream's maximum {MAX_MSG_SIZE}"
        )
    type_word = getattr(msg, "type_word", msg.TYPE)
    return _HEADER.pack(length, type_word) + payload


def text_line(msg: Text) -> bytes:
    """A TEXT message as the scheduler's text port sends it: the text and a newline."""
    raw = msg.text.encode("utf-8", "surrogateescape")
    return raw if raw.endswith(b"\n") else raw + b"\n"


def unpack(wire_data: bytes, protocol: int = PROTOCOL_VERSION) -> Message:
    """pyicemon's name for :func:`decode` on a monitor connection."""
    return decode(wire_data, protocol)


def shorten_filename(name: str) -> str:
    """icecream's ``shorten_filename``: keep the last three path components, quirks included."""
    p = name.rfind("/")
    for _ in range(2):
        if p != -1:
            p = name.rfind("/", 0, p) if p > 0 else name.rfind("/")
    return name[p + 1 :]
