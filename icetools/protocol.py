"""The sans-IO icecream channel: version handshake and framing, no sockets inside.

Usage, as with h11: feed whatever bytes arrived to :meth:`Channel.receive_data`, then call
:meth:`Channel.next_event` until it returns :data:`NEED_DATA`; send whatever
:meth:`Channel.data_to_send` returns. The same object serves a monitor talking to a scheduler,
the scheduler side of that conversation (``icetools replay --as-scheduler``) and a capture reader
(frames only, no handshake).

The handshake (icecream's MsgChannel in state NEED_PROTO) is symmetric:

1. each side sends its own version as a little-endian u32;
2. on reading the peer's version ``R``: reject ``R < 21`` or ``R > 2**20``, then send
   ``N = min(R, own)``;
3. on reading the peer's confirmation: it must equal ``N``; the channel is then at protocol ``N``
   and everything after is frames.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from . import messages
from .errors import ConnectionClosed, FrameTooLarge, HandshakeError, LocalProtocolError
from .messages import MAX_MSG_SIZE, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Message

#: The largest version number icecream accepts from a peer (its sanity limit).
MAX_SANE_PROTOCOL = 1 << 20

_LE32 = struct.Struct("<I")
_BE32 = struct.Struct(">I")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Channel.next_event` when more bytes must arrive first.
NEED_DATA = _NeedData()


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    """The handshake finished: the channel speaks ``protocol``; the peer offered ``peer_version``."""

    protocol: int
    peer_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame (length prefix included), undecoded, as it arrived."""

    data: bytes

    @property
    def type_word(self) -> int:
        return messages.frame_type(self.data)


class State(enum.Enum):
    AWAIT_VERSION = "awaiting the peer's version"
    AWAIT_CONFIRMATION = "awaiting the peer's confirmation"
    FRAMED = "framed"
    CLOSED = "closed"


def check_peer_version(version: int) -> None:
    """Reject what icecream rejects: a peer below 21, or an absurd version number."""
    if version < MIN_PROTOCOL_VERSION:
        raise HandshakeError(
            f"peer offers protocol {version}, below icecream's minimum {MIN_PROTOCOL_VERSION}"
        )
    if version > MAX_SANE_PROTOCOL:
        raise HandshakeError(
            f"peer offers protocol {version}, which is not a plausible icecream version "
            "(is it an icecream scheduler?)"
        )


class FrameBuffer:
    """Split a byte stream into whole frames, checking each length before buffering its body."""

    __slots__ = ("_buf", "_pos", "offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        #: Stream offset of the next unread byte, for error messages.
        self.offset = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _BE32.unpack_from(buf, pos)
        if length > MAX_MSG_SIZE:
            raise FrameTooLarge(
                f"frame at byte {self.offset} declares {length} bytes, over icecream's "
                f"maximum {MAX_MSG_SIZE}"
            )
        if length < 4:
            raise FrameTooLarge(
                f"frame at byte {self.offset} declares {length} bytes, less than its type word"
            )
        end = pos + 4 + length
        if end > len(buf):
            return None
        frame = bytes(buf[pos:end])
        self.offset += end - pos
        # Compact lazily: moving the tail on every frame would make bursts quadratic.
        if end == len(buf):
            buf.clear()
            end = 0
        elif end > 65536 and end * 2 > len(buf):
            del buf[:end]
            end = 0
        self._pos = end
        return frame

    def take_raw(self, n: int) -> bytes | None:
        """Take exactly ``n`` unframed bytes (the handshake), or None if not there yet."""
        if len(self._buf) - self._pos < n:
            return None
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.offset += n
        return data


class Channel:
    """One end of an icecream binary channel.

    ``own_version`` is what we offer (44, or lower to impersonate an older peer).
    ``monitor`` tells :meth:`decode` that frames come from a scheduler to a monitor.
    ``handshake=False`` starts already framed at ``own_version`` (capture readers).
    """

    def __init__(
        self,
        own_version: int = PROTOCOL_VERSION,
        *,
        monitor: bool = True,
        handshake: bool = True,
    ) -> None:
        if not MIN_PROTOCOL_VERSION <= own_version <= MAX_SANE_PROTOCOL:
            raise LocalProtocolError(
                f"cannot offer protocol {own_version}: icetools speaks "
                f"{MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            )
        self.own_version = own_version
        self.monitor = monitor
        self._in = FrameBuffer()
        self._out = bytearray()
        self.peer_version: int | None = None
        self.protocol: int | None = None
        self._eof = False
        if handshake:
            self.state = State.AWAIT_VERSION
            # Both sides send their version at once, without waiting for the other.
            self._out += _LE32.pack(own_version)
        else:
            self.state = State.FRAMED
            self.protocol = own_version

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its end."""
        if data:
            self._in.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Negotiated | Frame | _NeedData:
        """The next thing that happened: the handshake ended, a whole frame, or NEED_DATA.

        Raises :class:`HandshakeError`, :class:`FrameTooLarge`, or :class:`ConnectionClosed`
        (with how far into a frame or the handshake the peer got) once the peer has closed.
        """
        if self.state is State.FRAMED:
            frame = self._in.next_frame()
            if frame is not None:
                return Frame(frame)
        elif self.state is State.AWAIT_VERSION:
            raw = self._in.take_raw(4)
            if raw is not None:
                (version,) = _LE32.unpack(raw)
                try:
                    check_peer_version(version)
                except HandshakeError:
                    self.state = State.CLOSED
                    raise
                self.peer_version = version
                self.protocol = min(version, self.own_version)
                self._out += _LE32.pack(self.protocol)
                self.state = State.AWAIT_CONFIRMATION
                return self.next_event()
        elif self.state is State.AWAIT_CONFIRMATION:
            raw = self._in.take_raw(4)
            if raw is not None:
                (confirmed,) = _LE32.unpack(raw)
                if confirmed != self.protocol:
                    self.state = State.CLOSED
                    raise HandshakeError(
                        f"peer confirmed protocol {confirmed}, expected {self.protocol}"
                    )
                self.state = State.FRAMED
                assert self.protocol is not None and self.peer_version is not None
                return Negotiated(self.protocol, self.peer_version)
        if self._eof:
            self._raise_closed()
        return NEED_DATA

    def _raise_closed(self) -> None:
        pending = self._in.pending
        state = self.state
        self.state = State.CLOSED
        if state is State.FRAMED:
            if pending:
                raise ConnectionClosed(
                    f"peer closed the connection in the middle of a frame "
                    f"({pending} bytes of it received, at stream byte {self._in.offset})"
                )
            raise ConnectionClosed("peer closed the connection")
        if state is State.CLOSED:
            raise ConnectionClosed("connection is closed")
        raise ConnectionClosed(
            f"peer closed the connection during the version handshake ({state.value}, "
            f"{pending} of 4 bytes received); is it an icecream scheduler?"
        )

    def decode(self, frame: Frame) -> Message:
        """Decode a frame at the negotiated protocol."""
        if self.protocol is None:
            raise LocalProtocolError("no frame can be decoded before the handshake has finished")
        return messages.decode(frame.data, self.protocol, monitor=self.monitor)

    # -- output ----------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue ``msg``, encoded for the negotiated protocol."""
        if self.state is not State.FRAMED or self.protocol is None:
            raise LocalProtocolError(f"cannot send {msg.type_name} while {self.state.value}")
        self._out += messages.encode(msg, self.protocol)

    def send_frame(self, frame: bytes) -> None:
        """Queue an already encoded frame (a recorded one, say) unchanged."""
        if self.state is not State.FRAMED:
            raise LocalProtocolError(f"cannot send a frame while {self.state.value}")
        self._out += frame

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def established(self) -> bool:
        return self.state is State.FRAMED
