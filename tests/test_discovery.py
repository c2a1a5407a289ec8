"""Scheduler location rules and the discovery datagrams of every scheduler generation.

(Discovery over the network is tested against real schedulers, inside namespaces of ours, in
test_real_cluster.py and test_discover.py; nothing here sends a packet.)
"""

from __future__ import annotations

import struct

import pytest

from icetools import discovery as d
from icetools.errors import SchedulerNotFound


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("build", ("build", 8765)),
        ("build:9000", ("build", 9000)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[::1]:8766", ("::1", 8766)),
        ("[::1]", ("::1", 8765)),
        ("fe80::1", ("fe80::1", 8765)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert d.parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", "host:abc", "host:0", "host:70000", "[::1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(SchedulerNotFound):
        d.parse_hostport(text)


def test_environment_order_is_icecreams() -> None:
    assert d.scheduler_from_environment({"ICECC_SCHEDULER": "a", "USE_SCHEDULER": "b"}) == "a"
    assert d.scheduler_from_environment({"ICECC_SCHEDULER": "", "USE_SCHEDULER": "b:1"}) == "b:1"
    assert d.scheduler_from_environment({}) is None
    assert d.locate_scheduler("x:5", environ={"ICECC_SCHEDULER": "a"}) == ("x", 5)
    assert d.locate_scheduler(None, environ={"USE_SCHEDULER": "b:7"}) == ("b", 7)


def test_request_is_one_byte_version() -> None:
    assert d.build_request(44) == b"\x2c"


def test_current_scheduler_reply_layout() -> None:
    """268 bytes: version+3, BE version, BE start time in two halves, netname (protocol doc 9.2)."""
    reply = d.build_reply(b"\x2c", 43, 0x1_0000_0002, "ICECREAM")
    assert reply is not None and len(reply) == 268
    assert reply[:13] == bytes([0x2F]) + struct.pack(">III", 43, 1, 2)
    assert reply[13:22] == b"ICECREAM\0" and reply[-1] == 0
    assert d.parse_reply(reply, 44, ("10.0.0.1", 8765)) == d.DiscoveryReply("10.0.0.1", 8765, 43, 0x1_0000_0002, "ICECREAM")


@pytest.mark.parametrize(("requester", "size", "first"), [(21, 16, 22), (32, 16, 33), (33, 32, 35), (35, 32, 37), (36, 268, 38), (37, 268, 39), (38, 268, 41)])
def test_reply_forms_by_requester_version(requester: int, size: int, first: int) -> None:
    reply = d.build_reply(bytes([requester]), 44, 1_700_000_000, "NET")
    assert reply is not None and len(reply) == size and reply[0] == first
    parsed = d.parse_reply(reply, requester, ("h", 1))
    assert parsed is not None and parsed.netname == "NET"
    assert parsed.version == (32 if requester < 33 else 44)


def test_foreign_datagrams_are_not_replies() -> None:
    assert d.parse_reply(b"\x2f" + b"\0" * 10, 44, ("h", 1)) is None
    assert d.parse_reply(b"\x99" * 268, 44, ("h", 1)) is None
    assert d.build_reply(b"\x14", 44, 0, "X") is None  # requester below 21 gets no answer
    assert d.build_reply(b"ICF" + b"\0" * 265, 44, 0, "X") is None


def test_netname_bytes_survive_exactly() -> None:
    """Bytes that are not UTF-8 are kept (surrogateescape), not replaced by U+FFFD: discover
    --json shows them exactly, and a netname compares as the bytes icecream compares."""
    reply = d.build_reply(b"\x2c", 43, 1, "x")
    assert reply is not None
    latin1 = reply[:13] + b"caf\xe9".ljust(255, b"\0")
    parsed = d.parse_reply(latin1, 44, ("h", 1))
    assert parsed is not None and parsed.netname == "caf\udce9"
    assert parsed.netname.encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_a_netname_without_nul_loses_its_last_byte_as_in_icecream() -> None:
    """get_broad_answer() writes NUL over the last byte of every answer."""
    reply = d.build_reply(b"\x2c", 43, 1, "x")
    assert reply is not None
    parsed = d.parse_reply(reply[:13] + b"N" * 255, 44, ("h", 1))
    assert parsed is not None and parsed.netname == "N" * 254
    old = d.parse_reply(bytes([45]) + b"O" * 15, 44, ("h", 1))
    assert old is not None and old.netname == "O" * 14


def test_netnames_compare_like_strcasecmp() -> None:
    assert d.same_netname("Beta-2", "bETA-2")
    assert not d.same_netname("ICECREAM", "ICECREAM ")
    assert not d.same_netname("\u00e9", "\u00c9")  # strcasecmp folds ASCII letters only
    assert d.same_netname("caf\udce9", "CAF\udce9")


@pytest.mark.parametrize(
    ("start", "started", "uptime"),
    [
        (1_000_000 - 3725, "1970-01-12T12:44:35Z", 3725),
        (0, None, None),  # protocol <= 32: not sent
        (-5, None, None),  # 33-37 sent it signed
        (1_000_000 + 10, "1970-01-12T13:46:50Z", None),  # in our future: uptime unknown
        (2**64 - 1, None, None),  # no date holds it
    ],
)
def test_start_time_and_uptime(start: int, started: str | None, uptime: int | None) -> None:
    reply = d.DiscoveryReply("10.0.0.1", 8765, 43, start, "NET")
    assert d.reply_json(reply, 1_000_000.5) == {
        "address": "10.0.0.1", "port": 8765, "netname": "NET", "protocol": 43,
        "start_time": start, "started": started, "uptime": uptime,
    }


def test_table_escapes_netnames_and_groups_by_network() -> None:
    replies = [
        d.DiscoveryReply("10.0.0.3", 8765, 42, 100, "beta"),
        d.DiscoveryReply("10.0.0.2", 8766, 43, 0, "ALPHA\x1b[2J"),
        d.DiscoveryReply("10.0.0.1", 8765, 43, 200, "Beta"),
    ]
    lines = d.render_table(d.by_network(replies), 200 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5).splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["ADDRESS", "PORT", "NETNAME", "PROTOCOL"],
        ["10.0.0.2", "8766", "ALPHA\\x1b[2J", "43"],
        ["10.0.0.1", "8765", "Beta", "43"],  # icecream's pick for beta first: the higher version
        ["10.0.0.3", "8765", "beta", "42"],
    ]
    assert lines[1].split()[4:] == ["?", "?"]
    assert lines[2].split()[-2:] == ["2d", "03:04:05"]


def test_nothing_answered_counts_what_was_ignored() -> None:
    assert str(d.nothing_answered(None, 2)) == "no scheduler answered a broadcast within 2 s"
    assert str(d.nothing_answered("NET", 0.5, 1)) == (
        "no scheduler for network 'NET' answered a broadcast within 0.5 s; "
        "ignored 1 datagram that was not a scheduler's answer")


def test_a_flood_of_invented_netnames_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that answers one request with a new netname per datagram (a scripted peer on
    loopback: no real scheduler does this) fills at most MAX_REPLIES entries; the rest are
    counted as ignored, not kept."""
    import socket
    import threading

    monkeypatch.setattr(d, "MAX_REPLIES", 5)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)

    def answer() -> None:
        request, asker = peer.recvfrom(64)
        for i in range(20):
            reply = d.build_reply(request, d.PROTOCOL_VERSION, 1_700_000_000, f"net{i}")
            assert reply is not None
            peer.sendto(reply, asker)
            peer.sendto(reply, asker)  # the same answer twice is one scheduler, not two

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        found = d.collect(port=peer.getsockname()[1], window=1.0, addresses=["127.0.0.1"])
    finally:
        thread.join()
        peer.close()
    assert sorted(r.netname for r in found.replies) == [f"net{i}" for i in range(5)]
    assert found.ignored == 30
