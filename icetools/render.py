"""Messages and capture records as text for people and as JSON for machines (``icetools dump``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import messages
from .capture import CarriedRecord, ConnectRecord, DisconnectRecord, EndRecord, FrameRecord, Record
from .errors import ProtocolError
from .messages import LANG_NAMES, Message, MsgType

#: Names accepted by ``dump --type``: every message type, and the connection events.
EVENT_NAMES = ("connect", "disconnect", "end")
TYPE_NAMES = tuple(t.name for t in MsgType) + EVENT_NAMES + ("UNDECODABLE",)


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (decoded with surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters (C0, DEL, C1: the start of every
    terminal escape sequence) and lone surrogates (bytes that were not UTF-8) as backslash
    escapes. For every text that came from the network or a file (host and file names, reasons,
    paths) on its way to a terminal or into text output; JSON output stays exact instead."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(_escape, text)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def message_fields(msg: Message, protocol: int) -> dict[str, Any]:
    """The fields of ``msg`` on the wire at ``protocol``, JSON-ready, under icecream's names."""
    out: dict[str, Any] = {}
    for f in msg.FIELDS:
        if f.present(protocol):
            out[f.name] = _json_value(getattr(msg, f.name))
    if isinstance(msg, messages.MonStats):
        out["stats"] = msg.stats
        del out["statmsg"]
    if msg.TYPE_WORD != msg.TYPE:
        out["type_word"] = msg.TYPE_WORD  # a HEAD scheduler's GET_CS/JOB_DONE type word
    return out


class Decoded:
    """A capture record made ready for output: the decoded message or why it did not decode."""

    __slots__ = ("record", "message", "error", "name")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.message: Message | None = None
        self.error: str | None = None
        if isinstance(record, (FrameRecord, CarriedRecord)):
            try:
                self.message = messages.decode(record.data, record.protocol, monitor=True)
                self.name = self.message.TYPE.name
            except ProtocolError as e:
                self.error = str(e)
                self.name = "UNDECODABLE"
        elif isinstance(record, ConnectRecord):
            self.name = "connect"
        elif isinstance(record, DisconnectRecord):
            self.name = "disconnect"
        else:
            self.name = "end"


    @classmethod
    def of(cls, record: FrameRecord, message: Message) -> Decoded:
        """A Decoded for a frame already decoded."""
        item = cls.__new__(cls)
        item.record, item.message, item.error, item.name = record, message, None, message.TYPE.name
        return item


def decode_records(records: Iterable[Record]) -> Iterator[Decoded]:
    for record in records:
        yield Decoded(record)


def to_json(item: Decoded) -> dict[str, Any]:
    rec = item.record
    # A carried frame is shown at the time it was really received (as replay applies it).
    t = rec.original if type(rec) is CarriedRecord else rec.t
    out: dict[str, Any] = {"t": round(t, 6), "type": item.name}
    if isinstance(rec, (FrameRecord, CarriedRecord)):
        if item.message is not None:
            out.update(message_fields(item.message, rec.protocol))
        else:
            out["type_word"] = messages.frame_type(rec.data)
            out["length"] = len(rec.data)
            out["hex"] = rec.data.hex()
            out["error"] = item.error
    elif isinstance(rec, ConnectRecord):
        out.update(
            protocol=rec.protocol,
            peer_version=rec.peer_version,
            offered=rec.offered,
            scheduler=rec.scheduler,
            reconnect=rec.reconnect,
        )
        if rec.rotated:  # only ever true in format 2: format 1 files dump as they always did
            out["rotated"] = True
    elif isinstance(rec, DisconnectRecord):
        out["reason"] = rec.reason
    elif isinstance(rec, EndRecord):
        out.update(frames=rec.frames, reason=rec.reason)
    if type(rec) is CarriedRecord:
        out["carried"] = True
    return out


#: One encoder for every line: json.dumps with options builds a new encoder per call.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
_formatters: dict[tuple[type[Message], int], Callable[[float, Message], str]] = {}


def _message_formatter(cls: type[Message], protocol: int) -> Callable[[float, Message], str]:
    """Generate ``format(t, msg) -> JSON line`` for one message class at one protocol.

    It writes exactly what ``json.dumps(to_json(...))`` would (the golden files hold both to
    that), but fills a template instead of building and walking a dict per message, which is
    what lets dump print a quarter of a million lines a second.
    """
    head = _encode_json({"type": cls.TYPE.name})[1:-1]
    parts = [f'"t": {{_float(t)}}, {head}']
    scope: dict[str, Any] = {
        "_float": float.__repr__,
        "_str": json.encoder.encode_basestring,
        "_any": lambda v: _encode_json(_json_value(v)),
        "_bool": {True: "true", False: "false"},
        "_stats": lambda text: _encode_json(messages.parse_statmsg(text)),
    }
    for i, f in enumerate(cls.FIELDS):
        if not f.present(protocol):
            continue
        key = f.name
        if cls is messages.MonStats and key == "statmsg":
            parts.append(f'"stats": {{_stats(msg[{i}])}}')
            continue
        if f.kind in (messages.Kind.U32, messages.Kind.INT):
            value = f"{{msg[{i}]}}"
        elif f.kind is messages.Kind.BOOL:
            value = f"{{_bool[msg[{i}]]}}"
        elif f.kind is messages.Kind.STRING:
            value = f"{{_str(msg[{i}])}}"
        else:
            value = f"{{_any(msg[{i}])}}"
        parts.append(f'"{key}": {value}')
    if cls.TYPE_WORD != cls.TYPE:
        parts.append(f'"type_word": {cls.TYPE_WORD}')
    body = ", ".join(parts).replace("'", "\\'")
    source = f"def format(t, msg):\n    return f'{{{{{body}}}}}'\n"
    exec(source, scope)  # noqa: S102 - built only from our message declarations
    return scope["format"]


def json_line(item: Decoded) -> str:
    msg = item.message
    if msg is not None and type(item.record) is not CarriedRecord:
        key = (type(msg), item.record.protocol)
        formatter = _formatters.get(key)
        if formatter is None:
            formatter = _formatters[key] = _message_formatter(*key)
        return formatter(round(item.record.t, 6), msg)
    return _encode_json(to_json(item))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def describe(msg: Message) -> str:
    """The fields that matter for people, on one line (escaped: see :func:`printable`)."""
    return printable(_describe(msg))


def _describe(msg: Message) -> str:
    if isinstance(msg, messages.MonGetCS):
        lang = LANG_NAMES.get(msg.lang, f"lang {msg.lang}")
        return f"job {msg.job_id}  from host {msg.client_id}  {lang}  {msg.filename}"
    if isinstance(msg, messages.MonJobBegin):
        return f"job {msg.job_id}  on host {msg.host_id}"
    if isinstance(msg, messages.MonJobDone):
        text = f"job {msg.job_id}  exit {msg.exitcode}"
        if msg.exitcode == 255 and not msg.real_msec and not msg.in_uncompressed:
            text += " (host went away)"
        text += (
            f"  real {msg.real_msec} ms  user {msg.user_msec} ms  sys {msg.sys_msec} ms"
            f"  in {_size(msg.in_uncompressed)}  out {_size(msg.out_uncompressed)}"
        )
        if msg.flags & messages.FROM_SUBMITTER:
            text += "  from submitter"
        return text
    if isinstance(msg, messages.MonLocalJobBegin):
        return f"job {msg.job_id}  local on host {msg.host_id}  {msg.file}"
    if isinstance(msg, messages.JobLocalDone):
        return f"job {msg.job_id}  local job done"
    if isinstance(msg, messages.MonStats):
        if msg.offline:
            return f"host {msg.host_id}  offline"
        stats = msg.stats
        parts = [f"host {msg.host_id}"]
        parts += [f"{k}={v}" for k, v in stats.items()]
        return "  ".join(parts)
    fields = msg.fields()
    return "  ".join(f"{k}={_json_value(v)!r}" for k, v in fields.items())


def text_line(item: Decoded) -> str:
    """A record as a line for people (escaped: see :func:`printable`)."""
    return printable(_text_line(item))


#: What marks a carried frame's line (text): the state given before the file began.
CARRIED_MARK = "[carried] "


def _text_line(item: Decoded) -> str:
    rec = item.record
    carried = type(rec) is CarriedRecord
    stamp = f"{rec.original if carried else rec.t:10.3f}"
    if isinstance(rec, (FrameRecord, CarriedRecord)):
        mark = CARRIED_MARK if carried else ""
        if item.message is not None:
            name = item.message.TYPE.name
            if item.message.TYPE_WORD != item.message.TYPE:
                name += f" (type word 0x{item.message.TYPE_WORD:02X})"
            return f"{stamp}  {name:<20}  {mark}{describe(item.message)}"
        word = messages.frame_type(rec.data)
        hexed = rec.data.hex(" ")
        if len(hexed) > 200:
            hexed = hexed[:200] + " ..."
        return f"{stamp}  {'UNDECODABLE':<20}  {mark}type 0x{word:02X}, {len(rec.data)} bytes: {hexed}  ({item.error})"
    if isinstance(rec, ConnectRecord):
        what = "reconnected" if rec.reconnect else "connected"
        return (
            f"{stamp}  -- {what} to {rec.scheduler}, protocol {rec.protocol} "
            f"(scheduler offers {rec.peer_version}, we offered {rec.offered})"
            + (" (rotated: the previous part's connection goes on)" if rec.rotated else "")
        )
    if isinstance(rec, DisconnectRecord):
        return f"{stamp}  -- disconnected: {rec.reason}"
    assert isinstance(rec, EndRecord)
    return f"{stamp}  -- recording ended ({rec.reason}), {rec.frames} frames"


class Dumper:
    """Turns records into output lines (text or JSON), keeping count of undecodable frames.

    Frames take a fast path (decode, then a generated formatter); everything rare (events,
    undecodable frames) goes through :class:`Decoded`.
    """

    def __init__(self, *, as_json: bool, wanted: set[str] | None = None) -> None:
        self.as_json = as_json
        self.wanted = wanted
        self.undecodable = 0
        #: The protocol in force (pump() hands handlers messages, not records).
        self.protocol = messages.PROTOCOL_VERSION

    def handlers(self, out: list[str]) -> dict[type[Message], Callable[[Any, float], None]]:
        """For :meth:`CaptureReader.pump`: per message class, append its line to ``out``. JSON
        lines take the plain field tuples (``fields=True``), text lines the messages."""
        wanted = self.wanted
        append = out.append
        table: dict[type[Message], Callable[[Any, float], None]] = {}
        for cls in set(messages.MESSAGE_CLASSES.values()) | set(messages.MONITOR_TYPE_ALIASES.values()):
            if wanted is not None and cls.TYPE.name not in wanted:
                continue
            if self.as_json:
                table[cls] = self._json_handler(cls, append)
            else:
                table[cls] = self._text_handler(cls, append)
        return table

    def _json_handler(self, cls: type[Message], append: Callable[[str], None]) -> Callable[[Any, float], None]:
        formatters: dict[int, Callable[[float, Any], str]] = {}  # by protocol

        def handle(fields: Any, t: float) -> None:
            formatter = formatters.get(self.protocol)
            if formatter is None:
                formatter = formatters[self.protocol] = _message_formatter(cls, self.protocol)
            append(formatter(round(t, 6), fields))

        return handle

    def _text_handler(self, cls: type[Message], append: Callable[[str], None]) -> Callable[[Any, float], None]:
        name = cls.TYPE.name
        if cls.TYPE_WORD != cls.TYPE:
            name += f" (type word 0x{cls.TYPE_WORD:02X})"

        def handle(msg: Message, t: float) -> None:
            append(f"{t:10.3f}  {name:<20}  {describe(msg)}")

        return handle

    def on_event(self, out: list[str]) -> Callable[[Record], None]:
        """For pump(): connection events and undecodable frames, as lines in ``out``."""
        render = json_line if self.as_json else text_line
        wanted = self.wanted

        def handle(record: Record) -> None:
            if type(record) is ConnectRecord:
                self.protocol = record.protocol
            item = Decoded(record)
            # (an undecodable carried frame is shown, not counted: the count is of the frames
            # received during the file, see CaptureReader.frames)
            if item.name == "UNDECODABLE" and type(record) is not CarriedRecord:
                self.undecodable += 1
            if wanted is None or item.name in wanted:
                out.append(render(item))

        return handle

    def on_carried(self, out: list[str]) -> Callable[[CarriedRecord], None]:
        """For pump(carried=False, on_carried=...): carried frames, marked, as lines in ``out``."""
        return self.on_event(out)

    def lines(self, records: Iterable[Record]) -> Iterator[str]:
        decode = messages.decode
        wanted = self.wanted
        formatters = _formatters
        render = json_line if self.as_json else text_line
        for rec in records:
            if type(rec) is FrameRecord:
                try:
                    msg = decode(rec.data, rec.protocol, monitor=True)
                except ProtocolError:
                    item = Decoded(rec)
                    self.undecodable += 1
                    if wanted is None or item.name in wanted:
                        yield render(item)
                    continue
                if wanted is not None and msg.TYPE.name not in wanted:
                    continue
                if self.as_json:
                    key = (type(msg), rec.protocol)
                    formatter = formatters.get(key)
                    if formatter is None:
                        formatter = formatters[key] = _message_formatter(*key)
                    yield formatter(round(rec.t, 6), msg)
                else:
                    yield text_line(Decoded.of(rec, msg))
                continue
            item = Decoded(rec)  # events, and carried frames (marked; not counted if undecodable)
            if wanted is None or item.name in wanted:
                yield render(item)
