"""Scheduler location rules and the discovery datagrams of every scheduler generation.

(Discovery over the network is tested against the real scheduler, inside the real cluster's
namespaces, in test_real_cluster.py; nothing here sends a packet.)
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
