"""Messages and capture records as text for people and as JSON for machines (``icetools dump``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from . import messages
from .capture import ConnectRecord, DisconnectRecord, EndRecord, FrameRecord, Record
from .errors import ProtocolError
from .messages import LANG_NAMES, Message, MsgType

#: Names accepted by ``dump --type``: every message type, and the connection events.
EVENT_NAMES = ("connect", "disconnect", "end")
TYPE_NAMES = tuple(t.name for t in MsgType) + EVENT_NAMES + ("UNDECODABLE",)


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
    type_word = getattr(msg, "type_word", msg.TYPE)
    if type_word != msg.TYPE:
        out["type_word"] = type_word  # a HEAD scheduler's GET_CS/JOB_DONE type word
    return out


class Decoded:
    """A capture record made ready for output: the decoded message or why it did not decode."""

    __slots__ = ("record", "message", "error", "name")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.message: Message | None = None
        self.error: str | None = None
        if isinstance(record, FrameRecord):
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


def decode_records(records: Iterable[Record]) -> Iterator[Decoded]:
    for record in records:
        yield Decoded(record)


def to_json(item: Decoded) -> dict[str, Any]:
    rec = item.record
    out: dict[str, Any] = {"t": round(rec.t, 6), "type": item.name}
    if isinstance(rec, FrameRecord):
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
    elif isinstance(rec, DisconnectRecord):
        out["reason"] = rec.reason
    elif isinstance(rec, EndRecord):
        out.update(frames=rec.frames, reason=rec.reason)
    return out


def json_line(item: Decoded) -> str:
    return json.dumps(to_json(item), ensure_ascii=False, separators=(", ", ": "))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def describe(msg: Message) -> str:
    """The fields that matter for people, on one line."""
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
    rec = item.record
    stamp = f"{rec.t:10.3f}"
    if isinstance(rec, FrameRecord):
        if item.message is not None:
            name = item.message.TYPE.name
            type_word = getattr(item.message, "type_word", item.message.TYPE)
            if type_word != item.message.TYPE:
                name += f" (type word 0x{type_word:02X})"
            return f"{stamp}  {name:<20}  {describe(item.message)}"
        word = messages.frame_type(rec.data)
        hexed = rec.data.hex(" ")
        if len(hexed) > 200:
            hexed = hexed[:200] + " ..."
        return f"{stamp}  {'UNDECODABLE':<20}  type 0x{word:02X}, {len(rec.data)} bytes: {hexed}  ({item.error})"
    if isinstance(rec, ConnectRecord):
        what = "reconnected" if rec.reconnect else "connected"
        return (
            f"{stamp}  -- {what} to {rec.scheduler}, protocol {rec.protocol} "
            f"(scheduler offers {rec.peer_version}, we offered {rec.offered})"
        )
    if isinstance(rec, DisconnectRecord):
        return f"{stamp}  -- disconnected: {rec.reason}"
    assert isinstance(rec, EndRecord)
    return f"{stamp}  -- recording ended ({rec.reason}), {rec.frames} frames"
