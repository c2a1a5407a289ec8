"""``icetools record``: log in to a scheduler as a monitor and write every frame to a capture."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from collections.abc import Callable
from typing import TextIO

from .capture import CaptureWriter
from .connection import AsyncConnection
from .errors import (
    ConnectionClosed,
    HandshakeError,
    IcetoolsError,
    RemoteProtocolError,
    SchedulerNotFound,
)

#: Reconnection backoff: first wait, growth factor, cap (seconds).
BACKOFF_START = 0.5
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 10.0


@dataclasses.dataclass
class RecordStatus:
    frames: int = 0
    bytes: int = 0
    protocol: int | None = None
    state: str = "connecting"
    message: str = ""
    started: float = dataclasses.field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        h, rest = divmod(elapsed, 3600)
        m, s = divmod(rest, 60)
        proto = f"protocol {self.protocol}" if self.protocol else "protocol -"
        size = self.bytes / 1024
        state = self.message if self.state == "retrying" else self.state
        return f"{self.frames} frames, {size:.1f} KiB, {h:d}:{m:02d}:{s:02d}, {proto}, {state}"


class Recorder:
    """Runs one recording. ``locate`` is called for every (re)connection so that discovery can
    find a scheduler that moved."""

    def __init__(
        self,
        writer: CaptureWriter,
        locate: Callable[[], tuple[str, int]],
        *,
        offer: int,
        duration: float | None = None,
        count: int | None = None,
        reconnect: bool = True,
        status_stream: TextIO | None = None,
    ) -> None:
        self.writer = writer
        self.locate = locate
        self.offer = offer
        self.duration = duration
        self.count = count
        self.reconnect = reconnect
        self.status = RecordStatus()
        self.status_stream = status_stream
        self._stop_reason: str | None = None

    async def run(self) -> str:
        """Record until a limit, a signal or (with no reconnect) the end of the connection.
        Returns why it stopped; raises :class:`IcetoolsError` if the first connection fails."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            self._stop_reason = "signal"
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        status_task = asyncio.create_task(self._show_status()) if self.status_stream else None
        work = asyncio.create_task(self._record())
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {work, waiter}, timeout=self.duration, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                reason = work.result()
            else:
                reason = self._stop_reason or "duration"
        finally:
            for task in (work, waiter, status_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, IcetoolsError):
                        await task
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.status_stream:
                self.status.state = "stopped"
                self._print_status(final=True)
        return reason

    async def _record(self) -> str:
        def on_connect(conn: AsyncConnection, address: str) -> None:
            self.writer.connected(conn.protocol, conn.peer_version, self.offer, address)
            self.status.protocol = conn.protocol

        def on_frames(frames: list[bytes]) -> str | None:
            if self.count is not None:
                frames = frames[: self.count - self.writer.frames_written]
            self.writer.frames(frames)
            self.status.frames = self.writer.frames_written
            self.status.bytes = self.writer.bytes_written
            if self.count is not None and self.writer.frames_written >= self.count:
                return "count"
            return None

        return await follow_scheduler(
            self.locate,
            offer=self.offer,
            reconnect=self.reconnect,
            on_connect=on_connect,
            on_frames=on_frames,
            on_disconnect=self.writer.disconnected,
            status=self.status,
        )

    async def _show_status(self) -> None:
        while True:
            self._print_status()
            await asyncio.sleep(0.25)

    def _print_status(self, final: bool = False) -> None:
        assert self.status_stream is not None
        line = f"\r\x1b[2Krecording {self.writer.path}: {self.status.line()}"
        self.status_stream.write(line + ("\n" if final else ""))
        self.status_stream.flush()


async def follow_scheduler(
    locate: Callable[[], tuple[str, int]],
    *,
    offer: int,
    reconnect: bool,
    on_connect: Callable[[AsyncConnection, str], None],
    on_frames: Callable[[list[bytes]], str | None],
    on_disconnect: Callable[[str], None],
    status: RecordStatus,
) -> str:
    """Stay logged in to a scheduler as a monitor, handing every batch of frames to
    ``on_frames`` (which may return a reason to stop). When the scheduler goes away, reconnect
    with backoff (unless ``reconnect`` is false: then return "closed"). The first connection
    must succeed: its failure is raised, since it is most likely a wrong address."""
    backoff = BACKOFF_START
    connected_once = False
    while True:
        try:
            host, port = locate()
            conn = await AsyncConnection.open(host, port, protocol=offer)
        except (SchedulerNotFound, HandshakeError, ConnectionClosed) as e:
            if not connected_once or not reconnect:
                raise
            status.state = "retrying"
            status.message = f"scheduler gone, retrying in {backoff:.1f} s ({e})"
            await asyncio.sleep(backoff)
            backoff = min(backoff * BACKOFF_FACTOR, BACKOFF_MAX)
            continue
        backoff = BACKOFF_START
        on_connect(conn, f"{host}:{port}")
        connected_once = True
        status.state = "connected"
        status.message = f"connected to {host}:{port}, protocol {conn.protocol}"
        try:
            while True:
                reason = on_frames(await conn.read_frames())
                if reason is not None:
                    return reason
        except (ConnectionClosed, RemoteProtocolError) as e:
            # A peer that breaks the framing is treated like one that went away.
            on_disconnect(str(e))
            if not reconnect:
                return "closed"
            status.state = "retrying"
            status.message = f"scheduler gone ({e}), reconnecting"
        finally:
            await conn.close()


def run_recorder(recorder: Recorder) -> str:
    return asyncio.run(recorder.run())


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
