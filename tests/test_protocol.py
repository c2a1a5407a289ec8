"""The sans-IO channel (handshake state machine, framing) and the connections over real TCP."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from icetools import messages as m
from icetools.connection import AsyncConnection, Connection
from icetools.errors import ConnectionClosed, FrameTooLarge, HandshakeError, LocalProtocolError
from icetools.protocol import NEED_DATA, Channel, Frame, FrameBuffer, Negotiated

from .scripted import ScriptedScheduler, handshake, mon_stats, recv_exact, wait_closed

LE = struct.Struct("<I")


def negotiate(channel: Channel, peer: int, confirm: int | None = None) -> Negotiated:
    assert channel.data_to_send() == LE.pack(channel.own_version)
    channel.receive_data(LE.pack(peer))
    assert channel.next_event() is NEED_DATA
    expected = min(peer, channel.own_version)
    assert channel.data_to_send() == LE.pack(expected)
    channel.receive_data(LE.pack(expected if confirm is None else confirm))
    event = channel.next_event()
    assert isinstance(event, Negotiated)
    return event


@pytest.mark.parametrize(("peer", "negotiated"), [(21, 21), (29, 29), (39, 39), (43, 43), (44, 44), (1000, 44)])
def test_handshake_answers_the_minimum(peer: int, negotiated: int) -> None:
    event = negotiate(Channel(44), peer)
    assert event == Negotiated(protocol=negotiated, peer_version=peer)


def test_handshake_offering_lower_version() -> None:
    assert negotiate(Channel(38), 43).protocol == 38


@pytest.mark.parametrize(("peer", "error"), [(20, "below icecream's minimum 21"), (0, "below"), ((1 << 20) + 1, "not a plausible")])
def test_handshake_rejects_bad_peer_versions(peer: int, error: str) -> None:
    channel = Channel(44)
    channel.data_to_send()
    channel.receive_data(LE.pack(peer))
    with pytest.raises(HandshakeError, match=error):
        channel.next_event()


def test_handshake_rejects_confirmation_mismatch() -> None:
    channel = Channel(44)
    channel.data_to_send()
    channel.receive_data(LE.pack(43))
    channel.next_event()
    channel.receive_data(LE.pack(42))
    with pytest.raises(HandshakeError, match="confirmed protocol 42, expected 43"):
        channel.next_event()


def test_handshake_byte_at_a_time_then_frames_in_the_same_packet() -> None:
    channel = Channel(44)
    stream = LE.pack(43) + LE.pack(43) + m.encode(m.MonJobBegin(1, 2, 3), 43)
    events = []
    for i in range(len(stream)):
        channel.receive_data(stream[i : i + 1])
        while (event := channel.next_event()) is not NEED_DATA:
            events.append(event)
    assert events[0] == Negotiated(43, 43)
    assert isinstance(events[1], Frame)
    assert channel.decode(events[1]) == m.MonJobBegin(1, 2, 3)


FRAMES = [
    m.encode(m.MonStats(1, "Name:a\nIP:10.0.0.1\n"), 43),
    m.encode(m.MonGetCS(filename="x/y.c", job_id=1, client_id=1), 43),
    m.encode(m.MonJobDone(job_id=1), 43),
    m.encode(m.Ping(), 43),
]


@pytest.mark.parametrize("mode", ["whole", "byte", "trailing"])
def test_frame_buffer_whole_bytewise_and_with_trailing_bytes(mode: str) -> None:
    stream = b"".join(FRAMES)
    buf = FrameBuffer()
    got: list[bytes] = []
    if mode == "whole":
        buf.feed(stream)
        while (f := buf.next_frame()) is not None:
            got.append(f)
    elif mode == "byte":
        for i in range(len(stream)):
            buf.feed(stream[i : i + 1])
            while (f := buf.next_frame()) is not None:
                got.append(f)
    else:
        buf.feed(stream + FRAMES[0][:7])
        while (f := buf.next_frame()) is not None:
            got.append(f)
        assert buf.pending == 7
    assert got == FRAMES


def test_frame_length_is_checked_before_the_body_arrives() -> None:
    buf = FrameBuffer()
    buf.feed(struct.pack(">I", 0xFFFFFFF0))  # 4 GB announced; nothing else sent
    with pytest.raises(FrameTooLarge, match="4294967280 bytes, over icecream's maximum 1048576"):
        buf.next_frame()


def test_peer_closing_mid_frame_and_mid_handshake() -> None:
    channel = Channel(44, handshake=False)
    channel.receive_data(FRAMES[0][:10])
    channel.receive_data(b"")
    with pytest.raises(ConnectionClosed, match="middle of a frame .10 bytes"):
        channel.next_event()
    channel = Channel(44)
    channel.receive_data(b"\x2b\x00")
    channel.receive_data(b"")
    with pytest.raises(ConnectionClosed, match="during the version handshake"):
        channel.next_event()


def test_sending_before_handshake_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Channel(44).send(m.MonLogin())
    with pytest.raises(LocalProtocolError):
        Channel(20)


# ---- real sockets ------------------------------------------------------------------------


def serve_versions(version: int):  # type: ignore[no-untyped-def]
    """A scripted scheduler offering ``version``; it checks our MON_LOGIN and sends one stats."""

    def script(sock: socket.socket) -> None:
        sock.sendall(LE.pack(version))
        (peer,) = LE.unpack(recv_exact(sock, 4))
        if version < 21 or version > 1 << 20:
            wait_closed(sock)
            return
        negotiated = min(peer, version)
        sock.sendall(LE.pack(negotiated))
        assert LE.unpack(recv_exact(sock, 4))[0] == negotiated
        assert recv_exact(sock, 8) == m.encode(m.MonLogin(), negotiated)
        sock.sendall(mon_stats(1, f"Name:v{negotiated}\n"))
        wait_closed(sock)

    return script


@pytest.mark.parametrize("version", [21, 29, 39, 43, 44, 1000])
def test_blocking_connection_negotiates_with_real_sockets(version: int) -> None:
    with ScriptedScheduler(serve_versions(version)) as server:
        with Connection("127.0.0.1", server.port, timeout=5) as conn:
            assert conn.protocol == min(version, 44)
            assert conn.peer_version == version
            conn.login()
            msg = conn.get_message(timeout=5)
            assert msg == m.MonStats(1, f"Name:v{min(version, 44)}\n")


@pytest.mark.parametrize("version", [20, 1 << 21])
def test_blocking_connection_rejects_bad_peers(version: int) -> None:
    with ScriptedScheduler(serve_versions(version)) as server:
        with pytest.raises(HandshakeError):
            Connection("127.0.0.1", server.port, timeout=5)


@pytest.mark.parametrize("version", [20, 21, 29, 39, 43, 44, 1000])
def test_async_connection_handshake(version: int) -> None:
    async def run() -> tuple[int, list[bytes]]:
        conn = await AsyncConnection.open("127.0.0.1", server.port, timeout=5)
        try:
            return conn.protocol, await conn.read_frames()
        finally:
            await conn.close()

    with ScriptedScheduler(serve_versions(version)) as server:
        if version < 21:
            with pytest.raises(HandshakeError, match="below icecream's minimum"):
                asyncio.run(run())
            return
        protocol, frames = asyncio.run(run())
    assert protocol == min(version, 44)
    assert frames == [mon_stats(1, f"Name:v{protocol}\n")]


def test_silent_peer_times_out_with_a_clear_error() -> None:
    with ScriptedScheduler(lambda sock: wait_closed(sock, 10)) as server:
        with pytest.raises(HandshakeError, match="did not answer the icecream handshake within 0.5 s"):
            Connection("127.0.0.1", server.port, timeout=0.5)


def test_scheduler_handshake_helper_round_trip() -> None:
    """The scripted peer's handshake agrees with ours (guards the test helper itself)."""

    def script(sock: socket.socket) -> None:
        assert handshake(sock, 43) == 43
        sock.sendall(FRAMES[1])
        wait_closed(sock)

    with ScriptedScheduler(script) as server, Connection("127.0.0.1", server.port) as conn:
        assert conn.get_message(timeout=5).job_id == 1
