"""Finding the scheduler the way icecream's own tools do.

Order: an explicit ``HOST[:PORT]``, else ``ICECC_SCHEDULER``, else ``USE_SCHEDULER``, else a UDP
broadcast for the network name (``ICECREAM`` by default) on port 8765. The discovery datagrams are
those of icecream's ``DiscoverSched`` (request: one byte, our protocol version; replies in the
16-, 32- and 268-byte forms of every scheduler since protocol 21).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import select
import socket
import struct
import time
from collections.abc import Mapping

from .errors import SchedulerNotFound
from .messages import PROTOCOL_VERSION

DEFAULT_PORT = 8765
DEFAULT_NETNAME = "ICECREAM"
#: How long icecream's DiscoverSched collects replies by default.
DISCOVERY_WINDOW = 2.0
REPLY_SIZE = 268


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if not text:
        raise SchedulerNotFound("empty scheduler address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise SchedulerNotFound(f"bad scheduler address {text!r}: missing ']'")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise SchedulerNotFound(f"bad scheduler address {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise SchedulerNotFound(f"bad port {port_text!r} in scheduler address {text!r}") from None
    if not 0 < port < 65536:
        raise SchedulerNotFound(f"port {port} in scheduler address {text!r} is out of range")
    return host, port


def scheduler_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """``ICECC_SCHEDULER``, else ``USE_SCHEDULER`` (icecream's order), else None."""
    env = os.environ if environ is None else environ
    for name in ("ICECC_SCHEDULER", "USE_SCHEDULER"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class DiscoveryReply:
    """A scheduler that answered: where the answer came from, and what it says.

    ``netname`` was decoded with ``surrogateescape`` (bytes that are not UTF-8 survive, exactly);
    it came from the network, so escape it (render.printable) before showing it. ``start_time``
    is the scheduler's own clock (Unix seconds) as sent, 0 from schedulers before protocol 33,
    which send neither it nor their version (icecream then assumes version 32, and so do we).
    """

    host: str
    port: int
    version: int
    start_time: int
    netname: str

    def started(self) -> datetime.datetime | None:
        """The start time as an aware UTC datetime; None if unknown (0) or not a date at all."""
        if self.start_time <= 0:
            return None
        try:
            return datetime.datetime.fromtimestamp(self.start_time, datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):  # years beyond 9999 and the like
            return None

    def uptime(self, now: float | None = None) -> int | None:
        """Whole seconds since the scheduler started, by our clock; None if the start time is
        unknown, absurd, or in our future (another host's clock ahead of ours: we cannot tell)."""
        now = time.time() if now is None else now
        if self.started() is None or self.start_time > now:
            return None
        return int(now - self.start_time)


@dataclasses.dataclass(frozen=True, slots=True)
class Discovery:
    """Everything one broadcast brought back: each scheduler once, in order of arrival, and how
    many datagrams were not a scheduler's answer (wrong size or mark, a bogus version)."""

    replies: tuple[DiscoveryReply, ...]
    ignored: int


def same_netname(a: str, b: str) -> bool:
    """icecream compares netnames with strcasecmp(): bytewise, ASCII letters folded only."""
    return a.encode("utf-8", "surrogateescape").lower() == b.encode("utf-8", "surrogateescape").lower()


def build_request(version: int = PROTOCOL_VERSION) -> bytes:
    if not 0 < version < 128:
        raise ValueError("discovery requests carry the version in one signed byte")
    return bytes([version])


def parse_reply(data: bytes, own_version: int, source: tuple[str, int]) -> DiscoveryReply | None:
    """Decode a reply to our request in any of its historical forms; None if it is not one."""

    def name_at(offset: int) -> str:
        # icecream's get_broad_answer() overwrites the last byte with NUL: a netname that fills
        # the datagram without a terminator loses its last byte there, so here too.
        return data[offset : size - 1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    size = len(data)
    if size == 16 and data[0] == own_version + 1:
        return DiscoveryReply(source[0], source[1], 32, 0, name_at(1))
    if size in (32, REPLY_SIZE) and data[0] == own_version + 2:
        # Schedulers 33-37 wrote these fields in their own CPU order; little-endian (x86) assumed.
        version, start = struct.unpack_from("<Iq", data, 1)
        return DiscoveryReply(source[0], source[1], version, start, name_at(13))
    if size == REPLY_SIZE and data[0] == own_version + 3:
        version, hi, lo = struct.unpack_from(">III", data, 1)
        return DiscoveryReply(source[0], source[1], version, (hi << 32) | lo, name_at(13))
    return None


def build_reply(request: bytes, version: int, start_time: int, netname: str) -> bytes | None:
    """What a current scheduler answers to ``request`` (used by ``replay --as-scheduler``)."""
    if len(request) != 1:
        return None
    v = struct.unpack("b", request)[0]
    if v < 21:
        return None
    name = netname.encode()
    if v < 33:
        return bytes([v + 1]) + name[:14].ljust(15, b"\0")
    if v < 38:
        # 33-37: the fields in the scheduler's own (here: little-endian) byte order.
        size, name_max = (32, 18) if v < 36 else (REPLY_SIZE, 254)
        body = bytes([v + 2]) + struct.pack("<Iq", version, start_time) + name[:name_max]
        return body.ljust(size, b"\0")
    body = struct.pack(">III", version, start_time >> 32, start_time & 0xFFFFFFFF) + name[:254]
    return (bytes([v + 3]) + body).ljust(REPLY_SIZE, b"\0")


_SIOCGIFFLAGS = 0x8913
_SIOCGIFBRDADDR = 0x8919
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_IFF_UP, _IFF_BROADCAST, _IFF_LOOPBACK, _IFF_POINTOPOINT = 0x1, 0x2, 0x8, 0x10


def broadcast_addresses() -> list[str]:
    """Broadcast address of every IPv4 interface that is up and has one, as icecream uses.

    Loopback and point-to-point interfaces are skipped, as icecream skips them.
    """
    result: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            ifreq = struct.pack("16s16s", name.encode()[:15], b"")
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq), 16)[0]
                if not flags & _IFF_UP or not flags & _IFF_BROADCAST:
                    continue
                if flags & (_IFF_LOOPBACK | _IFF_POINTOPOINT):
                    continue
                broadcast = fcntl.ioctl(s, _SIOCGIFBRDADDR, ifreq)[20:24]
                if broadcast == b"\0\0\0\0":
                    # Configured without "brd" (common with `ip addr add`): derive it.
                    addr = fcntl.ioctl(s, _SIOCGIFADDR, ifreq)[20:24]
                    mask = fcntl.ioctl(s, _SIOCGIFNETMASK, ifreq)[20:24]
                    broadcast = bytes(a | (~m & 0xFF) for a, m in zip(addr, mask))
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(broadcast)
            if address not in result and address != "0.0.0.0":
                result.append(address)
    return result


#: Why a broadcast could not even be sent; the commands add what to do about it.
NO_INTERFACE = "no network interface to broadcast on (loopback and point-to-point links are not used)"


#: The most distinct answers one discovery keeps: far more schedulers than any network runs,
#: few enough that a peer inventing a new netname per datagram cannot make us grow for the window.
MAX_REPLIES = 1024


def collect(
    *,
    port: int = DEFAULT_PORT,
    window: float = DISCOVERY_WINDOW,
    version: int = PROTOCOL_VERSION,
    addresses: list[str] | None = None,
) -> Discovery:
    """Broadcast one discovery request and keep every scheduler that answers within ``window``
    seconds, whatever its netname: icecream's request carries only our version, every
    scheduler answers it with its own netname, and the asker picks (DiscoverSched; getNetnames
    lists them all). A scheduler reached over two interfaces answers twice: kept once per
    address, port and netname."""
    targets = broadcast_addresses() if addresses is None else addresses
    if not targets:
        raise SchedulerNotFound(NO_INTERFACE)
    request = build_request(version)
    replies: dict[tuple[str, int, str], DiscoveryReply] = {}
    ignored = 0  # datagrams that were not answers, and answers beyond MAX_REPLIES
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for address in targets:
            try:
                s.sendto(request, (address, port))
            except OSError:
                continue
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                break
            try:
                # One byte more than any answer: an oversized datagram is then seen as such.
                data, source = s.recvfrom(REPLY_SIZE + 1)
            except OSError:
                continue  # a queued ICMP error; reading it cleared it
            reply = parse_reply(data, version, source)
            # icecream ignores versions outside 1..127 as bogus (try_get_scheduler).
            if reply is None or not 1 <= reply.version < 128:
                ignored += 1
                continue
            key = (reply.host, reply.port, reply.netname)
            if key not in replies and len(replies) >= MAX_REPLIES:
                ignored += 1  # a flood of made-up netnames must not grow us without bound
                continue
            replies.setdefault(key, reply)
    return Discovery(tuple(replies.values()), ignored)


def best_first(replies: list[DiscoveryReply] | tuple[DiscoveryReply, ...]) -> list[DiscoveryReply]:
    """Highest version, then the earliest started: the one icecream's DiscoverSched picks first."""
    return sorted(replies, key=lambda r: (-r.version, r.start_time))


def not_answers(count: int) -> str:
    return "1 datagram that was not a scheduler's answer" if count == 1 else f"{count} datagrams that were not scheduler answers"


def nothing_answered(netname: str | None, window: float, ignored: int = 0, hint: str = "") -> SchedulerNotFound:
    """The error for a broadcast nobody (suitable) answered, the same for every command."""
    who = "no scheduler" if netname is None else f"no scheduler for network {netname!r}"
    extra = f"; ignored {not_answers(ignored)}" if ignored else ""
    return SchedulerNotFound(f"{who} answered a broadcast within {window:g} s{extra}{hint}")


def discover(
    netname: str = DEFAULT_NETNAME,
    *,
    port: int = DEFAULT_PORT,
    window: float = DISCOVERY_WINDOW,
    version: int = PROTOCOL_VERSION,
    addresses: list[str] | None = None,
) -> list[DiscoveryReply]:
    """The schedulers for ``netname`` that answer a broadcast within ``window`` seconds, best
    first (highest version, then the earliest started), as icecream chooses."""
    found = collect(port=port, window=window, version=version, addresses=addresses)
    return best_first([r for r in found.replies if same_netname(r.netname, netname)])


def reply_json(reply: DiscoveryReply, now: float) -> dict[str, object]:
    """One answer for ``discover --json``: exact values (the netname too; json escapes it)."""
    started = reply.started()
    return {
        "address": reply.host,
        "port": reply.port,
        "netname": reply.netname,
        "protocol": reply.version,
        "start_time": reply.start_time,
        "started": None if started is None else started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uptime": reply.uptime(now),
    }


def _local_time(reply: DiscoveryReply) -> str:
    started = reply.started()
    if started is None:
        return "?"
    try:
        return started.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # within a day of year 9999, in some zone
        return "?"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {clock}" if days else clock


def render_table(replies: list[DiscoveryReply] | tuple[DiscoveryReply, ...], now: float) -> str:
    """The answers as a table for people: netnames escaped (they come from the network), start
    times in local time, "?" where a scheduler did not say or said something impossible."""
    from .render import printable  # render pulls in the message tables; only this needs it

    header = ("ADDRESS", "PORT", "NETNAME", "PROTOCOL", "STARTED", "UPTIME")
    rows = [header] + [
        (r.host, str(r.port), printable(r.netname), str(r.version), _local_time(r), _duration(r.uptime(now)))
        for r in replies
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def by_network(replies: list[DiscoveryReply] | tuple[DiscoveryReply, ...]) -> list[DiscoveryReply]:
    """Grouped by netname (as icecream compares them), each group best first."""
    return sorted(
        best_first(replies), key=lambda r: r.netname.encode("utf-8", "surrogateescape").lower()
    )


def locate_scheduler(
    scheduler: str | None = None,
    netname: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    window: float = DISCOVERY_WINDOW,
) -> tuple[str, int]:
    """Where to connect, by icecream's rules: -s, the environment, then discovery."""
    explicit = scheduler or scheduler_from_environment(environ)
    if explicit:
        return parse_hostport(explicit)
    name = netname or DEFAULT_NETNAME
    try:
        replies = discover(name, window=window)
    except SchedulerNotFound as e:
        raise SchedulerNotFound(f"{e}; give the scheduler with -s HOST[:PORT]") from None
    if not replies:
        raise nothing_answered(name, window, hint=" (give one with -s HOST[:PORT] or ICECC_SCHEDULER)")
    return replies[0].host, replies[0].port


__all__ = [
    "DEFAULT_NETNAME",
    "DEFAULT_PORT",
    "Discovery",
    "DiscoveryReply",
    "best_first",
    "broadcast_addresses",
    "by_network",
    "build_reply",
    "build_request",
    "collect",
    "discover",
    "locate_scheduler",
    "not_answers",
    "nothing_answered",
    "parse_hostport",
    "parse_reply",
    "render_table",
    "reply_json",
    "same_netname",
    "scheduler_from_environment",
]
