"""The message layer: byte-exact layouts, round trips at every version where a layout changes."""

from __future__ import annotations

import struct

import pytest

from icetools import messages as m
from icetools.errors import DecodeError, FrameTooLarge, LocalProtocolError

ALL_VERSIONS = range(m.MIN_PROTOCOL_VERSION, m.PROTOCOL_VERSION + 1)


def layout_versions(cls: type[m.Message]) -> list[int]:
    """21, 44 and every version at which a field of ``cls`` appears or disappears."""
    points = {m.MIN_PROTOCOL_VERSION, m.PROTOCOL_VERSION}
    for f in cls.FIELDS:
        points.add(f.since)
        if f.until is not None:
            points |= {f.until - 1, f.until}
    return sorted(points)


def sample(cls: type[m.Message]) -> m.Message:
    """An instance whose every field has a distinct, non-default value."""
    values: dict[str, object] = {}
    for i, f in enumerate(cls.FIELDS, start=1):
        values[f.name] = {
            m.Kind.U32: 1000 + i,
            m.Kind.INT: -i,
            m.Kind.BOOL: True,
            m.Kind.STRING: f"{f.name}/é{i}",
            m.Kind.STRLIST: (f"-a{i}", "", "x y"),
            m.Kind.ENVLIST: (("x86_64", f"env{i}"), ("aarch64", "")),
            m.Kind.BYTES: b"\x00\x01zstd-or-lzo\xff",
        }[f.kind]
    return cls(**values)


MESSAGE_CASES = [
    (cls, version)
    for cls in m.MESSAGE_CLASSES.values()
    if cls is not m.Text
    for version in layout_versions(cls)
]


@pytest.mark.parametrize(
    ("cls", "version"), MESSAGE_CASES, ids=[f"{c.TYPE.name}-{v}" for c, v in MESSAGE_CASES]
)
def test_round_trip_is_byte_exact(cls: type[m.Message], version: int) -> None:
    msg = sample(cls)
    frame = m.encode(msg, version)
    decoded = m.decode(frame, version, monitor=False)
    assert m.encode(decoded, version) == frame
    # Fields of this version survive; fields it lacks come back as their defaults.
    for f in cls.FIELDS:
        expected = getattr(msg, f.name) if f.present(version) else getattr(cls(), f.name)
        assert getattr(decoded, f.name) == expected, f.name
    length, type_word = struct.unpack_from(">II", frame)
    assert length == len(frame) - 4
    assert type_word == cls.TYPE


def test_every_enum_value_has_a_message() -> None:
    assert set(m.MESSAGE_CLASSES) == set(m.MsgType)
    assert m.MsgType.NO_CS == 0x60 and m.MsgType.UNKNOWN == ord("A")


def test_empty_message_frame_is_eight_bytes() -> None:
    assert m.encode(m.Ping(), 43) == bytes.fromhex("00000004 00000042")
    assert m.encode(m.MonLogin(), 21) == bytes.fromhex("00000004 00000052")


def test_offline_stats_frame_matches_icecream() -> None:
    frame = m.encode(m.MonStats(3, "State:Offline\n"), 43)
    assert frame == bytes.fromhex("0000001B 00000057 00000003 0000000F") + b"State:Offline\n\0"
    assert m.decode(frame, 43).offline


def test_string_encoding() -> None:
    assert m.encode(m.StatusText("abc"), 43)[8:] == bytes.fromhex("00000004 61626300")
    assert m.encode(m.StatusText(""), 43)[8:] == bytes.fromhex("00000001 00")


def test_signed_exit_code() -> None:
    frame = m.encode(m.MonJobDone(job_id=7, exitcode=-1), 43)
    assert frame[12:16] == b"\xff\xff\xff\xff"
    assert m.decode(frame, 43).exitcode == -1


def test_mon_job_done_client_count_only_from_39() -> None:
    msg = m.MonJobDone(job_id=1, exitcode=0, client_count=5)
    assert len(m.encode(msg, 38)) == 8 + 11 * 4
    assert len(m.encode(msg, 39)) == 8 + 12 * 4
    assert m.decode(m.encode(msg, 38), 38).client_count == 0
    assert m.decode(m.encode(msg, 39), 39).client_count == 5


def test_mon_get_cs_before_29_carries_a_whole_get_cs() -> None:
    msg = m.MonGetCS(filename="src/a.c", lang=1, job_id=12, client_id=3, count=1, target="x86_64")
    new = m.encode(msg, 29)
    assert new == (
        bytes.fromhex("0000001C 00000053 00000008") + b"src/a.c\0" + bytes.fromhex("00000001 0000000C 00000003")
    )
    old = m.encode(msg, 28)
    decoded = m.decode(old, 28)
    assert (decoded.filename, decoded.job_id, decoded.client_id, decoded.target) == (
        "src/a.c", 12, 3, "x86_64",
    )
    # 21 lacks preferred_host (a string: 5 bytes when empty).
    assert len(m.encode(msg, 21)) == len(old) - 5


def test_head_type_words_on_a_monitor_connection() -> None:
    """A HEAD scheduler sends MON_GET_CS as 0x47 and MON_JOB_DONE as 0x4D (protocol doc 8.6)."""
    get_cs = m.encode(m.MonGetCS(filename="a.c", job_id=4, client_id=2), 44)
    head_get_cs = get_cs[:4] + struct.pack(">I", 0x47) + get_cs[8:]
    msg = m.decode(head_get_cs, 44, monitor=True)
    assert isinstance(msg, m.MonGetCS) and msg.job_id == 4 and msg.client_id == 2
    assert msg.type_word == 0x47 and msg.TYPE is m.MsgType.MON_GET_CS
    assert msg == m.MonGetCS(filename="a.c", job_id=4, client_id=2)
    assert m.encode(msg, 44) == head_get_cs
    done = m.encode(m.MonJobDone(job_id=4, exitcode=1, client_count=2), 44)
    head_done = done[:4] + struct.pack(">I", 0x4D) + done[8:]
    msg = m.decode(head_done, 44, monitor=True)
    assert isinstance(msg, m.MonJobDone) and msg.exitcode == 1
    assert m.encode(msg, 44) == head_done
    # Between daemons the same type words are the real GET_CS / JOB_DONE.
    assert isinstance(m.decode(head_done, 44, monitor=False), m.JobDone)


def test_file_chunk_layout() -> None:
    chunk = m.FileChunk(uncompressed_len=10, compression=1, data=b"abc")
    assert m.encode(chunk, 40)[8:] == bytes.fromhex("0000000A 00000003 00000001") + b"abc"
    assert m.encode(chunk, 39)[8:] == bytes.fromhex("0000000A 00000003") + b"abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/home/u/src/foo.c", "u/src/foo.c"),
        ("/x/y/z.c", "x/y/z.c"),
        ("a/b/c", "a/b/c"),
        ("a/b", "a/b"),
        ("/a/b", "b"),
        ("/b", "b"),
        ("a//b/c", "/b/c"),
        ("foo.c", "foo.c"),
    ],
)
def test_shorten_filename_matches_icecream(text: str, expected: str) -> None:
    assert m.shorten_filename(text) == expected


def test_statmsg_keeps_unknown_keys_and_colons() -> None:
    text = "Name:build1\nIP:192.168.1.5\nMaxJobs:8\nFuture:a:b:c\nFeatures:env_xz env_zstd\n"
    stats = m.parse_statmsg(text)
    assert stats == {
        "Name": "build1",
        "IP": "192.168.1.5",
        "MaxJobs": "8",
        "Future": "a:b:c",
        "Features": "env_xz env_zstd",
    }
    assert m.format_statmsg(stats) == text


def test_non_utf8_strings_survive() -> None:
    frame = m.encode(m.MonLocalJobBegin(1, 2, 3, "x"), 43)
    raw = frame[:-2] + b"\xe9\0"  # the file name becomes a lone Latin-1 byte
    msg = m.decode(raw, 43)
    assert m.encode(msg, 43) == raw


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"\x00\x00\x00\x04\x00\x00", "shorter than the 8-byte"),
        (bytes.fromhex("00000010 00000054 00000001"), "length prefix says 16 bytes but 8"),
        (bytes.fromhex("00000008 00000099 00000001"), "unknown message type 0x99"),
        (bytes.fromhex("0000000C 00000054 00000001 00000002"), "ends at byte 16"),
        (bytes.fromhex("00000014 00000054 00000001 00000002 00000003 00000004"), "4 trailing bytes"),
        (bytes.fromhex("0000000C 00000057 00000001 00000000"), "string length 0"),
        (bytes.fromhex("0000000D 00000057 00000001 00000001 41"), "not NUL-terminated"),
        (bytes.fromhex("00000004 00000059"), "text port"),
    ],
)
def test_bad_frames_are_decode_errors(frame: bytes, error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        m.decode(frame, 43)


def test_oversized_frame_is_rejected_by_its_prefix() -> None:
    header = struct.pack(">II", m.MAX_MSG_SIZE + 1, 0x57)
    with pytest.raises(FrameTooLarge, match="exceeds"):
        m.decode(header + b"\0" * 4, 43)


def test_huge_list_count_is_bounded_before_looping() -> None:
    # GET_NATIVE_ENV at 32: compiler "" then an extrafiles list claiming 4 billion entries.
    payload = bytes.fromhex("00000001 00") + struct.pack(">I", 0xFFFFFFFF)
    frame = struct.pack(">II", len(payload) + 4, m.MsgType.GET_NATIVE_ENV) + payload
    with pytest.raises(DecodeError, match="list count 4294967295 cannot fit"):
        m.decode(frame, 32)


def test_encoding_text_on_a_binary_channel_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        m.encode(m.Text("listcs"), 43)
    assert m.text_line(m.Text("listcs")) == b"listcs\n"


def test_messages_are_frozen() -> None:
    msg = m.MonJobBegin(1, 2, 3)
    with pytest.raises(AttributeError):
        msg.job_id = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        msg.extra = 1  # type: ignore[attr-defined]
    assert msg.replace(job_id=5) == m.MonJobBegin(5, 2, 3) and msg.job_id == 1


def test_equality_is_by_message_type_and_values() -> None:
    assert m.MonJobBegin(1, 2, 3) != (1, 2, 3)
    assert m.NoCS(1, 2) != m.VerifyEnv("a", "b")
    assert m.MonJobBegin(1, 2, 3) != m.JobBegin(1, 2, 3)  # same shape, other message
    assert len({m.MonJobBegin(1, 2, 3), m.MonJobBegin(1, 2, 3)}) == 1
    assert repr(m.MonJobBegin(1, 2, 3)) == "MonJobBegin(job_id=1, stime=2, host_id=3)"
    assert m.GetCS(count=2).count == 2  # a field may shadow a tuple method


def test_seed_api_names() -> None:
    frame = m.LoginMessage().pack(43)
    assert frame == bytes.fromhex("00000004 00000052")
    assert m.unpack(m.MonJobBegin(1, 2, 3).pack(43), 43) == m.MonJobBegin(1, 2, 3)
