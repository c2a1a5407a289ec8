"""``icetools replay --as-scheduler``: play a recording to real monitors, as their scheduler.

A monitor that connects gets what a real scheduler gives it: the version handshake (offering the
recorded scheduler's version and settling on the lower of the two), then, once it sent
MON_LOGIN, the recording from its start at the recorded pace, on its own clock. A monitor that
offered an older protocol than the recording gets every frame re-encoded to its layout, as the
real scheduler would have built it (MON_GET_CS as a whole GET_CS below 29, MON_JOB_DONE without
client_count below 39). Like the real scheduler it never reads from a monitor after MON_LOGIN,
sends without blocking, and drops a monitor whose socket stops draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import messages as m
from .capture import CarriedRecord, ConnectRecord, FrameRecord, Record
from .defaults import STANDIN_LISTEN
from .discovery import build_reply
from .errors import HandshakeError, IcetoolsError, ProtocolError, describe_os_error
from .index import recording_at
from .monitor import Monitor
from .protocol import NEED_DATA, Channel, Frame, Negotiated
from .recordings import GapRecord, open_recording
from .replay import skipped_by_gap

DEFAULT_LISTEN = STANDIN_LISTEN
#: Like the scheduler's SO_SNDBUF of 65536 for monitors: a monitor that lets this much pile up
#: unsent is dropped ("monitor is blocking... removing").
MAX_PENDING = 256 * 1024
LOGIN_TIMEOUT = 30.0


@dataclasses.dataclass
class MonitorLog:
    """What happened to one monitor connection (for the console and for tests)."""

    peer: str
    protocol: int | None = None
    peer_version: int | None = None
    frames: int = 0
    ended: str = ""


class Transcoder:
    """Re-encodes recorded frames for a monitor at another protocol version."""

    def __init__(self, source: int, target: int) -> None:
        self.source, self.target = source, target
        self.platforms: dict[int, str] = {}  # host id -> Platform, for old MON_GET_CS targets

    def __call__(self, frame: bytes, protocol: int) -> bytes:
        if protocol == self.target:
            return frame
        msg = m.decode(frame, protocol)
        if isinstance(msg, m.MonStats):
            platform = msg.stats.get("Platform")
            if platform:
                self.platforms[msg.host_id] = platform
        elif isinstance(msg, m.MonGetCS) and self.target < 29 <= protocol:
            # What the real scheduler puts in the whole GET_CS it sends to old monitors.
            msg = msg.replace(count=1, target=self.platforms.get(msg.client_id, "x86_64"))
        return m.encode(msg, self.target)


def login_stats(monitor: Monitor) -> list[m.MonStats]:
    """The MON_STATS a scheduler sends a monitor on login: one per online host, as last reported."""
    return [
        m.MonStats(host.id, host.statmsg or m.format_statmsg(host.stats))
        for host in sorted(monitor.hosts.values(), key=lambda h: h.id)
        if host.online
    ]


class StandIn:
    """Serves one recording to any number of monitors, each on its own clock."""

    def __init__(
        self,
        path: Path | Iterable[Path],
        *,
        speed: float = 1.0,
        start: float = 0.0,
        loop: bool = False,
        netname: str | None = None,
        on_event: Callable[[str], None] | None = None,
        salvage: bool = False,
    ) -> None:
        #: The files (one, or several read as one recording: see icetools.recordings).
        self.paths = [path] if isinstance(path, Path) else list(path)
        self.salvage = salvage
        self.speed = speed
        self.start_at = start
        self.loop = loop
        self.netname = netname
        self.on_event = on_event or (lambda line: None)
        with open_recording(self.paths, salvage=salvage) as reader:
            self.header = reader.header
            self.name = reader.name()
        # Offer what the recorded scheduler offered (its maximum), as it would have.
        self.version = max(self.header.peer_version, self.header.protocol)
        self.started_at = time.time()
        self.logs: list[MonitorLog] = []
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._monitors: set[asyncio.Task[None]] = set()

    # -- listening ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as e:
            raise IcetoolsError(f"cannot listen on {host}:{port}: {describe_os_error(e)}") from None
        port = self._server.sockets[0].getsockname()[1]
        if self.netname:
            loop = asyncio.get_running_loop()
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Discovery(self), local_addr=(host, port), allow_broadcast=True
                )
            except OSError as e:
                raise IcetoolsError(f"cannot answer discovery on UDP {host}:{port}: {describe_os_error(e)}") from None
        return port

    async def close(self) -> None:
        """Stop listening and end every monitor connection cleanly."""
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for task in self._monitors:
            task.cancel()
        await asyncio.gather(*self._monitors, return_exceptions=True)
        if self._server is not None:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the inner call completes, and then nothing stops the stand-in.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    # -- one monitor -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._monitors.add(task)
        try:
            await self._serve_monitor(reader, writer)
        except asyncio.CancelledError:
            pass  # the stand-in is stopping: _serve_monitor already closed the connection
        finally:
            self._monitors.discard(task)

    async def _serve_monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log = MonitorLog(f"{peer[0]}:{peer[1]}" if peer else "?")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # as the scheduler does
        self.logs.append(log)
        try:
            channel = await self._handshake(reader, writer, log)
            log.protocol, log.peer_version = channel.protocol, channel.peer_version
            self.on_event(f"monitor {log.peer} logged in (protocol {log.protocol})")
            # Like the scheduler we ignore what a monitor sends after MON_LOGIN, but we do
            # notice when it hangs up, also while the recording is idle at its end.
            hangup = asyncio.create_task(_until_eof(reader))
            try:
                await self._play(writer, channel, log, hangup)
            finally:
                hangup.cancel()
        except asyncio.CancelledError:
            log.ended = "the stand-in stopped"
            raise
        except (IcetoolsError, OSError, asyncio.IncompleteReadError) as e:
            # OSError, not only ConnectionError: a timeout or any other socket error ends this
            # monitor's connection, never the stand-in.
            log.ended = log.ended or str(e) or e.__class__.__name__
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self.on_event(f"monitor {log.peer} gone: {log.ended or 'closed'}")

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: MonitorLog) -> Channel:
        channel = Channel(self.version, monitor=False)
        writer.write(channel.data_to_send())

        async def until_login() -> None:
            while True:
                event = channel.next_event()
                out = channel.data_to_send()
                if out:
                    writer.write(out)
                if isinstance(event, Frame):
                    if event.type_word != m.MsgType.MON_LOGIN:
                        # The real scheduler: "invalid first message", connection closed.
                        raise HandshakeError(f"first message was type 0x{event.type_word:02X}, not MON_LOGIN")
                    return
                if event is NEED_DATA or isinstance(event, Negotiated):
                    if event is NEED_DATA:
                        channel.receive_data(await reader.read(4096))
                    continue

        async with asyncio.timeout(LOGIN_TIMEOUT):
            await until_login()
        return channel

    async def _play(
        self, writer: asyncio.StreamWriter, channel: Channel, log: MonitorLog, hangup: asyncio.Task[None]
    ) -> None:
        assert channel.protocol is not None
        transport = writer.transport
        transcode = Transcoder(self.header.protocol, channel.protocol)
        first = True
        while True:
            frames = self._frames(self.start_at if first else 0.0, first)
            first = False
            clock = time.monotonic
            began: float | None = None
            base_t = self.start_at
            for t, frame, protocol in frames:
                if began is None:
                    began = clock()
                    base_t = t
                delay = began + (t - base_t) / self.speed - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                if hangup.done() or transport.is_closing():
                    log.ended = "monitor closed the connection"
                    return
                try:
                    writer.write(transcode(frame, protocol))
                except ProtocolError as e:
                    self.on_event(f"frame at {t:.3f} s not sent to {log.peer}: {e}")
                    continue
                log.frames += 1
                if transport.get_write_buffer_size() > MAX_PENDING:
                    log.ended = "monitor is blocking (not reading), dropped as the scheduler would"
                    transport.abort()
                    return
            if not self.loop:
                break
        # The end of the recording: stay open and quiet, like an idle scheduler, until the
        # monitor hangs up.
        await hangup
        log.ended = "monitor closed the connection"

    def _frames(self, start: float, with_login: bool) -> Iterator[tuple[float, bytes, int]]:
        """(time, frame, its protocol) from ``start`` on; from a later start, the hosts as they
        stood then come first, as the real scheduler sends them on login."""
        reader = open_recording(self.paths, salvage=self.salvage)
        try:
            if start > 0:
                state, records = recording_at(reader, start)
                for stats in login_stats(state):
                    yield start, m.encode(stats, reader.protocol), reader.protocol
            else:
                records = iter(reader)
            yield from _frame_records(records, self.speed)
        finally:
            reader.close()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


def _frame_records(records: Iterable[Record], speed: float) -> Iterator[tuple[float, bytes, int]]:
    """(time to send at, frame, protocol): the record's time less the gaps between files that
    are not waited out (see replay.skipped_by_gap)."""
    skipped = 0.0
    for record in records:
        if type(record) is FrameRecord:
            yield record.t - skipped, record.data, record.protocol
        elif type(record) is CarriedRecord:
            # The state the recorded scheduler had given before the file began: a monitor
            # that connects gets it first, as it would from the scheduler.
            yield record.t - skipped, record.data, record.protocol
        elif type(record) is GapRecord:
            skipped += skipped_by_gap(record, speed)
        elif type(record) is ConnectRecord:
            continue  # the recorded scheduler restarted: its login MON_STATS follow as frames


class _Discovery(asyncio.DatagramProtocol):
    """Answers UDP discovery for the netname like the real scheduler."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        standin = self.standin
        assert standin.netname is not None
        reply = build_reply(data, standin.version, int(standin.started_at), standin.netname)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
