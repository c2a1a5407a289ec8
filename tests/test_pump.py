"""CaptureReader.pump(), the fast path under replay --fast, stats and the seek index: it must
hand out exactly what iterating and decoding would, fail at the same records with the same
errors, and stop and resume anywhere."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from icetools import capture
from icetools import messages as m
from icetools.capture import CaptureReader, CaptureWriter, FrameRecord, Record
from icetools.errors import CaptureError, ProtocolError

from .test_capture import FRAMES_43, torn_samples, write_sample

RECORDINGS = sorted((Path(__file__).resolve().parent.parent / "recordings").glob("*.icecap"))
Seen = list[tuple[str, Any, float]]


class Collect(dict):  # type: ignore[type-arg]
    """A handler table for every message class that notes what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Seen = []
        for cls in set(m.MESSAGE_CLASSES.values()) | {m.MonGetCSHead, m.MonJobDoneHead}:
            self[cls] = self.frame

    def frame(self, msg: m.Message, t: float) -> None:
        self.seen.append(("frame", msg, t))

    def event(self, record: Record) -> None:
        self.seen.append(("event", record, record.t))


def by_iteration(reader: CaptureReader, until: float | None = None) -> tuple[Seen, int]:
    """What pump() must produce: iterate and decode."""
    seen: Seen = []
    undecodable = 0
    for record in reader:
        if until is not None and record.t > until:
            break
        if isinstance(record, FrameRecord):
            try:
                seen.append(("frame", m.decode(record.data, record.protocol), record.t))
            except ProtocolError:
                undecodable += 1
        else:
            seen.append(("event", record, record.t))
    return seen, undecodable


def by_pump(reader: CaptureReader, **kwargs: Any) -> tuple[Seen, int]:
    handlers = Collect()
    undecodable = 0
    while True:
        result = reader.pump(handlers, handlers.event, **kwargs)
        undecodable += result.undecodable
        if result.stopped != "max_frames":
            return handlers.seen, undecodable


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_pump_hands_out_what_iteration_decodes(path: Path) -> None:
    with CaptureReader(path) as reader:
        expected, expected_bad = by_iteration(reader)
        frames, torn = reader.frames, reader.torn_bytes
    for kwargs in ({}, {"max_frames": 1}, {"max_frames": 7}):
        with CaptureReader(path) as reader:
            got, bad = by_pump(reader, **kwargs)
            assert (got, bad) == (expected, expected_bad), kwargs
            assert (reader.frames, reader.torn_bytes, reader.ended) == (frames, torn, True)
            assert reader.position == path.stat().st_size


@pytest.mark.parametrize("path", RECORDINGS[:3], ids=[p.stem for p in RECORDINGS[:3]])
def test_fields_mode_hands_out_the_plain_field_tuples(path: Path) -> None:
    with CaptureReader(path) as reader:
        expected, _ = by_iteration(reader)
    with CaptureReader(path) as reader:
        got, _ = by_pump(reader, fields=True)
    assert len(got) == len(expected)
    for (kind, item, t), (want_kind, want, want_t) in zip(got, expected):
        assert (kind, t) == (want_kind, want_t)
        if kind == "frame":
            assert type(item) is tuple and item == tuple(want)
        else:
            assert item == want


@pytest.mark.parametrize("block", [1, 7, 21, 64, 4096])
def test_records_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    path = tmp_path / "a.icecap"
    write_sample(path)
    with CaptureReader(path) as reader:
        expected = by_iteration(reader)
    monkeypatch.setattr(capture, "READ_BLOCK", block)
    with CaptureReader(path) as reader:
        assert by_pump(reader) == expected
        assert reader.ended and reader.frames == 4


def test_until_stops_before_the_first_later_record_and_iteration_resumes_there(tmp_path: Path) -> None:
    path = RECORDINGS[0]
    with CaptureReader(path) as reader:
        everything = [r for r in reader]
    middle = everything[len(everything) // 2].t
    with CaptureReader(path) as reader:
        expected, _ = by_iteration(reader, until=middle)
    with CaptureReader(path) as reader:
        result = reader.pump(handlers := Collect(), handlers.event, until=middle)
        assert result.stopped == "until"
        assert handlers.seen == expected
        assert result.last_t == expected[-1][2] <= middle
        rest = list(reader)  # goes on from the first record after ``middle``
    assert rest == [r for r in everything if r.t > middle]
    assert rest[0].t > middle


def test_undecodable_frames_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.icecap"
    good = FRAMES_43[2]
    unknown_type = struct.pack(">II", 8, 0x7E) + b"\0\0\0\0"
    short = good[:-4]
    short = struct.pack(">I", len(short) - 4) + short[4:]
    trailing = struct.pack(">I", len(good)) + good[4:] + b"\0\0\0\0"
    text = m.encode(m.StatusText("x"), 43)[:4] + struct.pack(">I", m.MsgType.TEXT) + m.encode(m.StatusText("x"), 43)[8:]
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "127.0.0.1:8765")
        w.frames([good, unknown_type, short, trailing, text, good])
    with CaptureReader(path) as reader:
        handlers = Collect()
        result = reader.pump(handlers, handlers.event)
    assert (result.frames, result.undecodable) == (6, 4)
    assert [item[1] for item in handlers.seen if item[0] == "frame"] == [m.decode(good, 43)] * 2


def corrupt_samples(tmp_path: Path) -> list[tuple[str, bytes, str]]:
    write_sample(tmp_path / "a.icecap")
    data = (tmp_path / "a.icecap").read_bytes()
    first = data.index(FRAMES_43[0]) - 13
    second = first + 13 + len(FRAMES_43[0])
    samples = []
    bad_kind = bytearray(data)
    bad_kind[second] = 0x33
    samples.append(("kind", bytes(bad_kind), rf"at byte {second}: unknown record kind 0x33 \(kept 1 frames"))
    bad_prefix = bytearray(data)
    bad_prefix[data.index(FRAMES_43[1]) + 3] ^= 0x01
    samples.append(("prefix", bytes(bad_prefix), rf"at byte {second}: frame length prefix disagrees .*kept 1 frames"))
    backwards = bytearray(data)
    struct.pack_into(">Q", backwards, second + 5, 0)
    struct.pack_into(">Q", backwards, first + 5, 10**9)
    samples.append(("time", bytes(backwards), rf"at byte {second}: record time goes backwards \(kept 1 frames"))
    huge = bytearray(data)
    struct.pack_into(">I", huge, second + 1, 10**9)
    samples.append(("length", bytes(huge), rf"at byte {second}: frame record of 1000000000 bytes \(kept 1 frames"))
    return samples


@pytest.mark.parametrize("case", ["kind", "prefix", "time", "length"])
def test_corruption_is_the_same_error_at_the_same_record(tmp_path: Path, case: str) -> None:
    name, data, pattern = next(s for s in corrupt_samples(tmp_path) if s[0] == case)
    path = tmp_path / f"{name}.icecap"
    path.write_bytes(data)
    read: Callable[[CaptureReader], Any]
    for read in (by_iteration, by_pump):
        handlers_seen: Seen = []
        with CaptureReader(path) as reader, pytest.raises(CaptureError, match=pattern):
            if read is by_pump:
                handlers = Collect()
                handlers_seen = handlers.seen
                reader.pump(handlers, handlers.event)
            else:
                for record in reader:
                    handlers_seen.append(("record", record, record.t))
        assert len(handlers_seen) == 2  # the connect record and the first frame, then the error


def test_torn_tail_is_reported_as_iteration_reports_it(tmp_path: Path) -> None:
    for torn in torn_samples(tmp_path):
        with CaptureReader(torn) as reader:
            expected = by_iteration(reader)
            warning = reader.warning()
        with CaptureReader(torn) as reader:
            assert by_pump(reader) == expected
            assert reader.warning() == warning is not None
            assert not reader.ended
