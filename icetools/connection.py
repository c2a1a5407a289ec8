"""Connections to a scheduler: asyncio first, and a blocking API with pyicemon's names.

Both drive the same sans-IO :class:`~icetools.protocol.Channel`; they only move bytes.
"""

from __future__ import annotations

import asyncio
import socket
import time

from .errors import (
    ConnectionClosed,
    HandshakeError,
    RemoteProtocolError,
    SchedulerNotFound,
    describe_os_error,
)
from .messages import PROTOCOL_VERSION, Message, MonLogin
from .protocol import NEED_DATA, Channel, Frame, Negotiated

#: How long a peer may take to answer the version handshake (icecream waits 15 s slices).
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
#: How long closing may wait for the peer before the connection is dropped instead.
CLOSE_TIMEOUT = 1.0
_READ_SIZE = 1 << 16


def _describe(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unreachable(host: str, port: int, err: OSError) -> SchedulerNotFound:
    if isinstance(err, socket.gaierror):
        reason = f"cannot resolve {host!r} ({err.strerror})"
    else:
        # asyncio's strerror is "Connect call failed (...)": the errno says more.
        reason = describe_os_error(err) or err.__class__.__name__
    return SchedulerNotFound(f"cannot connect to scheduler {_describe(host, port)}: {reason}")


def _lost(address: tuple[str, int], err: OSError) -> ConnectionClosed:
    """A socket error on an open connection (a reset, a broken pipe) is the connection ending:
    callers handle one exception for every way a peer can go away."""
    if err.errno is None and isinstance(err, ConnectionResetError):
        reason = "connection reset by peer"  # asyncio's own, errno-less "Connection lost"
    else:
        reason = describe_os_error(err) or err.__class__.__name__
    return ConnectionClosed(f"connection to {_describe(*address)} lost: {reason}")


class AsyncConnection:
    """A framed, negotiated connection to a scheduler, for asyncio code.

    Open it with :meth:`open`, which connects, runs the handshake and (for a monitor) sends
    MON_LOGIN. Then :meth:`read_frames` hands out raw frames as they arrive (what the recorder
    stores) and :meth:`get_message` decoded messages.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        channel: Channel,
        address: tuple[str, int],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.channel = channel
        self.address = address
        self._pending: list[Frame] = []
        #: What ended the stream after frames that are still to be handed out (see read_frames).
        self._error: ConnectionClosed | RemoteProtocolError | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        protocol: int = PROTOCOL_VERSION,
        login: bool = True,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> AsyncConnection:
        channel = Channel(protocol)
        # asyncio.timeout rather than wait_for: on 3.11 wait_for swallows a cancellation that
        # arrives as the inner call completes, and a recorder reconnecting often then ignored
        # SIGTERM for good.
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise SchedulerNotFound(
                f"cannot connect to scheduler {_describe(host, port)}: timed out "
                f"after {CONNECT_TIMEOUT:g} s"
            ) from None
        except OSError as e:
            raise _unreachable(host, port, e) from None
        conn = cls(reader, writer, channel, (host, port))
        try:
            async with asyncio.timeout(timeout):
                await conn._handshake()
            if login:
                await conn.send_message(MonLogin())
        except TimeoutError:
            await conn.close()
            raise HandshakeError(
                f"{_describe(host, port)} did not answer the icecream handshake within "
                f"{timeout:g} s; is it an icecream scheduler?"
            ) from None
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as e:
            raise _lost(self.address, e) from None

    async def _handshake(self) -> None:
        self._writer.write(self.channel.data_to_send())
        while True:
            event = self.channel.next_event()
            if isinstance(event, Negotiated):
                break
            if isinstance(event, Frame):  # cannot happen before Negotiated
                self._pending.append(event)
                continue
            out = self.channel.data_to_send()
            if out:
                self._writer.write(out)
            await self._fill()
        await self._send(self.channel.data_to_send())

    async def _fill(self) -> None:
        try:
            data = await self._reader.read(_READ_SIZE)
        except ConnectionResetError:
            data = b""  # the channel then says how far the peer got
        except OSError as e:
            raise _lost(self.address, e) from None
        self.channel.receive_data(data)

    @property
    def protocol(self) -> int:
        assert self.channel.protocol is not None
        return self.channel.protocol

    @property
    def peer_version(self) -> int:
        assert self.channel.peer_version is not None
        return self.channel.peer_version

    async def read_frames(self) -> list[bytes]:
        """Wait for at least one whole frame; return every whole frame that has arrived.

        Raises :class:`ConnectionClosed` when the peer closes (saying so if mid-frame) and
        :class:`RemoteProtocolError` when it breaks the framing, but only once every whole
        frame that came before is handed out: bad bytes in the same read as good frames cost
        nothing but themselves.
        """
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        frames = [f.data for f in self._pending]
        self._pending.clear()
        while True:
            try:
                event = self.channel.next_event()
            except (ConnectionClosed, RemoteProtocolError) as e:
                if not frames:
                    raise
                self._error = e
                return frames
            if isinstance(event, Frame):
                frames.append(event.data)
                continue
            if event is NEED_DATA and frames:
                return frames
            await self._fill()

    async def get_message(self) -> Message:
        if not self._pending:
            self._pending = [Frame(f) for f in await self.read_frames()]
        return self.channel.decode(self._pending.pop(0))

    async def send_message(self, msg: Message) -> None:
        """Send ``msg``; :class:`ConnectionClosed` if the connection is gone."""
        self.channel.send(msg)
        await self._send(self.channel.data_to_send())

    async def close(self) -> None:
        """Close, waiting at most CLOSE_TIMEOUT for the peer (then the connection is dropped):
        closing happens on the way out of a Ctrl-C too, and must not hang there."""
        self._writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except OSError:
            pass


class Connection:
    """A blocking connection to a scheduler, with pyicemon's API.

    ``Connection(host, port)`` connects and negotiates the protocol (offering ``protocol``,
    44 by default); ``send_message(msg)`` sends; ``get_message()`` returns the next decoded
    message. A monitor sends ``messages.LoginMessage()`` (MON_LOGIN) first, or calls
    :meth:`login`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: int = PROTOCOL_VERSION,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.address = (host, port)
        self.channel = Channel(protocol)
        try:
            self._sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise _unreachable(host, port, e) from None
        self._frames: list[Frame] = []
        try:
            self._handshake(timeout)
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(None)

    def _sendall(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise _lost(self.address, e) from None

    def _handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._sendall(self.channel.data_to_send())
        while True:
            event = self.channel.next_event()
            out = self.channel.data_to_send()
            if out:
                self._sendall(out)
            if isinstance(event, Negotiated):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise HandshakeError(
                    f"{_describe(*self.address)} did not answer the icecream handshake within "
                    f"{timeout:g} s; is it an icecream scheduler?"
                )
            self._sock.settimeout(left)
            try:
                self._recv()
            except TimeoutError:
                continue

    def _recv(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE)
        except ConnectionResetError:
            data = b""  # the channel then says how far the peer got
        except TimeoutError:
            raise  # the caller's deadline, not the connection's end
        except OSError as e:
            raise _lost(self.address, e) from None
        self.channel.receive_data(data)

    @property
    def protocol(self) -> int:
        assert self.channel.protocol is not None
        return self.channel.protocol

    @property
    def peer_version(self) -> int:
        assert self.channel.peer_version is not None
        return self.channel.peer_version

    def login(self) -> None:
        """Log in as a monitor (send MON_LOGIN)."""
        self.send_message(MonLogin())

    def send_message(self, msg: Message) -> None:
        """Send ``msg``; :class:`ConnectionClosed` if the connection is gone."""
        self.channel.send(msg)
        self._sendall(self.channel.data_to_send())

    def get_frame(self, timeout: float | None = None) -> bytes:
        """The next raw frame; ``TimeoutError`` if none arrives within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self.channel.next_event()
            if isinstance(event, Frame):
                return event.data
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no frame from the scheduler in time")
                self._sock.settimeout(left)
            else:
                self._sock.settimeout(None)
            self._recv()

    def get_message(self, timeout: float | None = None) -> Message:
        """The next message, decoded at the negotiated protocol (blocks; see ``timeout``)."""
        return self.channel.decode(Frame(self.get_frame(timeout)))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
