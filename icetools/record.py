"""``icetools record``: log in to a scheduler as a monitor and write every frame to a capture."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from .capture import CaptureWriter
from .connection import AsyncConnection
from .errors import (
    ConnectionClosed,
    IcetoolsError,
    RemoteProtocolError,
    SchedulerNotFound,
)

#: Reconnection backoff: first wait, growth factor, cap (seconds).
BACKOFF_START = 0.5
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 10.0
#: A connection that stays up this long (seconds) has proved itself: the backoff starts over.
#: Time up rather than frames received, since a scheduler with no daemons says nothing at all.
PROVEN_AFTER = 10.0


@dataclasses.dataclass
class RecordStatus:
    frames: int = 0
    bytes: int = 0
    protocol: int | None = None
    state: str = "connecting"
    message: str = ""
    #: Connection attempts that failed in a row (a connection that dropped before it proved
    #: itself counts as one); 0 again once a connection proves itself.
    failures: int = 0
    #: Connections negotiated so far.
    connects: int = 0
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
        log_stream: TextIO | None = None,
    ) -> None:
        self.writer = writer
        self.locate = locate
        self.offer = offer
        self.duration = duration
        self.count = count
        self.reconnect = reconnect
        self.status = RecordStatus()
        self.status_stream = status_stream
        #: Where retries are told line by line when there is no status line (not a terminal).
        self.log_stream = log_stream
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
            on_retry=self._log,
        )

    def _log(self, line: str) -> None:
        if self.log_stream is not None:
            self.log_stream.write(f"icetools: {line}\n")
            self.log_stream.flush()

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
    on_retry: Callable[[str], None] | None = None,
    keep_trying: bool = False,
) -> str:
    """Stay logged in to a scheduler as a monitor, handing every batch of frames to
    ``on_frames`` (which may return a reason to stop). When the scheduler goes away, reconnect
    with backoff (unless ``reconnect`` is false: then return "closed"). The first connection
    must succeed: its failure is raised, since it is most likely a wrong address.

    Every failure before the next wait is told to ``on_retry`` (one line for people) and
    counted in ``status.failures``. The backoff grows with every failure, a connection that
    opens and then fails included, and only starts over once a connection has proved itself
    by staying up PROVEN_AFTER seconds: a peer that logs us in and hangs up at once is retried
    at the backoff's pace, not thousands of times a second.

    With ``keep_trying`` (and ``reconnect``) a first connection that fails is retried like a
    later one: a serve watching several schedulers starts while one of them is down."""
    backoff = BACKOFF_START
    connected_once = False
    clock = time.monotonic

    async def retry(what: str) -> None:
        nonlocal backoff
        status.failures += 1
        status.state = "retrying"
        status.message = f"{what}; retrying in {backoff:.1f} s"
        if status.failures > 1:
            status.message += f" ({status.failures} failures in a row)"
        if on_retry is not None:
            on_retry(status.message)
        await asyncio.sleep(backoff)
        backoff = min(backoff * BACKOFF_FACTOR, BACKOFF_MAX)

    while True:
        try:
            host, port = await _locate(locate) if connected_once or keep_trying else locate()
            conn = await AsyncConnection.open(host, port, protocol=offer)
        except (SchedulerNotFound, RemoteProtocolError, ConnectionClosed) as e:
            if (not connected_once and not keep_trying) or not reconnect:
                raise
            await retry(f"cannot reconnect: {e}")
            continue
        status.connects += 1
        opened = clock()
        proven = False

        def prove() -> None:
            nonlocal backoff, proven
            proven = True
            backoff = BACKOFF_START
            status.failures = 0

        # A timer rather than a clock read per batch: the frame loop stays as it was, and a
        # quiet scheduler (no daemons, no frames) proves itself all the same.
        timer = asyncio.get_running_loop().call_later(PROVEN_AFTER, prove)
        status.state = "connected"
        status.message = f"connected to {host}:{port}, protocol {conn.protocol}"
        lost: str | None = None
        try:
            on_connect(conn, f"{host}:{port}")
            connected_once = True
            while True:
                reason = on_frames(await conn.read_frames())
                if reason is not None:
                    return reason
        except (ConnectionClosed, RemoteProtocolError) as e:
            # A peer that breaks the framing is treated like one that went away.
            lost = str(e)
            on_disconnect(lost)
            if not reconnect:
                return "closed"
        finally:
            timer.cancel()
            await conn.close()
        if proven:
            # It worked for a while: the scheduler restarted or a network blip. Straight back.
            status.state = "retrying"
            status.message = f"scheduler gone ({lost}), reconnecting"
            if on_retry is not None:
                on_retry(status.message)
        else:
            await retry(f"scheduler {host}:{port} dropped the connection after {clock() - opened:.1f} s ({lost})")


async def _locate(locate: Callable[[], tuple[str, int]]) -> tuple[str, int]:
    """``locate()`` off the event loop: finding the scheduler by broadcast blocks for seconds,
    and Ctrl-C must not wait for it. A daemon thread, not the default executor, whose shutdown
    at the end of asyncio.run would wait for the broadcast all the same."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[str, int]] = loop.create_future()

    def settle(result: tuple[str, int] | None, error: BaseException | None) -> None:
        if done.done():
            return  # the waiter was cancelled meanwhile
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def run() -> None:
        try:
            result, error = locate(), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="icetools-locate", daemon=True).start()
    return await done


def run_recorder(recorder: Recorder) -> str:
    return asyncio.run(recorder.run())


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
