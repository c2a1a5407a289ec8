"""Capture files: round trip, torn tails, corruption, future formats, following a live file."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import (
    KIND_FRAME,
    MAGIC,
    CaptureReader,
    CaptureWriter,
    ConnectRecord,
    DisconnectRecord,
    EndRecord,
    FrameRecord,
    read_all,
)
from icetools.errors import CaptureError, NewerFormatError

FRAMES_43 = [
    m.encode(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:2\n"), 43),
    m.encode(m.MonGetCS(filename="src/a.c", job_id=1, client_id=1), 43),
    m.encode(m.MonJobBegin(1, 1700000000, 1), 43),
]
FRAMES_38 = [m.encode(m.MonJobDone(job_id=1, exitcode=0), 38)]


def write_sample(path: Path) -> None:
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "127.0.0.1:8765")
        w.frames(FRAMES_43[:2])
        w.frames(FRAMES_43[2:])
        w.disconnected("peer closed the connection")
        w.connected(38, 43, 38, "127.0.0.1:8765")
        w.frames(FRAMES_38)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    header, records, reader = read_all(path)
    assert (header.protocol, header.peer_version, header.offered, header.scheduler) == (43, 43, 44, "127.0.0.1:8765")
    kinds = [type(r).__name__ for r in records]
    assert kinds == [
        "ConnectRecord", "FrameRecord", "FrameRecord", "FrameRecord",
        "DisconnectRecord", "ConnectRecord", "FrameRecord", "EndRecord",
    ]
    frames = [r for r in records if isinstance(r, FrameRecord)]
    assert [f.data for f in frames] == FRAMES_43 + FRAMES_38
    # Frames after the reconnect are in the newly negotiated layout.
    assert [f.protocol for f in frames] == [43, 43, 43, 38]
    assert records[5] == ConnectRecord(records[5].t, 38, 43, 38, "127.0.0.1:8765", True)
    assert records[4] == DisconnectRecord(records[4].t, "peer closed the connection")
    assert records[-1] == EndRecord(records[-1].t, 4, "closed")
    times = [r.t for r in records]
    assert times == sorted(times)
    assert reader.ended and reader.torn_bytes == 0 and reader.frames == 4


def torn_samples(tmp_path: Path) -> list[Path]:
    """The sample cut inside its end record, inside its last frame record, inside a header."""
    path = tmp_path / "a.icecap"
    write_sample(path)
    data = path.read_bytes()
    torn = []
    for cut in (len(data) - 5, len(data) - 60, len(data) - 100):
        torn.append(tmp_path / f"torn{cut}.icecap")
        torn[-1].write_bytes(data[:cut])
    return torn


def test_torn_tail_keeps_every_complete_frame(tmp_path: Path) -> None:
    for torn in torn_samples(tmp_path):
        with CaptureReader(torn) as reader:
            records = list(reader)
        assert records, "a torn file must not read as empty"
        assert reader.torn_bytes > 0
        assert not reader.ended
        warning = reader.warning()
        assert warning is not None
        assert f"kept {reader.frames} frames, ignored {reader.torn_bytes} trailing bytes" in warning


def test_corruption_in_the_middle_is_an_error_after_what_was_readable(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    data = bytearray(path.read_bytes())
    # Find the second frame record and give it an impossible kind.
    first = data.index(FRAMES_43[0]) - 13
    second = first + 13 + len(FRAMES_43[0])
    assert data[second] == KIND_FRAME
    data[second] = 0x33
    path.write_bytes(bytes(data))
    got = []
    with CaptureReader(path) as reader, pytest.raises(
        CaptureError, match=rf"corrupt capture .* at byte {second}: unknown record kind 0x33 \(kept 1 frames"
    ):
        for record in reader:
            got.append(record)
    assert [type(r) for r in got] == [ConnectRecord, FrameRecord]


def test_frame_length_mismatch_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    data = bytearray(path.read_bytes())
    at = data.index(FRAMES_43[1])
    data[at + 3] ^= 0x01  # the frame's own length prefix no longer matches its record
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="frame length prefix disagrees"):
        read_all(path)


def test_not_a_capture_and_empty_and_newer(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello world, this is not a capture\n")
    with pytest.raises(CaptureError, match="not an icetools capture"):
        CaptureReader(text)
    empty = tmp_path / "empty.icecap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError, match="is empty"):
        CaptureReader(empty)
    newer = tmp_path / "newer.icecap"
    newer.write_bytes(MAGIC + struct.pack(">HI", 2, 2) + b"{}")
    with pytest.raises(NewerFormatError, match="written by a newer icetools .* please upgrade"):
        CaptureReader(newer)
    with pytest.raises(CaptureError, match="no such file"):
        CaptureReader(tmp_path / "missing.icecap")
    with pytest.raises(CaptureError, match="is a directory"):
        CaptureReader(tmp_path)
    cut = tmp_path / "cut.icecap"
    write_sample(cut)
    cut.write_bytes(cut.read_bytes()[:20])
    with pytest.raises(CaptureError, match="inside its .*header"):
        CaptureReader(cut)


def test_unknown_optional_records_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    data = path.read_bytes()
    at = data.index(FRAMES_43[0]) - 13
    (us,) = struct.unpack_from(">Q", data, at + 5)  # stamped like the frame it precedes
    extra = struct.pack(">BIQ", 0x90, 3, us) + b"xyz"
    path.write_bytes(data[:at] + extra + data[at:])
    _, records, _ = read_all(path)
    assert len([r for r in records if isinstance(r, FrameRecord)]) == 4


def test_writer_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    path.write_bytes(b"precious")
    with pytest.raises(CaptureError, match="already exists"):
        CaptureWriter(path)
    assert path.read_bytes() == b"precious"
    with pytest.raises(CaptureError, match="cannot create"):
        CaptureWriter(tmp_path / "no" / "such" / "dir.icecap")


def test_follow_reads_a_file_while_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "live.icecap"
    writer = CaptureWriter(path)
    writer.connected(43, 43, 44, "127.0.0.1:8765")
    writer.frames(FRAMES_43[:1])
    seen: list[object] = []
    first_frame = threading.Event()

    def follow() -> None:
        with CaptureReader(path, follow=True, poll=0.01) as reader:
            for record in reader:
                seen.append(record)
                if isinstance(record, FrameRecord):
                    first_frame.set()

    thread = threading.Thread(target=follow)
    thread.start()
    assert first_frame.wait(10)
    # Write the next record in two pieces, as a slow writer might.
    record = struct.pack(">BIQ", KIND_FRAME, len(FRAMES_43[1]), 10**6) + FRAMES_43[1]
    with open(path, "ab") as raw:
        raw.write(record[:9])
        raw.flush()
        raw.write(record[9:])
    writer._last_us = 10**6
    writer.close("signal")
    thread.join(10)
    assert not thread.is_alive()
    assert [type(r) for r in seen] == [ConnectRecord, FrameRecord, FrameRecord, EndRecord]
    assert seen[2].data == FRAMES_43[1]


def test_header_json_is_documented_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    version, length = struct.unpack_from(">HI", raw, 8)
    header = json.loads(raw[14 : 14 + length])
    assert version == 1
    assert set(header) == {"protocol", "peer_version", "offered", "scheduler", "start", "icetools"}


def test_both_readers_agree_on_every_damaged_record_header(tmp_path: Path) -> None:
    """Iteration (dump --follow, anonymize, paced replays) and pump() (dump, stats, replay
    --fast) tell the same torn tails and the same damage, at the same byte, whichever byte of
    whichever record header is changed; and a torn tail is never more than the last record."""
    data = (Path(__file__).resolve().parent.parent / "recordings" / "build.icecap").read_bytes()
    pos = 14 + struct.unpack_from(">I", data, 10)[0]
    offsets = []
    while pos < len(data):
        offsets.append(pos)
        pos += 13 + struct.unpack_from(">I", data, pos + 1)[0]
    path = tmp_path / "m.icecap"

    def outcome(use_pump: bool) -> tuple[object, ...]:
        try:
            with CaptureReader(path) as reader:
                if use_pump:
                    reader.pump({}, lambda record: None)
                else:
                    list(reader)
                return ("read", reader.frames, reader.torn_bytes)
        except CaptureError as e:
            return ("damage", str(e))

    for at in offsets:
        for i in range(13):
            for flip in (0x01, 0x10, 0x80):
                mutated = bytearray(data)
                mutated[at + i] ^= flip
                path.write_bytes(bytes(mutated))
                iterated, pumped = outcome(False), outcome(True)
                assert iterated == pumped, (at, i, flip)
                if iterated[0] == "read" and iterated[2]:
                    assert len(data) - iterated[2] == offsets[-1], (at, i, flip, iterated)
