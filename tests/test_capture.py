"""Capture files: round trip, torn tails, corruption, future formats, following a live file."""

from __future__ import annotations

import json
import re
import struct
import threading
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import (
    FORMAT_VERSION,
    KIND_CARRIED,
    KIND_FRAME,
    MAGIC,
    CaptureReader,
    CaptureWriter,
    CarriedRecord,
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
    newer.write_bytes(MAGIC + struct.pack(">HI", FORMAT_VERSION + 1, 2) + b"{}")
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
    assert version == 2
    assert set(header) == {"protocol", "peer_version", "offered", "scheduler", "start", "icetools", "series", "part"}
    assert re.fullmatch("[0-9a-f]{32}", header["series"]) and header["part"] == 0


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


# ---- format 2: series, part, netname, rotated connect records, carried frames ----------------

CARRIED_STATS = m.encode(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:2\n"), 43)
CARRIED_GET_CS = m.encode(m.MonGetCS(filename="a.c", lang=0, job_id=7, client_id=1), 43)
CARRIED_BEGIN = m.encode(m.MonJobBegin(job_id=7, stime=0, host_id=1), 43)
LIVE_DONE = m.encode(m.MonJobDone(job_id=7, exitcode=0), 43)


def write_part(path: Path, *, series: str = "0123456789abcdef0123456789abcdef") -> None:
    """A rotated part: header with series/part/netname, a rotated connect record at 0.5 s, three
    carried frames received before the file began, then a frame received during it."""
    with CaptureWriter(path, series=series, part=3, netname="farm") as w:
        w.connected(43, 43, 44, "127.0.0.1:8765", t=0.5, rotated=True)
        w.carried([(-12.25, CARRIED_STATS), (-3.0, CARRIED_GET_CS), (-2.5, CARRIED_BEGIN)])
        w.frames([LIVE_DONE], t=1.0)


def test_format_2_round_trip_of_carried_frames_and_new_header_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    header, records, reader = read_all(path)
    assert reader.version == 2
    assert (header.series, header.part, header.netname) == ("0123456789abcdef0123456789abcdef", 3, "farm")
    assert records[0] == ConnectRecord(0.5, 43, 43, 44, "127.0.0.1:8765", False, True)
    assert records[1:4] == [
        CarriedRecord(0.5, -12.25, CARRIED_STATS, 43),
        CarriedRecord(0.5, -3.0, CARRIED_GET_CS, 43),
        CarriedRecord(0.5, -2.5, CARRIED_BEGIN, 43),
    ]
    assert records[4] == FrameRecord(1.0, LIVE_DONE, 43)
    # Carried frames are not frames of this file: not counted as such, in the reader nor the
    # end record.
    assert reader.frames == 1 and reader.carried == 3
    assert records[5] == EndRecord(1.0, 1, "closed")
    # A new writer starts a new series at part 0.
    other = tmp_path / "o.icecap"
    with CaptureWriter(other) as w:
        w.connected(43, 43, 44, "x:1")
    first = CaptureReader(other).header
    assert first.part == 0 and first.netname is None and re.fullmatch("[0-9a-f]{32}", first.series or "")
    assert first.series != header.series


def test_pump_applies_carried_frames_at_their_original_time_or_skips_them(tmp_path: Path) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    for carried in (True, False):
        seen: list[tuple[str, float]] = []
        events: list[object] = []
        shown: list[CarriedRecord] = []
        handlers = {
            cls: (lambda msg, t, name=cls.__name__: seen.append((name, t)))
            for cls in (m.MonStats, m.MonGetCS, m.MonJobBegin, m.MonJobDone)
        }
        with CaptureReader(path) as reader:
            result = reader.pump(handlers, events.append, carried=carried, on_carried=shown.append)
            assert (reader.frames, reader.carried) == (1, 3)
        assert result.frames == 1 and result.undecodable == 0 and result.stopped == "end"
        applied = [("MonStats", -12.25), ("MonGetCS", -3.0), ("MonJobBegin", -2.5)] if carried else []
        assert seen == applied + [("MonJobDone", 1.0)]
        assert [type(e) for e in events] == [ConnectRecord, EndRecord]
        assert [(r.t, r.original, r.data) for r in shown] == [
            (0.5, -12.25, CARRIED_STATS), (0.5, -3.0, CARRIED_GET_CS), (0.5, -2.5, CARRIED_BEGIN)
        ]
    # pump(until) before the carried records' time stops before them.
    with CaptureReader(path) as reader:
        seen = []
        result = reader.pump({m.MonStats: lambda msg, t: seen.append(t)}, lambda r: None, until=0.25)
        assert result.stopped == "until" and seen == [] and reader.carried == 0


def test_version_1_files_still_read_without_the_new_keys() -> None:
    for path in sorted((Path(__file__).resolve().parent.parent / "recordings").glob("*.icecap")):
        with CaptureReader(path) as reader:
            records = list(reader)
        assert reader.version == 1, path
        assert (reader.header.series, reader.header.part, reader.header.netname) == (None, None, None)
        assert reader.carried == 0 and not any(type(r) is CarriedRecord for r in records)
        assert not any(type(r) is ConnectRecord and r.rotated for r in records)


def _with_header(path: Path, **changes: object) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack_from(">I", raw, 10)
    header = json.loads(raw[14 : 14 + length])
    header.update(changes)
    new = json.dumps(header).encode()
    path.write_bytes(raw[:10] + struct.pack(">I", len(new)) + new + raw[14 + length :])


@pytest.mark.parametrize(
    "key, value",
    [
        ("series", "0123456789ABCDEF0123456789ABCDEF"), ("series", "0123"), ("series", 5), ("series", None),
        ("part", -1), ("part", "1"), ("part", 1.0), ("part", True), ("part", None),
        ("netname", 5), ("netname", ["farm"]), ("netname", None),
    ],
)
def test_new_header_keys_are_strictly_typed(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    _with_header(path, **{key: value})
    with pytest.raises(CaptureError, match=f"header is not valid: '{key}' is"):
        CaptureReader(path)


def _carried_record(original_us: int, frame: bytes, us: int = 500_000) -> bytes:
    body = struct.pack(">q", original_us) + frame
    return struct.pack(">BIQ", KIND_CARRIED, len(body), us) + body


def test_damaged_carried_records_and_rotated_connects_are_damage_for_both_readers(tmp_path: Path) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    data = path.read_bytes()
    (length,) = struct.unpack_from(">I", data, 10)
    connect_at = 14 + length
    carried_at = connect_at + 13 + struct.unpack_from(">I", data, connect_at + 1)[0]
    end_at = len(data) - 13 - len(b'{"frames":1,"reason":"closed"}')
    assert data[end_at] == 0x04  # the end record
    cases = {
        # the frame's own length prefix disagrees with the carried record's length
        "length prefix": data[:carried_at] + _carried_record(-1, CARRIED_STATS[:3] + b"\x00" + CARRIED_STATS[4:]) + data[carried_at:],
        # received after it was carried
        "after it was carried": data[:carried_at] + _carried_record(600_000, CARRIED_STATS) + data[carried_at:],
        # too short to hold a frame
        "of 12 bytes": data[:carried_at] + struct.pack(">BIQ", KIND_CARRIED, 12, 500_000) + bytes(12) + data[carried_at:],
        # after the file's frames
        "after frame records": data[:end_at] + _carried_record(-1, CARRIED_STATS, us=1_000_000) + data[end_at:],
        "reconnection and a rotation": data.replace(b'"reconnect":false', b'"reconnect":true '),
        "'rotated' is": data.replace(b'"rotated":true', b'"rotated":1   '),
    }
    for what, damaged in cases.items():
        path.write_bytes(damaged)
        for use_pump in (False, True):
            with CaptureReader(path) as reader, pytest.raises(CaptureError, match=f"corrupt capture .*{re.escape(what)}"):
                if use_pump:
                    reader.pump({}, lambda r: None)
                else:
                    list(reader)


def test_a_carried_record_cut_short_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    data = path.read_bytes()
    (length,) = struct.unpack_from(">I", data, 10)
    connect_at = 14 + length
    starts = [connect_at + 13 + struct.unpack_from(">I", data, connect_at + 1)[0]]
    for _ in range(3):
        starts.append(starts[-1] + 13 + struct.unpack_from(">I", data, starts[-1] + 1)[0])
    last = starts[2]  # the third carried record
    for cut in range(last + 1, starts[3]):
        path.write_bytes(data[:cut])
        for use_pump in (False, True):
            with CaptureReader(path) as reader:
                if use_pump:
                    reader.pump({}, lambda r: None)
                else:
                    list(reader)
                assert reader.torn_bytes == cut - last and reader.carried == 2, cut
    # ... unless what is there cannot be its start: a carried frame received after it was carried.
    bad = data[:last] + _carried_record(600_000, CARRIED_BEGIN)[:25]
    path.write_bytes(bad)
    with CaptureReader(path) as reader, pytest.raises(CaptureError, match="received after it was carried, in a record cut short"):
        list(reader)


def test_salvage_resumes_at_a_carried_record(tmp_path: Path) -> None:
    path = tmp_path / "p.icecap"
    write_part(path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack_from(">I", data, 10)
    connect_at = 14 + length
    carried_at = connect_at + 13 + struct.unpack_from(">I", data, connect_at + 1)[0]
    data[connect_at] = 0x33  # the connect record's kind: damage up to the first carried record
    path.write_bytes(bytes(data))
    with CaptureReader(path) as reader, pytest.raises(CaptureError, match="unknown record kind 0x33"):
        list(reader)
    with CaptureReader(path, salvage=True) as reader:
        records = list(reader)
    assert reader.damage == {connect_at: carried_at - connect_at}
    assert [type(r) for r in records] == [CarriedRecord] * 3 + [FrameRecord, EndRecord]
    with CaptureReader(path, salvage=True) as reader:
        seen: list[float] = []
        reader.pump({m.MonStats: lambda msg, t: seen.append(t)}, lambda r: None)
        assert seen == [-12.25] and reader.carried == 3 and reader.frames == 1


def test_reading_commands_show_or_apply_carried_frames(tmp_path: Path) -> None:
    """dump marks carried frames, stats does not count them as frames, replay (fast and paced)
    and jobs start from the state they give."""
    import subprocess
    import sys

    def icetools(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and not result.stderr, result.stderr
        return result.stdout

    path = tmp_path / "p.icecap"
    write_part(path)
    lines = [json.loads(line) for line in icetools("dump", "--json", str(path)).splitlines()]
    assert [(d["type"], d["t"], d.get("carried", False)) for d in lines] == [
        ("connect", 0.5, False), ("MON_STATS", -12.25, True), ("MON_GET_CS", -3.0, True),
        ("MON_JOB_BEGIN", -2.5, True), ("MON_JOB_DONE", 1.0, False), ("end", 1.0, False),
    ]
    assert lines[0]["rotated"] is True and lines[2]["filename"] == "a.c"
    text = icetools("dump", str(path)).splitlines()
    assert [("[carried]" in line) for line in text] == [False, True, True, True, False, False]
    assert "rotated" in text[0] and "-12.250  MON_STATS" in text[1]
    stats = json.loads(icetools("stats", "--json", str(path)))
    assert stats["jobs"]["remote"] == 1 and [h["name"] for h in stats["hosts"]] == ["node1"], stats
    for paced in ([], ["--speed", "1000"]):
        state = json.loads(icetools("replay", *(paced or ["--fast"]), "--json", str(path)))
        (host,) = state["hosts"]
        assert host["name"] == "node1"
        # the job requested and begun before the file began ended during it, on node1
        assert state["totals"]["remote_done"] == 1 and host["counters"]["compiled"] == 1, state
        assert state["totals"]["frames"] == 1  # the frames received during the file
    (job,) = [json.loads(line) for line in icetools("jobs", "--json", str(path)).splitlines()]
    assert (job["file"], job["requested"], job["started"], job["ended"], job["server"]) == ("a.c", -3.0, -2.5, 1.0, "node1")


def test_anonymize_keeps_a_part_a_part(tmp_path: Path) -> None:
    """Carried frames stay carried (and are anonymized like frames), the connect record stays
    rotated, the header keeps its series, part and netname."""
    import subprocess
    import sys

    path, copy = tmp_path / "p.icecap", tmp_path / "anon.icecap"
    write_part(path)
    result = subprocess.run([sys.executable, "-m", "icetools", "anonymize", str(path), str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    header, records, reader = read_all(copy)
    assert (header.series, header.part, header.netname) == ("0123456789abcdef0123456789abcdef", 3, "farm")
    assert records[0].rotated is True  # type: ignore[union-attr]
    carried = [r for r in records if type(r) is CarriedRecord]
    assert [(r.t, r.original) for r in carried] == [(0.5, -12.25), (0.5, -3.0), (0.5, -2.5)]
    stats = m.decode(carried[0].data, 43)
    assert isinstance(stats, m.MonStats) and "node1" not in stats.statmsg and "Name:" in stats.statmsg
    assert carried[2].data == CARRIED_BEGIN  # nothing to hide in it
    assert reader.frames == 1 and reader.carried == 3
