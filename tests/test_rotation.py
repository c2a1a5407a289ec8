"""Rotating recordings (issue 12, item 1): --rotate's values, the carried state on a scripted
stream, the rotating sink on a clock we step (parts, series, times, carried frames, --keep,
names), the command line's usage errors, and a full disk during a rotation. The real cluster's
side is in tests/test_rotation_real.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import (
    CaptureReader,
    CarriedRecord,
    ConnectRecord,
    DisconnectRecord,
    EndRecord,
    FrameRecord,
    read_all,
)
from icetools.errors import CaptureError
from icetools.rotation import CarriedState, Rotation, RotatingWriter, expand, output_pattern, parse_rotation

from . import scripted
from .netns import require
from .scripted import ScriptedScheduler
from .test_cli import assert_one_line_error, icetools, wait_for
from .test_hostile_peers import get, on_small_disk, small_disk_unsupported, start_serve, stop


def f(msg: m.Message, protocol: int = 43) -> bytes:
    return m.encode(msg, protocol)


STATS_1 = f(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:2\n"))
STATS_1B = f(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:2\nLoad:300\n"))
STATS_2 = f(m.MonStats(2, "Name:node2\nIP:10.0.0.2\nMaxJobs:4\n"))
STATS_3 = f(m.MonStats(3, "Name:node3\nIP:10.0.0.3\nMaxJobs:1\n"))
OFFLINE_2 = f(m.MonStats(2, "State:Offline\n"))
GET_CS = {j: f(m.MonGetCS(filename=f"f{j}.c", lang=0, job_id=j, client_id=1)) for j in range(1, 6)}
BEGIN = {j: f(m.MonJobBegin(job_id=j, stime=0, host_id=2 if j == 2 else 3)) for j in range(1, 7)}
DONE = {j: f(m.MonJobDone(job_id=j, exitcode=0)) for j in range(1, 7)}
LOCAL = {j: f(m.MonLocalJobBegin(host_id=2 if j == 21 else 1, job_id=j, stime=0, file=f"l{j}.c")) for j in (20, 21, 22)}
LOCAL_DONE_20 = f(m.JobLocalDone(job_id=20))


# ---- --rotate's values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("90s", Rotation(seconds=90)), ("30m", Rotation(seconds=1800)), ("1h", Rotation(seconds=3600)),
        ("1d", Rotation(seconds=86400)), ("1.5h", Rotation(seconds=5400)),
        ("64KB", Rotation(size=64_000)), ("100MB", Rotation(size=100_000_000)), ("1GB", Rotation(size=10**9)),
        ("64KiB", Rotation(size=65536)), ("100MiB", Rotation(size=100 << 20)), ("1GiB", Rotation(size=1 << 30)),
        ("64kb", Rotation(size=64_000)),
    ],
)
def test_rotate_values(text: str, expected: Rotation) -> None:
    assert parse_rotation(text) == expected


@pytest.mark.parametrize("text", ["", "10", "0s", "0.5s", "-5m", "1w", "10x", "1M", "100B", "999B", "0KB", "nan", "1e3s", "inf"])
def test_bad_rotate_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rotation(text)


# ---- the carried state ---------------------------------------------------------------------


def test_carried_state_keeps_online_hosts_and_unfinished_jobs_in_the_order_received() -> None:
    state = CarriedState()
    state.connected(43)
    state.feed([STATS_1, STATS_2, STATS_3], 1.0)
    state.feed([GET_CS[1], GET_CS[2], BEGIN[1], GET_CS[3], BEGIN[2]], 2.0)
    state.feed([LOCAL[20], LOCAL[21], LOCAL[22], BEGIN[6]], 3.0)  # job 6: submitted before we connected
    state.feed([DONE[1], LOCAL_DONE_20, STATS_1B], 4.0)
    # node2 leaves: its local job ends with it, its remote job 2 ends when the scheduler says so
    state.feed([OFFLINE_2], 5.0)
    assert state.frames() == [
        (1.0, STATS_3),
        (2.0, GET_CS[2]), (2.0, GET_CS[3]), (2.0, BEGIN[2]),
        (3.0, LOCAL[22]), (3.0, BEGIN[6]),
        (4.0, STATS_1B),
    ]
    state.feed([f(m.MonJobDone(job_id=2, exitcode=255)), DONE[6], f(m.MonStats(3, "State:Offline\n"))], 6.0)
    assert state.frames() == [(2.0, GET_CS[3]), (3.0, LOCAL[22]), (4.0, STATS_1B)]
    # A host that comes back is carried again, with its new report.
    again = f(m.MonStats(2, "Name:node2\nIP:10.0.0.2\nMaxJobs:4\nLoad:10\n"))
    state.feed([again], 7.0)
    assert state.frames()[-1] == (7.0, again)
    # A disconnect, and a reconnection, forget everything: the scheduler starts over.
    state.reset()
    assert state.frames() == []
    state.feed([STATS_1], 8.0)
    state.connected(43)
    assert state.frames() == []


def test_carried_state_reads_head_type_words_and_older_layouts_and_skips_undecodable_frames() -> None:
    state = CarriedState()
    state.connected(43)
    head_get_cs = f(m.MonGetCSHead(filename="h.c", lang=0, job_id=9, client_id=1))
    state.feed([STATS_1, head_get_cs, b"\x00\x00\x00\x08\x00\x00\x00\x57\x00\x00", f(m.MonJobDoneHead(job_id=8))], 1.0)
    assert state.frames() == [(1.0, STATS_1), (1.0, head_get_cs)]
    state.feed([f(m.MonJobDoneHead(job_id=9, exitcode=0))], 2.0)
    assert state.frames() == [(1.0, STATS_1)]
    old = CarriedState()
    old.connected(28)
    get_cs_28 = f(m.MonGetCS(filename="o.c", lang=0, job_id=4, client_id=1), 28)
    old.feed([get_cs_28, f(m.MonStats(1, "Name:n\n"), 28)], 1.0)
    assert [frame for _, frame in old.frames()] == [get_cs_28, f(m.MonStats(1, "Name:n\n"), 28)]
    old.feed([f(m.MonJobDone(job_id=4, exitcode=0), 28)], 2.0)
    assert len(old.frames()) == 1


# ---- the rotating sink, on a clock we step ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_764_312_000.0 + self.now


def rotating(tmp_path: Path, rotate: str, clock: Clock, **kwargs: object) -> RotatingWriter:
    return RotatingWriter(
        str(tmp_path / "farm-%H%M%S.icecap"), parse_rotation(rotate), clock=clock, wall=clock.wall, **kwargs  # type: ignore[arg-type]
    )


def parts_of(tmp_path: Path) -> list[tuple[object, list[object]]]:
    out = []
    for path in tmp_path.glob("*.icecap"):
        header, records, _ = read_all(path)
        out.append((header, records))
    out.sort(key=lambda hr: hr[0].part)  # type: ignore[attr-defined]
    return out


def test_rotation_by_duration_splits_at_batches_and_carries_the_state(tmp_path: Path) -> None:
    clock = Clock()
    w = rotating(tmp_path, "10s", clock, netname="farm")
    w.connected(43, 43, 44, "127.0.0.1:8765")
    batches = [
        [STATS_1, STATS_2, STATS_3], [GET_CS[1], GET_CS[2]], [BEGIN[1], BEGIN[2]], [LOCAL[20]],
        [DONE[1], OFFLINE_2], [STATS_1B, GET_CS[3]], [DONE[2], BEGIN[3]], [DONE[3]],
    ]
    for batch in batches:
        clock.now += 4.0
        w.frames(batch)
    clock.now += 1.0
    w.close("signal")
    parts = parts_of(tmp_path)
    assert [h.part for h, _ in parts] == [0, 1, 2]  # type: ignore[attr-defined]
    series = {h.series for h, _ in parts}  # type: ignore[attr-defined]
    assert len(series) == 1 and w.series in series
    assert {h.netname for h, _ in parts} == {"farm"}  # type: ignore[attr-defined]
    # starts: the previous start plus the monotonic time elapsed (at 12 s and at 24 s)
    starts = [h.start for h, _ in parts]  # type: ignore[attr-defined]
    assert [round(s - starts[0], 6) for s in starts] == [0.0, 12.0, 24.0]
    # every frame once, in order; carried frames only at the start of parts 1 and 2
    frames = [r.data for _, records in parts for r in records if type(r) is FrameRecord]
    assert frames == [frame for batch in batches for frame in batch]
    (_, first), (_, second), (_, third) = parts
    assert first[-1] == EndRecord(12.0, 5, "rotated")
    assert first[0] == ConnectRecord(0.0, 43, 43, 44, "127.0.0.1:8765", False, False)
    assert second[0] == ConnectRecord(0.0, 43, 43, 44, "127.0.0.1:8765", False, True)
    # part 1 begins at 12 s (before the third batch): the hosts (received at 4 s) and jobs 1
    # and 2 (requested at 8 s), at their times relative to the part's start
    assert [(r.original, r.data) for r in second if type(r) is CarriedRecord] == [
        (-8.0, STATS_1), (-8.0, STATS_2), (-8.0, STATS_3), (-4.0, GET_CS[1]), (-4.0, GET_CS[2]),
    ]
    assert second[-1] == EndRecord(12.0, 5, "rotated")
    # part 2 at 24 s: node2 went offline and job 1 ended; job 2 begun, node1's local job 20
    assert [(round(r.original, 6), r.data) for r in third if type(r) is CarriedRecord] == [
        (-20.0, STATS_1), (-20.0, STATS_3), (-16.0, GET_CS[2]), (-12.0, BEGIN[2]), (-8.0, LOCAL[20]),
    ]
    assert third[-1] == EndRecord(9.0, 5, "signal")
    assert w.frames_written == len(frames) == 15


def test_rotation_by_size_and_reads_each_part_alone(tmp_path: Path) -> None:
    clock = Clock()
    w = rotating(tmp_path, "1KB", clock)
    w.connected(43, 43, 44, "127.0.0.1:8765")
    sent = []
    for j in range(1, 60):
        clock.now += 0.5
        batch = [f(m.MonStats(j % 4 + 1, f"Name:n{j % 4 + 1}\nLoad:{j}\n")), f(m.MonGetCS(filename=f"{j}.c", lang=0, job_id=j, client_id=1))]
        if j > 2:
            batch.append(f(m.MonJobDone(job_id=j - 2, exitcode=0)))
        w.frames(batch)
        sent += batch
    w.close("signal")
    parts = parts_of(tmp_path)
    assert len(parts) > 5
    for header, records in parts[:-1]:
        assert records[-1].reason == "rotated"  # type: ignore[union-attr]
        # rotated once the file reached the size, at the next batch: at most one batch over
        assert 1000 <= os.path.getsize(next(p for p in tmp_path.iterdir() if read_all(p)[0].part == header.part)) < 1400  # type: ignore[attr-defined]
    assert [r.data for _, records in parts for r in records if type(r) is FrameRecord] == sent
    # Each part alone: the state at its start is what was carried (4 hosts, 2 open jobs).
    for header, _ in parts[1:]:
        path = next(p for p in tmp_path.iterdir() if read_all(p)[0].part == header.part)  # type: ignore[attr-defined]
        result = icetools("replay", "--fast", "--json", "--until", "0", str(path))
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        assert sorted(h["name"] for h in state["hosts"]) == ["n1", "n2", "n3", "n4"]
        assert len(state["jobs"]["active"]) == 2, state["jobs"]


def test_a_disconnect_carries_nothing_and_a_due_rotation_waits_for_the_reconnection(tmp_path: Path) -> None:
    clock = Clock()
    w = rotating(tmp_path, "10s", clock)
    w.connected(43, 43, 44, "127.0.0.1:8765")
    w.frames([STATS_1, GET_CS[1]])
    clock.now += 5
    w.disconnected("scheduler gone")
    clock.now += 20  # due while disconnected: begun at the reconnection, with a new handshake
    w.connected(43, 43, 44, "127.0.0.1:8765")
    w.frames([STATS_2])
    clock.now += 11
    w.frames([STATS_3])  # due: the same connection goes on, with node2 carried (node1 was before the restart)
    w.close("signal")
    parts = parts_of(tmp_path)
    assert [[type(r).__name__ for r in records] for _, records in parts] == [
        ["ConnectRecord", "FrameRecord", "FrameRecord", "DisconnectRecord", "EndRecord"],
        ["ConnectRecord", "FrameRecord", "EndRecord"],
        ["ConnectRecord", "CarriedRecord", "FrameRecord", "EndRecord"],
    ]
    assert parts[1][1][0] == ConnectRecord(0.0, 43, 43, 44, "127.0.0.1:8765", False, False)
    assert parts[2][1][0].rotated is True  # type: ignore[union-attr]
    assert parts[2][1][1].data == STATS_2  # type: ignore[union-attr]
    assert isinstance(parts[0][1][3], DisconnectRecord)


def test_keep_deletes_only_the_oldest_files_of_its_series(tmp_path: Path) -> None:
    other = tmp_path / "farm-000000.icecap"  # a file of another series: never touched
    other.write_bytes(b"another recording")
    clock = Clock()
    w = rotating(tmp_path, "10s", clock, keep=2)
    w.connected(43, 43, 44, "127.0.0.1:8765")
    names = []
    for _ in range(5):
        w.frames([STATS_1])
        names.append(w.path.name)
        clock.now += 10
    w.frames([STATS_2])
    names.append(w.path.name)
    w.close("signal")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["farm-000000.icecap", *names[-2:]])
    assert [h.part for h, _ in parts_of_named(tmp_path, names[-2:])] == [4, 5]


def parts_of_named(tmp_path: Path, names: list[str]) -> list[tuple[object, list[object]]]:
    return [read_all(tmp_path / name)[:2] for name in names]


def test_names_from_patterns_directories_and_collisions(tmp_path: Path) -> None:
    assert output_pattern(None) == "icecream-%Y%m%d-%H%M%S.icecap"
    assert output_pattern(str(tmp_path)) == str(tmp_path / "icecream-%Y%m%d-%H%M%S.icecap")
    assert output_pattern("new-dir/") == "new-dir/icecream-%Y%m%d-%H%M%S.icecap"
    assert output_pattern(str(tmp_path / "farm-%Y.icecap")) == str(tmp_path / "farm-%Y.icecap")
    taken = {tmp_path / "farm-2026.icecap", tmp_path / "farm-2026-1.icecap"}
    when = 1_796_000_000.0  # 2026
    assert expand(str(tmp_path / "farm-%Y.icecap"), when, taken.__contains__) == tmp_path / "farm-2026-2.icecap"
    assert expand(str(tmp_path / "farm.log"), when, lambda p: p.name == "farm.log") == tmp_path / "farm-1.log"
    # Seconds apart, the same minute: the second part gets a suffix, the first is not replaced.
    clock = Clock()
    w = RotatingWriter(str(tmp_path / "x-%Y%m%d-%H%M.icecap"), parse_rotation("1s"), clock=clock, wall=clock.wall)
    w.connected(43, 43, 44, "127.0.0.1:8765")
    first = w.path
    clock.now += 1
    w.frames([STATS_1])
    assert w.path == first.with_name(first.name.replace(".icecap", "-1.icecap"))
    w.close("signal")
    assert read_all(first)[1][-1].reason == "rotated"  # type: ignore[union-attr]
    # A directory that does not exist yet is made.
    w = RotatingWriter(output_pattern(str(tmp_path / "made") + "/"), parse_rotation("1h"))  # type: ignore[arg-type]
    w.connected(43, 43, 44, "x:1")
    w.close("signal")
    assert [p.suffix for p in (tmp_path / "made").iterdir()] == [".icecap"]


# ---- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, text",
    [
        (["--rotate", "0s"], "a duration of a second at least"),
        (["--rotate", "10x"], "unknown unit 'x'"),
        (["--rotate", "soon"], "neither a duration"),
        (["--keep", "3"], "--keep goes with --rotate"),
        (["--rotate", "1h", "--keep", "0"], "0 is not in the range"),
        (["-o", "farm-%H.icecap"], "is a strftime pattern, which goes with --rotate"),
        (["--rotate", "1h", "--overwrite"], "--overwrite does not go with --rotate"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], text: str) -> None:
    for command in (["record", "-s", "127.0.0.1:1"], ["serve", "-s", "127.0.0.1:1", "--record", str(tmp_path / "x.icecap")]):
        if command[0] == "serve" and args[0] == "-o":
            args = ["--record", *args[1:]]
            command = command[:3]
        result = icetools(*command, *args, cwd=tmp_path)
        assert result.returncode == 2 and text in result.stderr, (command, args, result.stderr)
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    result = icetools("serve", "-s", "127.0.0.1:1", "--rotate", "1h")
    assert result.returncode == 2 and "--rotate and --keep go with --record" in result.stderr


def in_batches(groups: list[list[bytes]], out: Path) -> scripted.Script:
    """A scheduler that sends each group of frames once the one before is in the newest file of
    the recording in ``out``: a batch each, so a rotation can come between any two."""

    def written(frame: bytes) -> bool:
        try:
            newest = max(out.iterdir(), key=lambda p: read_all(p)[0].part or 0)
            got = [r.data for r in read_all(newest)[1] if type(r) is FrameRecord]
        except (OSError, CaptureError, ValueError):
            return False
        return bool(got) and got[-1] == frame

    def script(sock: socket.socket) -> None:
        scripted.handshake(sock)
        scripted.recv_exact(sock, 8)
        for group in groups:
            sock.sendall(b"".join(group))
            wait_for(lambda: written(group[-1]), what="the batch to be written")
        scripted.wait_closed(sock, 60)

    return script


def job_groups(n: int) -> list[list[bytes]]:
    """Three hosts, then jobs requested, begun and ended one after the other."""
    groups = [[STATS_1, STATS_2, STATS_3]]
    for j in range(1, n):
        groups.append([f(m.MonGetCS(filename=f"{j}.c", lang=0, job_id=j, client_id=1)), f(m.MonJobBegin(job_id=j, stime=0, host_id=2))])
        if j > 1:
            groups[-1].append(f(m.MonJobDone(job_id=j - 1, exitcode=0)))
    return groups


def test_serve_record_rotates(tmp_path: Path) -> None:
    groups = job_groups(25)
    out = tmp_path / "rec"
    with ScriptedScheduler(in_batches(groups, out)) as server:
        proc, port = start_serve("-s", f"127.0.0.1:{server.port}", "--record", f"{out}/", "--rotate", "1KB")
        try:
            wait_for(lambda: json.loads(get(port, "/api/state"))["totals"]["frames"] == sum(map(len, groups)),
                     what="every frame served")
        finally:
            stderr, _ = stop(proc)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    parts = sorted((read_all(p)[:2] for p in out.iterdir()), key=lambda hr: hr[0].part)
    assert [h.part for h, _ in parts] == list(range(len(parts))) and len(parts) >= 3
    assert [r.data for _, records in parts for r in records if type(r) is FrameRecord] == [x for g in groups for x in g]
    assert [records[-1].reason for _, records in parts] == ["rotated"] * (len(parts) - 1) + ["signal"]
    assert all([r.data for r in records if type(r) is CarriedRecord][:3] == [STATS_1, STATS_2, STATS_3] for _, records in parts[1:])


def test_record_rotates_from_a_scripted_scheduler(tmp_path: Path) -> None:
    """The command end to end: a scheduler that reports three hosts, then a stream of jobs;
    record --rotate 1KB -o DIR --keep 3 --count N."""
    groups = job_groups(40)
    frames = [frame for group in groups for frame in group]
    out = tmp_path / "rec"

    script = in_batches(groups, out)

    with ScriptedScheduler(script) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", f"{out}/", "--rotate", "1KB",
                          "--keep", "3", "--count", str(len(frames)))
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    assert len(files) == 3, files
    parts = sorted((read_all(p)[:2] for p in files), key=lambda hr: hr[0].part)
    assert [h.part for h, _ in parts] == list(range(parts[0][0].part, parts[0][0].part + 3))
    assert parts[0][0].part > 3  # older parts were deleted
    tail = [r.data for _, records in parts for r in records if type(r) is FrameRecord]
    assert tail == frames[-len(tail):]
    assert f"stopped by count" in result.stderr and "files (the last" in result.stderr
    for header, records in parts:
        assert header.netname is None  # connected by address
        carried = [r.data for r in records if type(r) is CarriedRecord]
        assert carried[:3] == [STATS_1, STATS_2, STATS_3]  # every part has the hosts


def test_a_full_disk_during_a_rotation_is_one_line_and_keeps_every_earlier_file(tmp_path: Path) -> None:
    """On a 192 KiB disk, parts of 100KB whose carried state is as large as they are (every
    frame a report of another host): the first rotation cannot write the new part's start."""
    require(small_disk_unsupported())
    frames = [f(m.MonStats(h, f"Name:host{h}\nIP:10.1.{h // 256}.{h % 256}\nMaxJobs:4\n")) for h in range(1, 4000)]
    gate = threading.Event()

    def script(sock: object) -> None:
        scripted.handshake(sock)  # type: ignore[arg-type]
        scripted.recv_exact(sock, 8)  # type: ignore[arg-type]
        for i in range(0, len(frames), 50):
            sock.sendall(b"".join(frames[i : i + 50]))  # type: ignore[attr-defined]
        gate.wait(60)
        scripted.wait_closed(sock, 60)  # type: ignore[arg-type]

    disk, kept = tmp_path / "disk", tmp_path / "kept"
    kept.mkdir()
    with ScriptedScheduler(script) as server:
        result = subprocess.run(
            on_small_disk(disk, "record", "-s", f"127.0.0.1:{server.port}", "-o", f"{disk}/", "--rotate", "100KB",
                          after=f'cp "$0"/*.icecap "{kept}"'),
            capture_output=True, text=True, timeout=60,
        )
        gate.set()
    assert_one_line_error(result, "cannot write the next file of the recording")
    assert "No space left on device" in result.stderr and result.returncode == 1
    (only,) = kept.iterdir()  # the new part is gone, the earlier one whole
    with CaptureReader(only) as reader:
        records = list(reader)
    assert reader.torn_bytes == 0 and reader.header.part == 0
    received = [r.data for r in records if type(r) is FrameRecord]
    assert received == frames[: len(received)] and os.path.getsize(only) >= 100_000
    assert f"(the {len(received)} frames recorded before are kept, the last of them in {disk / only.name})" in result.stderr
    # the part ended: its end record went in once the new part was removed
    assert isinstance(records[-1], EndRecord) and records[-1].reason == "error"
