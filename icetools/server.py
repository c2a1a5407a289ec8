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
import fcntl
import ipaddress
import itertools
import json
import math
import mimetypes
import socket
import struct
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from . import messages
from .capture import CaptureWriter, Record
from .connection import AsyncConnection
from .defaults import SERVE_LISTEN, SERVE_MAX_CLIENTS, SERVE_PORT
from .errors import CaptureError, IcetoolsError, ProtocolError, describe_os_error
from .index import recording_at
from .metrics import WAIT_BUCKETS, DurationHistogram, metrics_text
from .monitor import Event, EventKind, JobState, Monitor, Publisher
from .record import RecordStatus, follow_scheduler
from .recordings import GapRecord, open_recording
from .replay import apply_record, skipped_by_gap

DEFAULT_PORT = SERVE_PORT
DEFAULT_LISTEN = SERVE_LISTEN
#: How often deltas go out (at most).
FLUSH_INTERVAL = 0.1
RECENT_JOBS = 200
MAX_CLIENT_MESSAGE = 4096
CLIENT_SNDBUF = 128 * 1024
HISTORY_SAMPLES = 600  # utilisation samples kept for the page: at most one per second of state time
RATE_WINDOW = 10.0  # seconds of state time over which jobs per second is measured
#: Websocket clients at once (--max-clients); the next ones are answered 503 before the upgrade.
MAX_CLIENTS = SERVE_MAX_CLIENTS
#: Connections still sending their HTTP request (or being answered) at once, beyond the clients:
#: more are cut at once, so that half-open requests cannot pile up until OPEN_TIMEOUT.
MAX_PENDING = 64
#: Seconds a connection may take to send its whole HTTP request (slowloris).
OPEN_TIMEOUT = 10.0
#: Seconds a websocket client may take to accept one message: a client that does not read for
#: that long is closed (1008) and dropped, so it holds at most one message and a kernel buffer.
SEND_TIMEOUT = 10.0
#: High-water mark of a client's user-space write buffer: above it, a send waits for the client.
WRITE_LIMIT = 32 * 1024
#: Security headers on every HTTP answer. The CSP is the page's own <meta> policy (everything
#: from this server, d3 included, so it works offline) plus what only a header can say: no
#: framing by other sites (clickjacking). No referrer leaks host names to links.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
        "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
ALLOWED_METHODS = ("GET", "HEAD")


def _json(data: Any) -> str:
    # allow_nan=False: NaN and Infinity are not JSON, and browsers' JSON.parse rejects them, so a
    # message holding one would freeze every viewer. State never holds one; this makes sure.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_command(raw: str | bytes) -> dict[str, Any]:
    """A client's message as a JSON object, strictly: text only, no NaN/Infinity, not nested
    deeper than Python's parser can go. Raises ValueError with the reason to send back."""
    if not isinstance(raw, str):
        raise ValueError("binary messages are not accepted: send JSON text")
    try:
        command = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("message nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"messages must be JSON objects: {e}") from None
    if not isinstance(command, dict):
        raise ValueError("messages must be JSON objects")
    return command


def _is_number(value: Any) -> bool:
    """A finite JSON number: not a bool (an int to Python), not NaN or Infinity."""
    return type(value) in (int, float) and math.isfinite(value)


# ---- who may ask ---------------------------------------------------------------------------


def split_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]:port`` -> (lowercase name, v6 without brackets; port), or
    None if it is not a host."""
    value = value.strip().lower()
    port: int | None = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        rest = rest[1:]
    elif value.count(":") > 1:
        name, rest = value, ""  # a bare IPv6 address (only in --allow-host)
    else:
        name, _, rest = value.partition(":")
    if rest:
        if not rest.isdigit() or not 0 < int(rest) < 65536:
            return None
        port = int(rest)
    name = name.rstrip(".")
    if not name or any(c.isspace() or c in "/@?#\\" for c in name):
        return None
    return name, port


def _interface_addresses() -> set[str]:
    """This machine's interface addresses (IPv4 through SIOCGIFADDR, IPv6 from /proc/net/if_inet6;
    link-local ones are left out: browsers do not take zone ids in URLs)."""
    addresses: set[str] = set()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                request = struct.pack("256s", name.encode()[:15])
                reply = fcntl.ioctl(s.fileno(), 0x8915, request)  # SIOCGIFADDR
                addresses.add(socket.inet_ntoa(reply[20:24]))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            address = ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))
            if not address.is_link_local:
                addresses.add(str(address))
    return addresses


def listening_names(host: str) -> set[str]:
    """The Host names a server listening on ``host`` answers to (ports are not compared).

    Loopback: ``localhost`` and the loopback address. A wildcard (0.0.0.0, ::, empty): the machine's
    own names (hostname, fully qualified name), its interface addresses and the loopback ones. Any
    other address: itself; a name: itself and its addresses. A DNS-rebinding page sends its own
    name, which is never among them.
    """
    name = host.strip("[]").lower()
    if name in ("", "0.0.0.0", "::"):
        names = {"localhost", "127.0.0.1", "::1", *_interface_addresses()}
        hostname = socket.gethostname()
        names |= {hostname.lower(), socket.getfqdn(hostname).lower()}
        with contextlib.suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
        return {n.lower() for n in names if n}
    try:
        addresses = [ipaddress.ip_address(name)]
        names = set()
    except ValueError:
        # --listen by name: the server listens on what it resolves to (as for binding).
        names = {name}
        addresses = []
        with contextlib.suppress(OSError, ValueError):
            addresses = [ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(name, None)]
    names |= {str(a) for a in addresses}
    if any(a.is_loopback for a in addresses):
        names.add("localhost")
    return names


class Access:
    """Which requests are answered: the DNS-rebinding and cross-site websocket defences."""

    def __init__(self, names: Iterable[str], allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> None:
        self.names = {n.lower() for n in names}
        for value in allow_hosts:
            parsed = split_host(value)
            if parsed is None:
                raise IcetoolsError(f"--allow-host {value!r}: not a host name")
            self.names.add(parsed[0])
        self.origins = {o.lower().rstrip("/") for o in allow_origins}

    def host_refusal(self, request: Request) -> str | None:
        """Why the Host header is refused, or None."""
        values = request.headers.get_all("Host")
        if len(values) != 1:
            return "a request needs exactly one Host header"
        parsed = split_host(values[0])
        if parsed is None or parsed[0] not in self.names:
            return (
                f"Host {values[0]!r} is not a name this server listens as "
                "(start it with --allow-host NAME to add one)"
            )
        return None

    def origin_refusal(self, request: Request) -> str | None:
        """Why the Origin header of a websocket handshake is refused, or None (after host_refusal).

        Browsers send Origin on every websocket; without one it is not a browser, and not a page
        of another site. The page's own origin is http(s):// and the Host it was asked by."""
        values = request.headers.get_all("Origin")
        if not values:
            return None
        origin = values[0].lower().rstrip("/")
        host = request.headers["Host"].strip().lower()
        if len(values) == 1 and (origin in (f"http://{host}", f"https://{host}") or origin in self.origins):
            return None
        return f"Origin {values[0]!r} is not this page's (start icetools with --allow-origin ORIGIN to add one)"


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
    #: Live: connection attempts that failed in a row (0 once a connection has stayed up).
    failures: int = 0
    #: Live: connections to the scheduler negotiated so far.
    connects: int = 0
    #: serve --record: "recording", or "failed" once the capture could not be written (then
    #: ``recording_error`` says why); None when not recording.
    recording: str | None = None
    recording_error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- the hub -------------------------------------------------------------------------------


class Client:
    __slots__ = ("ws", "wake", "sent")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.wake = asyncio.Event()
        #: Hub -> the seq of that hub's last message this client was sent.
        self.sent: dict[Hub, int] = {}


class Hub(Publisher):
    """Turns one scheduler's Monitor events into snapshots and coalesced deltas for websocket
    clients. A serve watching several schedulers has a hub each; every message carries its
    hub's ``name`` (the scheduler's name) so that the page can route it."""

    def __init__(self, monitor: Monitor, status: Status, name: str = "") -> None:
        self.monitor = monitor
        self.status = status
        self.name = name
        self.seq = 0
        #: The clients to wake after a flush: shared by every hub of a server (see Fanout).
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
        self.waits = DurationHistogram(WAIT_BUCKETS)
        #: Remote jobs seen requested and not started yet: their start observes the wait once
        #: (a job the scheduler begins again elsewhere is not a second wait).
        self._waiting: dict[int, Any] = {}
        #: [t, busy slots, offered slots, jobs waiting], one per second of state time at most.
        self.history: deque[list[float | int]] = deque(maxlen=HISTORY_SAMPLES)
        self._history_new: list[list[float | int]] = []
        self.attach(monitor)

    def attach(self, monitor: Monitor) -> None:
        """Follow ``monitor`` (a new one after a seek); clients get a snapshot of it."""
        if self not in monitor.publishers:
            monitor.add_publisher(self)
        self.monitor = monitor
        self._reset = True
        self._finish_times = deque(j.ended for j in monitor.finished if j.ended is not None)
        self._waiting = {j.id: j for j in monitor.jobs.values() if j.state is JobState.WAITING}
        self.history.clear()  # another moment of the recording: its own history
        self._history_new.clear()

    # Publisher
    def publish(self, event: Event, monitor: Monitor) -> None:
        kind = event.kind
        if kind is EventKind.RESET:
            self._reset = True
            self._waiting.clear()
            return
        if event.host is not None:
            self._dirty_hosts.add(event.host.id)
        job = event.job
        if job is None:
            return
        for host_id in (job.client_id, job.server_id):
            if host_id is not None:
                self._dirty_hosts.add(host_id)
        if kind is EventKind.JOB_SUBMITTED:
            if not job.local:
                waiting = self._waiting
                waiting[job.id] = job
                if len(waiting) > 2 * len(monitor.jobs) + 1000:
                    # Jobs the Monitor dropped (too many in flight) never start here: forget them.
                    self._waiting = {i: j for i, j in waiting.items() if monitor.jobs.get(i) is j}
        elif kind is EventKind.JOB_STARTED:
            if self._waiting.pop(job.id, None) is job and job.submitted is not None and job.started is not None:
                self.waits.observe(max(0.0, job.started - job.submitted))
        if kind is EventKind.JOB_FINISHED:
            self._waiting.pop(job.id, None)
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
        totals["waiting"] = sum(1 for j in monitor.jobs.values() if j.state is JobState.WAITING)
        return totals

    def _sample(self, totals: dict[str, Any]) -> None:
        """A utilisation sample for the page's line, at most one per second of state time."""
        t = round(self.monitor.now, 6)  # the capture's resolution: the sample's exact moment
        history = self.history
        if history and int(t) <= int(history[-1][0]):
            return
        sample = [t, totals["busy_slots"], totals["total_slots"], totals["waiting"]]
        history.append(sample)
        self._history_new.append(sample)

    def state(self) -> dict[str, Any]:
        monitor = self.monitor
        recent = list(monitor.finished)[-RECENT_JOBS:]
        return {
            "t": round(monitor.now, 3),
            "hosts": [h.to_json() for h in monitor.hosts.values()],
            "jobs": [j.to_json() for j in monitor.jobs.values()],
            "recent": [j.to_json() for j in recent],
            "totals": self._totals(),
            "history": list(self.history),
        }

    def snapshot_text(self) -> str:
        """The snapshot for the current seq, serialised once however many clients need it."""
        if self._snapshot is None or self._snapshot[0] != self.seq:
            message = {
                "type": "snapshot",
                "scheduler": self.name,
                "seq": self.seq,
                "status": self.status.to_json(),
                "state": self.state(),
            }
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
            self._sample(self._totals())
            self._history_new.clear()  # (in the snapshot's history)
        else:
            totals = self._totals()
            self._sample(totals)
            hosts = monitor.hosts
            removed = sorted(self._known_hosts - hosts.keys())
            delta = {
                "type": "delta",
                "scheduler": self.name,
                "seq": self.seq,
                "t": round(monitor.now, 3),
                "status": self.status.to_json(),
                "hosts": [hosts[h].to_json() for h in sorted(self._dirty_hosts) if h in hosts],
                "removed_hosts": removed,
                "jobs": [j.to_json() for j in self._dirty_jobs.values() if j.id in monitor.jobs],
                "finished": [j.to_json() for j in self._finished],
                "totals": totals,
                "history": self._history_new[:],
            }
            self._history_new.clear()
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


class Fanout:
    """Every hub's messages to every websocket client, over one connection per client.

    Each hub flushes on its own; a client is sent, per hub, the hub's delta when it has taken
    that hub's previous message, else the hub's newest snapshot. So a slow client never holds
    back the others, and a scheduler that is down or restarting changes nothing in what is sent
    of the others.
    """

    def __init__(self, hubs: list[Hub]) -> None:
        self.hubs = hubs
        self.clients: set[Client] = set()
        for hub in hubs:
            hub.clients = self.clients

    def add(self, hub: Hub) -> None:
        hub.clients = self.clients
        self.hubs.append(hub)

    async def run(self) -> None:
        while True:
            for hub in self.hubs:
                hub.flush()
            await asyncio.sleep(FLUSH_INTERVAL)

    async def serve_client(
        self,
        ws: ServerConnection,
        on_command: Callable[[dict[str, Any]], str | None],
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed, modest kernel buffer per client (as the scheduler gives its monitors):
            # a stalled browser then shows up as a blocked send within seconds, and gets a
            # snapshot when it is back, instead of the kernel queueing megabytes for it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
        client = Client(ws)
        self.clients.add(client)
        sender = asyncio.create_task(self._send_loop(client, send_timeout))
        try:
            async for raw in ws:
                try:
                    command = parse_command(raw)
                except ValueError as e:
                    await ws.close(1003, str(e)[:120])  # a close reason is at most 123 bytes
                    return
                error = on_command(command)
                if error is not None:
                    await self._send(ws, _json({"type": "error", "message": error}), send_timeout)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    @staticmethod
    async def _send(ws: ServerConnection, text: str, timeout: float) -> None:
        """Send, or drop a client that has not taken the message within ``timeout`` seconds.

        A send waits while more than WRITE_LIMIT bytes wait for the client, so what a client
        holds back is one message, its write buffer and its kernel buffer, for a bounded time.
        """
        try:
            async with asyncio.timeout(timeout):
                await ws.send(text)
        except TimeoutError:
            # It does not read, so a closing handshake would wait for it too: send the close
            # frame for the record and cut the connection.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.1):
                    await ws.close(1008, f"too slow: a message was not taken within {timeout:g} s")
            ws.transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _send_loop(self, client: Client, timeout: float) -> None:
        ws = client.ws
        sent = client.sent
        for hub in self.hubs:
            seq = hub.seq
            await self._send(ws, hub.snapshot_text(), timeout)
            sent[hub] = seq
        while True:
            await client.wake.wait()
            client.wake.clear()
            for hub in self.hubs:
                seq = hub.seq
                last = sent.get(hub, -1)
                if seq == last:
                    continue
                delta = hub._delta
                if delta is not None and delta[0] == seq and last == seq - 1:
                    text = delta[1]
                else:
                    text = hub.snapshot_text()  # it missed something: the whole state instead
                await self._send(ws, text, timeout)
                sent[hub] = seq


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


def _response(status: HTTPStatus, body: bytes, content_type: str, *extra: tuple[str, str]) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _refusal(status: HTTPStatus, reason: str, *extra: tuple[str, str]) -> Response:
    return _response(status, f"{status.value} {status.phrase}: {reason}\n".encode(), "text/plain; charset=utf-8", *extra)


# ---- the server ----------------------------------------------------------------------------


class ClusterServer:
    """The HTTP + websocket server around a Monitor and its Hub.

    What it answers (README "Errors"): GET and HEAD only; requests whose Host is a name it listens
    as (or --allow-host); websockets from its own page or no page (or --allow-origin); at most
    ``max_clients`` websockets, each dropped when it does not take a message within
    ``send_timeout`` seconds.
    """

    def __init__(
        self,
        monitor: Monitor,
        status: Status,
        *,
        name: str = "",
        commands: Callable[[dict[str, Any]], str | None] | None = None,
        allow_hosts: Iterable[str] = (),
        allow_origins: Iterable[str] = (),
        max_clients: int = MAX_CLIENTS,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.status = status
        self.hub = Hub(monitor, status, name)
        #: One hub per scheduler, in the order given; the first is ``hub``.
        self.fanout = Fanout([self.hub])
        self.assets = load_assets(web_root())
        self.commands = commands or self._no_commands
        self.server: Server | None = None
        self.allow_hosts = tuple(allow_hosts)
        self.allow_origins = tuple(allow_origins)
        self.access = Access((), self.allow_hosts, self.allow_origins)  # checks the options now
        self.max_clients = max_clients
        self.send_timeout = send_timeout
        #: Websocket connections admitted (101 sent or about to be), until they are closed.
        self._admitted: set[ServerConnection] = set()
        #: Every TCP connection, to cut a flood of half-open HTTP requests.
        self._connections: set[ServerConnection] = set()

    @property
    def hubs(self) -> list[Hub]:
        return self.fanout.hubs

    def add_scheduler(self, name: str, monitor: Monitor, status: Status) -> Hub:
        """Watch one more scheduler: its own hub, sent to every client after the others'."""
        hub = Hub(monitor, status, name)
        self.fanout.add(hub)
        return hub

    @staticmethod
    def _no_commands(command: dict[str, Any]) -> str | None:
        return "replay controls are only accepted by icetools replay --serve"

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.method not in ALLOWED_METHODS:
            return _refusal(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here", ("Allow", ", ".join(ALLOWED_METHODS)))
        refusal = self.access.host_refusal(request)
        if refusal is not None:
            status = HTTPStatus.BAD_REQUEST if "Host" not in request.headers else HTTPStatus.FORBIDDEN
            return _refusal(status, refusal)
        path, _, query = request.path.partition("?")
        if path == "/ws" and request.method == "GET":
            refusal = self.access.origin_refusal(request)
            if refusal is not None:
                return _refusal(HTTPStatus.FORBIDDEN, refusal)
            return None  # on to the websocket handshake (the client count is in process_response)
        response = self._get(path, query)
        if request.method == "HEAD":
            # The headers of the GET (Content-Length included), without its body.
            response = Response(response.status_code, response.reason_phrase, response.headers, b"")
        return response

    def _hub_named(self, query: str) -> Hub | Response:
        """The hub ``?scheduler=NAME`` asks for; without it the only one, else a 400/404
        naming the schedulers there are."""
        names = urllib.parse.parse_qs(query).get("scheduler")
        hubs = self.hubs
        known = ", ".join(repr(h.name) for h in hubs)
        if names is None:
            if len(hubs) == 1:
                return hubs[0]
            return _refusal(
                HTTPStatus.BAD_REQUEST,
                f"this server watches {len(hubs)} schedulers: ask for one with "
                f"/api/state?scheduler=NAME ({known}); /api/schedulers lists them",
            )
        for hub in hubs:
            if len(names) == 1 and hub.name == names[0]:
                return hub
        return _refusal(HTTPStatus.NOT_FOUND, f"no scheduler {names[-1]!r} here (there are {known})")

    def _get(self, path: str, query: str = "") -> Response:
        if path == "/api/state":
            hub = self._hub_named(query)
            if isinstance(hub, Response):
                return hub
            body = _json({**hub.state(), "status": hub.status.to_json()}).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/api/schedulers":
            body = _json(
                {"schedulers": [{"name": h.name, "status": h.status.to_json(), "totals": h._totals()} for h in self.hubs]}
            ).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            return _response(
                HTTPStatus.OK,
                metrics_text([(h.name, h.monitor, h.status, h.durations, h.waits) for h in self.hubs]),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        if path == "/ws":
            return _refusal(HTTPStatus.UPGRADE_REQUIRED, "/ws is a websocket", ("Upgrade", "websocket"))
        asset = self.assets.get(path)
        if asset is None:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return _response(HTTPStatus.OK, *asset)

    def process_response(self, connection: ServerConnection, request: Request, response: Response) -> Response | None:
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            # Counted here, where the upgrade is certain, rather than in process_request: a
            # handshake can still fail between the two.
            self._admitted = {c for c in self._admitted if c.protocol.state is not State.CLOSED}
            if len(self._admitted) < self.max_clients:
                self._admitted.add(connection)
                return None
            response = _refusal(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"this server already has {self.max_clients} viewers (see --max-clients)",
                ("Retry-After", "10"),
            )
        return _with_security_headers(response)

    async def handler(self, ws: ServerConnection) -> None:
        try:
            await self.fanout.serve_client(ws, self.commands, self.send_timeout)
        finally:
            self._admitted.discard(ws)

    def _connection(self, *args: Any, **kwargs: Any) -> ServerConnection:
        return _CountedConnection(self, *args, **kwargs)

    async def start(self, host: str, port: int) -> None:
        self.access = Access(listening_names(host), self.allow_hosts, self.allow_origins)
        try:
            self.server = await serve(
                self.handler,
                host,
                port,
                process_request=self.process_request,
                process_response=self.process_response,
                create_connection=self._connection,
                max_size=MAX_CLIENT_MESSAGE,
                open_timeout=OPEN_TIMEOUT,
                write_limit=WRITE_LIMIT,
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


def _with_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS:
        response.headers[name] = value
    response.headers["Connection"] = "close"  # one request per connection
    return response


class _HttpProtocol(ServerProtocol):
    """websockets' server protocol, answering the requests its parser drops without a word.

    websockets parses only what a websocket handshake can be: a request with a body
    (Content-Length, Transfer-Encoding), as a POST usually has, or an unknown HTTP version fails
    its parser, and it just closes the connection. Those get a 405 (with Allow) or a 400 here;
    everything else goes on exactly as in websockets.
    """

    def parse(self) -> Iterator[None]:  # type: ignore[override]
        if self.state is State.CONNECTING:
            lines: list[bytes] = []

            def read_line(m: int, too_long: type[Exception]) -> Iterator[None]:  # type: ignore[misc]
                line = yield from self.reader.read_line(m, too_long)
                lines.append(bytes(line))
                return line

            try:
                request = yield from Request.parse(read_line)  # type: ignore[arg-type]
            except (RequestLineTooLong, HeaderLineTooLong, TooManyHeaders) as e:
                status = HTTPStatus.REQUEST_URI_TOO_LONG if isinstance(e, RequestLineTooLong) else HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                self.handshake_exc = e
                self.send_response(_with_security_headers(_refusal(status, str(e))))
                yield
                return
            except Exception as e:  # what websockets' parser does not take (its own words)
                self.handshake_exc = e
                method = lines[0].split(b" ", 1)[0].decode("ascii", "replace") if lines else ""
                if lines and method not in ALLOWED_METHODS:
                    response = _refusal(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not served here", ("Allow", ", ".join(ALLOWED_METHODS)))
                else:
                    response = _refusal(HTTPStatus.BAD_REQUEST, f"not a request this server takes: {e}")
                if lines and not isinstance(e, EOFError):  # else nobody is there to answer
                    self.send_response(_with_security_headers(response))
                else:
                    self.send_eof()
                    self.parser = self.discard()
                    next(self.parser)
                yield
                return
            self.events.append(request)
        yield from Protocol.parse(self)


class _CountedConnection(ServerConnection):
    """websockets' connection, counted by its server: beyond its clients and MAX_PENDING
    requests in progress, a new TCP connection is cut before anything is read from it."""

    def __init__(self, owner: ClusterServer, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # serve() builds websockets' ServerProtocol itself, with no hook for the class: make it
        # ours before it has seen a byte, restarting its parser (a generator of that class).
        protocol.__class__ = _HttpProtocol
        protocol.parser = protocol.parse()
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        connections = self.owner._connections
        connections.add(self)
        if len(connections) > self.owner.max_clients + MAX_PENDING:
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._connections.discard(self)
        super().connection_lost(exc)


# ---- drivers: what feeds the Monitor -----------------------------------------------------


class ReplayDriver:
    """Plays a capture into the Monitor in recorded time, with pause, speed and seek."""

    def __init__(
        self, path: Path | Iterable[Path], server_status: Status, hub: Hub, speed: float = 1.0, *, salvage: bool = False
    ) -> None:
        #: The files (one, or several read as one recording: see icetools.recordings).
        self.paths = [path] if isinstance(path, Path) else list(path)
        self.salvage = salvage
        self.status = server_status
        self.hub = hub
        self.reader = open_recording(self.paths, salvage=salvage)
        self.name = self.reader.name()
        self.status.speed = speed
        self.status.scheduler = self.name
        self.status.state = "playing"
        self.status.connected = True
        self._wake = asyncio.Event()
        self._seek_to: float | None = None
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
            if not _is_number(value) or not 0.1 <= value <= 1000:
                return "speed must be a number from 0.1 to 1000"
            self.status.speed = float(value)
        elif cmd == "seek":
            t = command.get("t")
            if not _is_number(t) or t < 0:
                return "seek needs a time t >= 0 in seconds"
            self._seek_to = float(t)
        else:
            return f"unknown command {cmd!r}"
        self._wake.set()
        return None

    def _duration(self) -> float:
        last = 0.0
        with open_recording(self.paths, salvage=self.salvage) as reader:
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
        monitor, records = await loop.run_in_executor(None, lambda: recording_at(self.reader, t))
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
        skipped = 0.0  # recorded seconds of gaps between files not waited out
        for record in records:
            pending = [record]
            if type(record) is GapRecord:
                skipped += skipped_by_gap(record, speed)
            due = start_wall + (record.t - start_t - skipped) / speed
            while (delay := due - clock()) > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for, which on 3.11 can swallow the cancellation
                # that stops the server.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, 0.25)):
                        await self._wake.wait()
                if self.status.state != "playing" or self._seek_to is not None or self.status.speed != speed:
                    # Paused, seeking or a new speed: keep this record for later.
                    self.status.position = monitor.now = max(
                        monitor.now, start_t + skipped + (clock() - start_wall) * speed
                    )
                    return itertools.chain([record], records)
            pending = []
            apply_record(monitor, record)
            self.status.position = record.t
        if not pending:
            self.status.state = "ended"
            self.status.position = self.status.duration
        return iter(())


class LiveDriver:
    """Follows a real scheduler (reconnecting when it restarts), optionally recording too.

    Recording is a passenger: when the capture cannot be written (a full disk) the recording
    stops, says so (``log``, the status, /metrics), and the page and metrics go on.
    """

    def __init__(
        self,
        monitor: Monitor,
        status: Status,
        locate: Callable[[], tuple[str, int]],
        *,
        offer: int,
        writer: CaptureWriter | None = None,
        log: Callable[[str], None] | None = None,
        t0: float | None = None,
        keep_trying: bool = False,
    ) -> None:
        self.monitor = monitor
        self.status = status
        self.locate = locate
        self.offer = offer
        self.writer = writer
        self.log = log or (lambda line: None)
        self.follow_status = RecordStatus()
        #: Retry a first connection that fails instead of raising (several schedulers: one
        #: that is down at start-up must not keep the others from being served).
        self.keep_trying = keep_trying
        # The drivers of one serve share their time origin, so that the states of several
        # schedulers (their jobs' times, their utilisation samples) line up on one clock.
        self._t0 = time.monotonic() if t0 is None else t0
        if writer is not None:
            status.recording = "recording"

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _record(self, write: Callable[[CaptureWriter], None]) -> None:
        """Hand one record to the capture; a failure ends the recording, not the server."""
        writer = self.writer
        if writer is None:
            return
        try:
            write(writer)
        except CaptureError as e:
            self.writer = None
            with contextlib.suppress(CaptureError):
                writer.close("error")  # an end record if it still fits; the file is whole anyway
            self.status.recording = "failed"
            self.status.recording_error = str(e)
            self.log(f"recording stopped: {e}; serving goes on")

    def _on_connect(self, conn: AsyncConnection, address: str) -> None:
        self.monitor.connected(conn.protocol, self._now())
        self.status.connected = True
        self.status.state = "live"
        self.status.scheduler = address
        self.status.protocol = conn.protocol
        self.status.message = f"connected to {address}, protocol {conn.protocol}"
        self.status.failures = self.follow_status.failures
        self.status.connects = self.follow_status.connects
        self._record(lambda w: w.connected(conn.protocol, conn.peer_version, self.offer, address))

    def _on_frames(self, frames: list[bytes]) -> None:
        self.status.failures = self.follow_status.failures  # 0 once the connection proved itself
        self._record(lambda w: w.frames(frames))
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
        self._record(lambda w: w.disconnected(reason))

    def _on_retry(self, message: str) -> None:
        # Straight to the page and the log: a peer that keeps failing must be seen failing.
        self.status.connected = False
        self.status.state = "retrying"
        self.status.message = message
        self.status.failures = self.follow_status.failures
        self.log(message)

    async def run(self) -> str:
        return await follow_scheduler(
            self.locate,
            offer=self.offer,
            reconnect=True,
            on_connect=self._on_connect,
            on_frames=self._on_frames,
            on_disconnect=self._on_disconnect,
            status=self.follow_status,
            on_retry=self._on_retry,
            keep_trying=self.keep_trying,
        )


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
    tasks = [asyncio.ensure_future(driver), asyncio.create_task(server.fanout.run()), asyncio.create_task(stop.wait())]
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
