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
import operator
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
    BYTES = "bytes"  # FILE_CHUNK data only


_DEFAULTS: dict[Kind, Any] = {
    Kind.U32: 0,
    Kind.INT: 0,
    Kind.BOOL: False,
    Kind.STRING: "",
    Kind.STRLIST: (),
    Kind.ENVLIST: (),
    Kind.BYTES: b"",
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    """What a field declaration (``u32()``, ``string(since=22)``, ...) stands for."""

    kind: Kind
    since: int
    until: int | None


def u32(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.U32, since, until)


def i32(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.INT, since, until)


def boolean(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.BOOL, since, until)


def string(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.STRING, since, until)


def strlist(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.STRLIST, since, until)


def envlist(since: int = MIN_PROTOCOL_VERSION, until: int | None = None) -> Any:
    return _Spec(Kind.ENVLIST, since, until)


def raw_bytes() -> Any:
    """FILE_CHUNK's data: its length is a field of its own, so it has a codec of its own."""
    return _Spec(Kind.BYTES, MIN_PROTOCOL_VERSION, None)


@dataclasses.dataclass(frozen=True, slots=True)
class WireField:
    name: str
    kind: Kind
    since: int
    until: int | None

    def present(self, protocol: int) -> bool:
        return self.since <= protocol and (self.until is None or protocol < self.until)

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.kind]


class Message(tuple):
    """Base of all messages: immutable tuples of their field values, in declaration order.

    Messages are tuples (like ``typing.NamedTuple``) rather than dataclasses because decoding
    then builds each one with a single C call; that is most of what makes icetools decode a
    million frames a second. They behave as frozen records: fields by name, keyword
    construction with defaults, ``replace()``, equality by message type and values.
    """

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    #: The type word this class is sent with (differs from TYPE only for HEAD's misnumbering).
    TYPE_WORD: ClassVar[int]
    #: Wire fields in wire order (fields of every version; filter with ``present``).
    FIELDS: ClassVar[tuple[WireField, ...]] = ()

    @property
    def type(self) -> MsgType:
        return self.TYPE

    @property
    def type_name(self) -> str:
        return self.TYPE.name

    @property
    def type_word(self) -> int:
        return self.TYPE_WORD

    def pack(self, protocol: int) -> bytes:
        """The whole frame (length prefix included) for a channel at ``protocol``."""
        return encode(self, protocol)

    def fields(self, protocol: int | None = None) -> dict[str, Any]:
        """Field values by icecream's names, only those on the wire at ``protocol`` if given."""
        return {
            f.name: value
            for f, value in zip(self.FIELDS, self)
            if protocol is None or f.present(protocol)
        }

    def replace(self, **changes: Any) -> Message:
        """A copy with some fields changed."""
        values = self.fields()
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {sorted(unknown)[0]!r}")
        values.update(changes)
        return tuple.__new__(type(self), tuple(values.values()))

    def __eq__(self, other: object) -> bool:
        # Not NotImplemented for plain tuples: tuple's own reflected == would then say equal.
        if not isinstance(other, Message):
            return False
        return self.TYPE is other.TYPE and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((self.TYPE, tuple(self)))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={value!r}" for f, value in zip(self.FIELDS, self))
        return f"{type(self).__name__}({inner})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


MESSAGE_CLASSES: dict[int, type[Message]] = {}


def message(type_: MsgType, *, layout: type[Message] | None = None) -> Callable[[type], type[Message]]:
    """Class decorator: turn a declaration into a message class of ``type_`` and register it.

    The declaration lists fields as annotated class attributes whose values say the wire type
    and versions (``job_id: int = u32()``); methods and properties are kept. ``layout`` reuses
    another message's fields (MON_JOB_DONE is a forwarded JOB_DONE).
    """

    def wrap(decl: type) -> type[Message]:
        annotations = decl.__dict__.get("__annotations__", {})
        fields = layout.FIELDS if layout is not None else tuple(
            WireField(name, spec.kind, spec.since, spec.until)
            for name in annotations
            if isinstance(spec := decl.__dict__.get(name), _Spec)
        )
        namespace: dict[str, Any] = {
            key: value
            for key, value in decl.__dict__.items()
            if key not in annotations and key not in ("__dict__", "__weakref__", "__annotations__")
        }
        namespace.update(__slots__=(), TYPE=type_, TYPE_WORD=int(type_), FIELDS=fields)
        for i, f in enumerate(fields):
            namespace[f.name] = property(operator.itemgetter(i), doc=f"{f.kind.value} field")
        # __new__ with keyword arguments and defaults, generated so that it is one plain call.
        params = ", ".join(f"{f.name}=_d{i}" for i, f in enumerate(fields))
        values = "".join(f"{f.name}, " for f in fields)
        source = f"def __new__(cls, {params}):\n    return _new(cls, ({values}))\n"
        scope: dict[str, Any] = {"_new": tuple.__new__}
        scope.update({f"_d{i}": f.default for i, f in enumerate(fields)})
        exec(source, scope)  # noqa: S102 - source built only from our declarations
        namespace["__new__"] = scope["__new__"]
        cls = type(decl.__name__, (Message,), namespace)
        cls.__module__ = decl.__module__
        cls.__qualname__ = decl.__qualname__
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
    data: bytes = raw_bytes()


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


@message(MsgType.MON_JOB_BEGIN)
class MonJobBegin(Message):
    job_id: int = u32()
    stime: int = u32()
    host_id: int = u32()


@message(MsgType.MON_JOB_DONE, layout=JobDone)
class MonJobDone(Message):
    """A job ended: exactly the JOB_DONE layout, forwarded. Exit code 255 with zero counters:
    its host went away."""


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


class MonGetCSHead(MonGetCS):
    """MON_GET_CS as a scheduler built from icecream HEAD sends it: with GET_CS's type word."""

    __slots__ = ()
    TYPE_WORD = MsgType.GET_CS


class MonJobDoneHead(MonJobDone):
    """MON_JOB_DONE as a scheduler built from icecream HEAD sends it: with JOB_DONE's type word."""

    __slots__ = ()
    TYPE_WORD = MsgType.JOB_DONE


# Seed (pyicemon) name for the monitor login.
LoginMessage = MonLogin

# --------------------------------------------------------------------------------------------
# MON_STATS bodies


def parse_statmsg(text: str) -> dict[str, str]:
    """Parse ``Key:Value\\n`` lines. Unknown keys are kept; a value may itself contain ':'."""
    return {key: value for key, _, value in (line.partition(":") for line in text.split("\n") if line)}


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


# Primitive decoders for the variable-length kinds. Each takes (buf, pos, end), the frame being
# buf[:end], and returns (value, new_pos). Strings are decoded inline by the generated decoders;
# these serve the lists.


def _dec_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos + 4 > end:
        raise _Short(pos, 4)
    (n,) = _U32.unpack_from(buf, pos)
    pos += 4
    if n == 0:
        raise _Bad(pos - 4, "string length 0 (must count its NUL terminator)")
    if pos + n > end:
        raise _Short(pos, n)
    stop = pos + n - 1
    if buf[stop] != 0:
        raise _Bad(stop, "string is not NUL-terminated")
    raw = buf[pos:stop]
    if 0 in raw:
        raise _Bad(pos, "string contains a NUL byte")
    return raw.decode("utf-8", "surrogateescape"), stop + 1


def _dec_count(buf: bytes, pos: int, end: int, min_item: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise _Short(pos, 4)
    (count,) = _U32.unpack_from(buf, pos)
    # Bound the count by what the frame could hold before looping (icecream does not).
    if count * min_item > end - pos - 4:
        raise _Bad(pos, f"list count {count} cannot fit in the {end - pos - 4} bytes left")
    return count, pos + 4


def _dec_strlist(buf: bytes, pos: int, end: int) -> tuple[tuple[str, ...], int]:
    count, pos = _dec_count(buf, pos, end, 5)
    items = []
    for _ in range(count):
        item, pos = _dec_string(buf, pos, end)
        items.append(item)
    return tuple(items), pos


def _dec_envlist(buf: bytes, pos: int, end: int) -> tuple[tuple[tuple[str, str], ...], int]:
    count, pos = _dec_count(buf, pos, end, 10)
    items = []
    for _ in range(count):
        platform, pos = _dec_string(buf, pos, end)
        name, pos = _dec_string(buf, pos, end)
        items.append((platform, name))
    return tuple(items), pos


#: The generated decoders' inline string decoding: the same checks as _dec_string, without
#: a call per string. ``{v}`` is the variable to set. (``0 in raw`` is a memchr; ``b"\0" in
#: raw`` would be a general substring search, ten times slower on short strings.)
_STRING_SOURCE = """\
    if pos + 4 > end: raise _Short(pos, 4)
    n, = _u32(buf, pos)
    pos += 4
    if n == 0: raise _Bad(pos - 4, "string length 0 (must count its NUL terminator)")
    stop = pos + n - 1
    if stop >= end: raise _Short(pos, n)
    if buf[stop]: raise _Bad(stop, "string is not NUL-terminated")
    raw = buf[pos:stop]
    if 0 in raw: raise _Bad(pos, "string contains a NUL byte")
    try:
        {v} = raw.decode()
    except UnicodeDecodeError:
        {v} = raw.decode("utf-8", "surrogateescape")
    pos = stop + 1
"""


class MalformedFrame(Exception):
    """Raised by the generated decoders (see :data:`Decoder`) for a frame whose fields do not
    parse; :func:`decode` turns it into a :class:`DecodeError` that says why and where."""


class _Short(MalformedFrame):
    """Internal: the frame ended at ``pos`` while ``need`` more bytes were expected."""

    def __init__(self, pos: int, need: int) -> None:
        self.pos, self.need = pos, need


class _Bad(MalformedFrame):
    """Internal: malformed value at ``pos``."""

    def __init__(self, pos: int, what: str) -> None:
        self.pos, self.what = pos, what


# --------------------------------------------------------------------------------------------
# Generated codecs

_FIXED_CODE = {Kind.U32: "I", Kind.INT: "i", Kind.BOOL: "I"}
_VAR_DECODER = {Kind.STRLIST: "_dec_strlist", Kind.ENVLIST: "_dec_envlist"}
_VAR_ENCODER = {Kind.STRING: "_enc_string", Kind.STRLIST: "_enc_strlist", Kind.ENVLIST: "_enc_envlist"}

#: ``decode(buf, pos, end)``: the message in the frame ``buf[pos:end]`` (its length prefix and
#: type word included), or an int (where its fields ended) when the frame has trailing bytes. It
#: raises _Short or _Bad with positions in ``buf``. Taking offsets lets a reader decode frames
#: where they lie in a block of the file, without copying each one out first.
Decoder = Callable[[bytes, int, int], "Message | int"]
Encoder = Callable[[Message], bytes]
_decoders: dict[tuple[type[Message], int, bool], Decoder] = {}
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


def _build_decoder(cls: type[Message], protocol: int, fields_only: bool = False) -> Decoder:
    """Generate ``decode(buf, pos, end)`` for one message class at one protocol version.

    The generated code unpacks runs of integers with one precompiled struct each, decodes
    strings inline and builds the message tuple in one call. Fields the version lacks get their
    defaults. With ``fields_only`` it returns the plain tuple of field values, in the class's
    field order, without making it a message (a third of the cost of a small message).
    """
    fields = [f for f in cls.FIELDS if f.present(protocol)]
    namespace: dict[str, Any] = {
        "_dec_strlist": _dec_strlist,
        "_dec_envlist": _dec_envlist,
        "_Short": _Short,
        "_Bad": _Bad,
        "_u32": _U32.unpack_from,
        "_new": tuple.__new__,
        "_cls": cls,
    }
    runs = list(_runs(fields))
    lines = ["def decode(buf, pos, end):"]
    if (
        len(runs) == 1
        and runs[0][0] == "fixed"
        and len(fields) == len(cls.FIELDS)
        and not any(f.kind is Kind.BOOL for f in fields)
    ):
        # The common monitor case (MON_JOB_BEGIN, MON_JOB_DONE, JOB_LOCAL_DONE): one struct.
        st = struct.Struct(">" + "".join(_FIXED_CODE[f.kind] for f in fields))
        namespace["_unpack"] = st.unpack_from
        lines += [
            f"    if end - pos != {8 + st.size}:",
            f"        if end - pos < {8 + st.size}: raise _Short(pos + 8, {st.size})",
            f"        return pos + {8 + st.size}",
            "    return _unpack(buf, pos + 8)" if fields_only else "    return _new(_cls, _unpack(buf, pos + 8))",
        ]
    else:
        lines += ["    pos += 8"]
        for i, (what, run) in enumerate(runs):
            if what == "fixed":
                st = struct.Struct(">" + "".join(_FIXED_CODE[f.kind] for f in run))
                namespace[f"_st{i}"] = st.unpack_from
                names = ", ".join(f"v_{f.name}" for f in run)
                lines += [
                    f"    if pos + {st.size} > end: raise _Short(pos, {st.size})",
                    f"    {names}, = _st{i}(buf, pos)",
                    f"    pos += {st.size}",
                ]
                lines += [f"    v_{f.name} = v_{f.name} != 0" for f in run if f.kind is Kind.BOOL]
            elif run[0].kind is Kind.STRING:
                lines.append(_STRING_SOURCE.format(v=f"v_{run[0].name}").rstrip("\n"))
            else:
                f = run[0]
                lines.append(f"    v_{f.name}, pos = {_VAR_DECODER[f.kind]}(buf, pos, end)")
        lines.append("    if pos != end: return pos")
        wire_names = {f.name for f in fields}
        values = []
        for i, f in enumerate(cls.FIELDS):
            if f.name in wire_names:
                values.append(f"v_{f.name}")
            else:
                namespace[f"_d{i}"] = f.default
                values.append(f"_d{i}")
        values_tuple = f"({''.join(v + ', ' for v in values)})"
        lines.append(f"    return {values_tuple}" if fields_only else f"    return _new(_cls, {values_tuple})")
    exec("\n".join(lines), namespace)  # noqa: S102 - source built only from our declarations
    return namespace["decode"]


def _build_encoder(cls: type[Message], protocol: int) -> Encoder:
    fields = [f for f in cls.FIELDS if f.present(protocol)]
    index = {f.name: i for i, f in enumerate(cls.FIELDS)}
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
                f"int(msg[{index[f.name]}])" if f.kind is Kind.BOOL else f"msg[{index[f.name]}]"
                for f in run
            )
            parts.append(f"_st{i}.pack({args})")
        else:
            f = run[0]
            parts.append(f"{_VAR_ENCODER[f.kind]}(msg[{index[f.name]}])")
    body = " + ".join(parts) if parts else "b''"
    exec(f"def encode(msg):\n    return {body}\n", namespace)  # noqa: S102
    return namespace["encode"]


def _decode_file_chunk(protocol: int, fields_only: bool = False) -> Decoder:
    head = struct.Struct(">III" if protocol >= 40 else ">II")

    def decode(buf: bytes, pos: int, end: int) -> Message | int:
        if end - pos < 8 + head.size:
            raise _Short(pos + 8, head.size)
        values = head.unpack_from(buf, pos + 8)
        uncompressed_len, compressed_len = values[0], values[1]
        compression = values[2] if protocol >= 40 else 0
        start = pos + 8 + head.size
        if start + compressed_len != end:
            if start + compressed_len > end:
                raise _Short(start, compressed_len)
            return start + compressed_len  # trailing bytes
        values = (uncompressed_len, compression, bytes(buf[start:end]))
        return values if fields_only else FileChunk(*values)

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


def decoder_for(cls: type[Message], protocol: int, *, fields_only: bool = False) -> Decoder:
    """The generated decoder (see :data:`Decoder`) of ``cls`` at ``protocol``; with
    ``fields_only`` it returns the plain tuple of field values instead of the message."""
    key = (cls, protocol, fields_only)
    dec = _decoders.get(key)
    if dec is None:
        if cls is FileChunk:
            dec = _decode_file_chunk(protocol, fields_only)
        else:
            dec = _build_decoder(cls, protocol, fields_only)
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
MONITOR_TYPE_ALIASES: dict[int, type[Message]] = {
    MsgType.GET_CS: MonGetCSHead,
    MsgType.JOB_DONE: MonJobDoneHead,
}


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
    length, type_word = _unpack_header(frame, 0)
    if length != size - 4:
        if length > MAX_MSG_SIZE:
            raise FrameTooLarge(f"frame length {length} exceeds icecream's maximum {MAX_MSG_SIZE}")
        raise DecodeError(f"frame length prefix says {length} bytes but {size - 4} follow it")
    decoder = _frame_decoders.get((type_word, protocol, monitor))
    if decoder is None:
        decoder = _frame_decoder(type_word, protocol, monitor, size)
    try:
        result = decoder(frame, 0, size)
    except _Short as e:
        raise DecodeError(
            f"{_name(type_word, monitor)} (protocol {protocol}) ends at byte {size}, "
            f"field at byte {e.pos} needs {e.need}"
        ) from None
    except _Bad as e:
        raise DecodeError(
            f"{_name(type_word, monitor)} (protocol {protocol}): {e.what} at byte {e.pos}"
        ) from None
    if result.__class__ is int:
        raise DecodeError(
            f"{_name(type_word, monitor)} (protocol {protocol}) has {size - result} trailing "
            f"bytes after its last field at byte {result}"
        )
    return result


_unpack_header = unpack_header = _HEADER.unpack_from
#: (type word, protocol, monitor?) -> decoder: one dict look-up per frame on the hot path.
_frame_decoders: dict[tuple[int, int, bool], Decoder] = {}


def frame_decoder(
    type_word: int, protocol: int, *, monitor: bool = True, fields_only: bool = False
) -> Decoder | None:
    """The decoder for frames of ``type_word`` at ``protocol``, for hot loops that dispatch
    themselves (see :data:`Decoder`); None for a type word no message has. A loop that meets an
    error or trailing bytes calls :func:`decode` on the frame for the error to report."""
    cls = message_class(type_word, monitor=monitor)
    if cls is None or cls is Text:
        return None
    _check_protocol(protocol)
    return decoder_for(cls, protocol, fields_only=fields_only)


def message_class(type_word: int, *, monitor: bool = True) -> type[Message] | None:
    """The class of the messages sent with ``type_word`` (see :data:`MONITOR_TYPE_ALIASES`)."""
    cls = MONITOR_TYPE_ALIASES.get(type_word) if monitor else None
    return cls if cls is not None else MESSAGE_CLASSES.get(type_word)


def _message_class(type_word: int, monitor: bool) -> type[Message] | None:
    return message_class(type_word, monitor=monitor)


def _name(type_word: int, monitor: bool) -> str:
    cls = _message_class(type_word, monitor)
    return cls.TYPE.name if cls is not None else f"0x{type_word:02X}"


def _frame_decoder(type_word: int, protocol: int, monitor: bool, size: int) -> Decoder:
    cls = _message_class(type_word, monitor)
    if cls is None:
        raise DecodeError(f"unknown message type 0x{type_word:02X} in a frame of {size} bytes")
    if cls is Text:
        raise DecodeError("TEXT (0x59) belongs to the text port and cannot appear in a binary frame")
    if protocol < MIN_PROTOCOL_VERSION:
        raise LocalProtocolError(f"protocol {protocol} is below icecream's minimum {MIN_PROTOCOL_VERSION}")
    decoder = _frame_decoders[(type_word, protocol, monitor)] = decoder_for(cls, protocol)
    return decoder


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
    return _HEADER.pack(length, msg.TYPE_WORD) + payload


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
