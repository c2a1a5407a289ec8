"""`icetools serve` and `icetools replay --serve`: the cluster in a browser, from one port.

One asyncio server (websockets) answers plain HTTP for the page, its assets, ``/api/state`` and
``/metrics``, and upgrades ``/ws`` to the live-state websocket (docs/websocket-protocol.md).

The :class:`Hub` is a Monitor publisher: it notes what changed, and every 100 ms (when anything
did) serialises one delta, whose bytes every client gets. A client still busy with an earlier
message is not waited for: when it is ready again it is sent the newest snapshot instead of the
deltas it missed, so a slow browser never slows the Monitor or anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import mimetypes
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import messages
from .capture import CaptureReader, CaptureWriter, Record
from .connection import AsyncConnection
from .defaults import SERVE_LISTEN, SERVE_PORT
from .errors import IcetoolsError, ProtocolError, describe_os_error
from .index import open_at
from .metrics import DurationHistogram, metrics_text
from .monitor import Event, EventKind, JobState, Monitor, Publisher
from .record import RecordStatus, follow_scheduler
from .replay import apply_record

DEFAULT_PORT = SERVE_PORT
DEFAULT_LISTEN = SERVE_LISTEN
#: How often deltas go out (at most).
FLUSH_INTERVAL = 0.1
RECENT_JOBS = 200
MAX_CLIENT_MESSAGE = 4096
CLIENT_SNDBUF = 128 * 1024
RATE_WINDOW = 10.0  # seconds of state time over which jobs per second is measured


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# ---- status --------------------------------------------------------------------------------


@dataclasses.dataclass
class Status:
    """What the page's connection indicator shows."""

    mode: str  # "live" or "replay"
    state: str = "connecting"  # connecting, live, retrying, playing, paused, ended
    connected: bool = False
    scheduler: str = ""
    protocol: int | None = None
    speed: float | None = None
    position: float | None = None
    duration: float | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- the hub -------------------------------------------------------------------------------


class Client:
    __slots__ = ("ws", "wake", "sent_seq")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.wake = asyncio.Event()
        self.sent_seq = -1


class Hub(Publisher):
    """Turns Monitor events into snapshots and coalesced deltas for websocket clients."""

    def __init__(self, monitor: Monitor, status: Status) -> None:
        self.monitor = monitor
        self.status = status
        self.seq = 0
        self.clients: set[Client] = set()
        self._dirty_hosts: set[int] = set()
        self._dirty_jobs: dict[int, Any] = {}
        self._finished: list[Any] = []
        self._known_hosts: set[int] = set()
        self._reset = False
        self._last_status = ""
        self._delta: tuple[int, str] | None = None
        self._snapshot: tuple[int, str] | None = None
        self._finish_times: deque[float] = deque()
        self.durations = DurationHistogram()
        self.attach(monitor)

    def attach(self, monitor: Monitor) -> None:
        """Follow ``monitor`` (a new one after a seek); clients get a snapshot of it."""
        if self not in monitor.publishers:
            monitor.add_publisher(self)
        self.monitor = monitor
        self._reset = True
        self._finish_times = deque(j.ended for j in monitor.finished if j.ended is not None)

    # Publisher
    def publish(self, event: Event, monitor: Monitor) -> None:
        kind = event.kind
        if kind is EventKind.RESET:
            self._reset = True
            return
        if event.host is not None:
            self._dirty_hosts.add(event.host.id)
        job = event.job
        if job is None:
            return
        for host_id in (job.client_id, job.server_id):
            if host_id is not None:
                self._dirty_hosts.add(host_id)
        if kind is EventKind.JOB_FINISHED:
            self._dirty_jobs.pop(job.id, None)
            self._finished.append(job)
            self._finish_times.append(event.t)
            if not job.local and not job.lost:
                self.durations.observe(job.real_msec / 1000)
        else:
            self._dirty_jobs[job.id] = job

    # State as JSON
    def _totals(self) -> dict[str, Any]:
        monitor = self.monitor
        totals = dataclasses.asdict(monitor.totals)
        times = self._finish_times
        while times and times[0] < monitor.now - RATE_WINDOW:
            times.popleft()
        totals["jobs_per_second"] = round(len(times) / RATE_WINDOW, 2)
        totals["busy_slots"] = sum(1 for j in monitor.jobs.values() if j.state is JobState.COMPILING)
        totals["total_slots"] = sum(h.max_jobs for h in monitor.hosts.values() if h.online)
        return totals

    def state(self) -> dict[str, Any]:
        monitor = self.monitor
        recent = list(monitor.finished)[-RECENT_JOBS:]
        return {
            "t": round(monitor.now, 3),
            "hosts": [h.to_json() for h in monitor.hosts.values()],
            "jobs": [j.to_json() for j in monitor.jobs.values()],
            "recent": [j.to_json() for j in recent],
            "totals": self._totals(),
        }

    def snapshot_text(self) -> str:
        """The snapshot for the current seq, serialised once however many clients need it."""
        if self._snapshot is None or self._snapshot[0] != self.seq:
            message = {"type": "snapshot", "seq": self.seq, "status": self.status.to_json(), "state": self.state()}
            self._snapshot = (self.seq, _json(message))
        return self._snapshot[1]

    def flush(self) -> None:
        """Build the next delta (or mark a snapshot) if anything changed, and wake the clients."""
        status = _json(self.status.to_json())
        changed = self._reset or self._dirty_hosts or self._dirty_jobs or self._finished
        if not changed and status == self._last_status:
            return
        self._last_status = status
        self.seq += 1
        monitor = self.monitor
        if self._reset:
            self._reset = False
            self._delta = None  # nobody can catch up by a delta: everyone gets a snapshot
        else:
            hosts = monitor.hosts
            removed = sorted(self._known_hosts - hosts.keys())
            delta = {
                "type": "delta",
                "seq": self.seq,
                "t": round(monitor.now, 3),
                "status": self.status.to_json(),
                "hosts": [hosts[h].to_json() for h in sorted(self._dirty_hosts) if h in hosts],
                "removed_hosts": removed,
                "jobs": [j.to_json() for j in self._dirty_jobs.values() if j.id in monitor.jobs],
                "finished": [j.to_json() for j in self._finished],
                "totals": self._totals(),
            }
            self._delta = (self.seq, _json(delta))
        self._known_hosts = set(monitor.hosts)
        self._dirty_hosts.clear()
        self._dirty_jobs.clear()
        self._finished.clear()
        for client in self.clients:
            client.wake.set()

    async def run(self) -> None:
        while True:
            self.flush()
            await asyncio.sleep(FLUSH_INTERVAL)

    # Clients
    async def serve_client(self, ws: ServerConnection, on_command: Callable[[dict[str, Any]], str | None]) -> None:
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed, modest kernel buffer per client (as the scheduler gives its monitors):
            # a stalled browser then shows up as a blocked send within seconds, and gets a
            # snapshot when it is back, instead of the kernel queueing megabytes for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
        client = Client(ws)
        self.clients.add(client)
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for raw in ws:
                try:
                    command = json.loads(raw)
                    if not isinstance(command, dict):
                        raise ValueError
                except ValueError:
                    await ws.close(1003, "messages must be JSON objects")
                    return
                error = on_command(command)
                if error is not None:
                    await ws.send(_json({"type": "error", "message": error}))
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    async def _send_loop(self, client: Client) -> None:
        await client.ws.send(self.snapshot_text())
        client.sent_seq = self.seq
        while True:
            await client.wake.wait()
            client.wake.clear()
            seq = self.seq
            if seq == client.sent_seq:
                continue
            delta = self._delta
            if delta is not None and delta[0] == seq and client.sent_seq == seq - 1:
                text = delta[1]
            else:
                text = self.snapshot_text()  # it missed something: the whole state instead
            await client.ws.send(text)
            client.sent_seq = seq


# ---- static files --------------------------------------------------------------------------


def web_root() -> Path:
    """The page's folder: inside the installed package, or web/ of a source checkout."""
    packaged = resources.files("icetools") / "web"
    if packaged.is_dir() and (packaged / "index.html").is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "web"


def load_assets(root: Path) -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type) for exactly the files of the page, read once.

    Serving from this table rather than from the file system is what makes every other path,
    ``..`` tricks included, a 404.
    """
    assets: dict[str, tuple[bytes, str]] = {}
    if not root.is_dir():
        return assets
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".py":
            continue
        rel = path.relative_to(root).as_posix()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        body = path.read_bytes()
        assets[f"/static/{rel}"] = (body, kind)
        if rel == "index.html":
            assets["/"] = (body, kind)
            assets["/index.html"] = (body, kind)
    return assets


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


# ---- the server ----------------------------------------------------------------------------


class ClusterServer:
    """The HTTP + websocket server around a Monitor and its Hub."""

    def __init__(self, monitor: Monitor, status: Status, *, commands: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        self.status = status
        self.hub = Hub(monitor, status)
        self.assets = load_assets(web_root())
        self.commands = commands or self._no_commands
        self.server: Server | None = None

    @staticmethod
    def _no_commands(command: dict[str, Any]) -> str | None:
        return "replay controls are only accepted by icetools replay --serve"

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # on to the websocket handshake
        if path == "/api/state":
            body = _json({**self.hub.state(), "status": self.status.to_json()}).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            return _response(
                HTTPStatus.OK,
                metrics_text(self.hub.monitor, self.status, self.hub.durations),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        asset = self.assets.get(path)
        if asset is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return _response(HTTPStatus.OK, *asset)

    async def handler(self, ws: ServerConnection) -> None:
        await self.hub.serve_client(ws, self.commands)

    async def start(self, host: str, port: int) -> None:
        try:
            self.server = await serve(
                self.handler,
                host,
                port,
                process_request=self.process_request,
                max_size=MAX_CLIENT_MESSAGE,
                compression=None,  # deltas are small; deflate would cost CPU per client
                server_header=f"icetools/{__import__('icetools').__version__}",
            )
        except OSError as e:
            raise IcetoolsError(f"cannot listen on {host}:{port}: {describe_os_error(e)}") from None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# ---- drivers: what feeds the Monitor -----------------------------------------------------


class ReplayDriver:
    """Plays a capture into the Monitor in recorded time, with pause, speed and seek."""

    def __init__(
        self, path: Path, server_status: Status, hub: Hub, speed: float = 1.0, *, salvage: bool = False
    ) -> None:
        self.path = path
        self.salvage = salvage
        self.status = server_status
        self.hub = hub
        self.status.speed = speed
        self.status.scheduler = path.name
        self.status.state = "playing"
        self.status.connected = True
        self._wake = asyncio.Event()
        self._seek_to: float | None = None
        self.reader = CaptureReader(path, salvage=salvage)
        self.status.protocol = self.reader.header.protocol

    def command(self, command: dict[str, Any]) -> str | None:
        cmd = command.get("cmd")
        if cmd == "pause":
            self.status.state = "paused"
        elif cmd == "play":
            if self.status.state == "ended":
                self._seek_to = 0.0
            self.status.state = "playing"
        elif cmd == "speed":
            value = command.get("value")
            if not isinstance(value, (int, float)) or not 0.1 <= value <= 1000:
                return "speed must be a number from 0.1 to 1000"
            self.status.speed = float(value)
        elif cmd == "seek":
            t = command.get("t")
            if not isinstance(t, (int, float)) or t < 0:
                return "seek needs a time t >= 0 in seconds"
            self._seek_to = float(t)
        else:
            return f"unknown command {cmd!r}"
        self._wake.set()
        return None

    def _duration(self) -> float:
        last = 0.0
        with CaptureReader(self.path, salvage=self.salvage) as reader:
            for record in reader:
                last = record.t
        return last

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.status.duration = await loop.run_in_executor(None, self._duration)
        records = await self._open(0.0)
        while True:
            if self._seek_to is not None:
                target, self._seek_to = self._seek_to, None
                records = await self._open(target)
            if self.status.state != "playing":
                self._wake.clear()
                await self._wake.wait()
                continue
            records = await self._play(records)

    async def _open(self, t: float) -> Iterator[Record]:
        """The Monitor at ``t`` (from the seek index, built in a thread the first time)."""
        loop = asyncio.get_running_loop()
        monitor, records = await loop.run_in_executor(None, lambda: open_at(self.reader, t))
        self.hub.attach(monitor)
        self.status.position = t
        if self.status.state == "ended":
            self.status.state = "playing"
        return records

    async def _play(self, records: Iterator[Record]) -> Iterator[Record]:
        """Play until paused, a seek or the end; returns the records still to play."""
        monitor = self.hub.monitor
        clock = time.monotonic
        start_wall = clock()
        start_t = self.status.position or 0.0
        speed = self.status.speed or 1.0
        pending: list[Record] = []
        for record in records:
            pending = [record]
            due = start_wall + (record.t - start_t) / speed
            while (delay := due - clock()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 0.25))
                if self.status.state != "playing" or self._seek_to is not None or self.status.speed != speed:
                    # Paused, seeking or a new speed: keep this record for later.
                    self.status.position = monitor.now = max(monitor.now, start_t + (clock() - start_wall) * speed)
                    return itertools.chain([record], records)
            pending = []
            apply_record(monitor, record)
            self.status.position = record.t
        if not pending:
            self.status.state = "ended"
            self.status.position = self.status.duration
        return iter(())


class LiveDriver:
    """Follows a real scheduler (reconnecting when it restarts), optionally recording too."""

    def __init__(
        self,
        monitor: Monitor,
        status: Status,
        locate: Callable[[], tuple[str, int]],
        *,
        offer: int,
        writer: CaptureWriter | None = None,
    ) -> None:
        self.monitor = monitor
        self.status = status
        self.locate = locate
        self.offer = offer
        self.writer = writer
        self.follow_status = RecordStatus()
        self._t0 = time.monotonic()

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _on_connect(self, conn: AsyncConnection, address: str) -> None:
        self.monitor.connected(conn.protocol, self._now())
        self.status.connected = True
        self.status.state = "live"
        self.status.scheduler = address
        self.status.protocol = conn.protocol
        self.status.message = f"connected to {address}, protocol {conn.protocol}"
        if self.writer is not None:
            self.writer.connected(conn.protocol, conn.peer_version, self.offer, address)

    def _on_frames(self, frames: list[bytes]) -> None:
        if self.writer is not None:
            self.writer.frames(frames)
        now = self._now()
        protocol = self.monitor.protocol or self.offer
        for frame in frames:
            try:
                self.monitor.feed(messages.decode(frame, protocol), now)
            except ProtocolError:
                pass

    def _on_disconnect(self, reason: str) -> None:
        self.monitor.disconnected(self._now())
        self.status.connected = False
        self.status.state = "retrying"
        self.status.message = f"scheduler gone ({reason}), retrying"
        if self.writer is not None:
            self.writer.disconnected(reason)

    async def run(self) -> str:
        async def mirror_status() -> None:
            # follow_scheduler reports retries in its own status; the page shows them.
            while True:
                if self.follow_status.state == "retrying":
                    self.status.state = "retrying"
                    self.status.message = self.follow_status.message
                await asyncio.sleep(0.2)

        mirror = asyncio.create_task(mirror_status())
        try:
            return await follow_scheduler(
                self.locate,
                offer=self.offer,
                reconnect=True,
                on_connect=self._on_connect,
                on_frames=lambda frames: self._on_frames(frames),
                on_disconnect=self._on_disconnect,
                status=self.follow_status,
            )
        finally:
            mirror.cancel()


async def run_until_stopped(server: ClusterServer, host: str, port: int, driver: Awaitable[Any], on_ready: Callable[[int], None]) -> None:
    """Serve and drive until SIGINT/SIGTERM (or the driver fails)."""
    import signal

    try:
        await server.start(host, port)
    except BaseException:
        if asyncio.iscoroutine(driver):
            driver.close()  # never started: no "coroutine was never awaited" noise
        raise
    on_ready(server.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.ensure_future(driver), asyncio.create_task(server.hub.run()), asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not tasks[2] and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, IcetoolsError):
                await task
        await server.close()
