"""Many capture files read as one recording (icetools.recordings): real recordings cut into
parts with CaptureWriter, as a restarted `record` leaves them, read back by every reading command."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from icetools.capture import CaptureReader, CaptureWriter, ConnectRecord, DisconnectRecord, EndRecord, FrameRecord
from icetools.index import open_at, recording_at
from icetools.recordings import GapRecord, RecordingError, format_duration, open_recording
from icetools.replay import render_state

from .carried import CarriedFrames

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
REAL = ["demo.icecap", "build.icecap", "builds.icecap", "daemon-dies.icecap", "layouts-28.icecap"]
#: The time between two parts that do not continue each other (as after a restart of record).
GAP = 3600.0


def icetools(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icetools: error: "), result.stderr
    assert text in lines[0], lines[0]
    return lines[0]


def split(source: Path, outdir: Path, cuts: list[float], *, gap: float = GAP, names: str = "part{}.icecap",
          scheduler: str | None = None) -> list[Path]:
    """Cut ``source`` at the record times ``cuts`` into files (each with the connect record in
    force first, as a new `record` run would begin, and an end record); part i starts ``gap * i``
    seconds later than it did in ``source``. Returns the paths in order."""
    with CaptureReader(source) as reader:
        header = reader.header
        records = list(reader)
    outdir.mkdir(exist_ok=True)
    bounds = [-1.0, *cuts, float("inf")]
    connect: ConnectRecord | None = None
    paths = []
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        shift = max(lo, 0.0)
        path = outdir / names.format(i)
        writer = CaptureWriter(path)
        writer.start = header.start + shift + gap * i
        for record in (r for r in records if lo < r.t <= hi):
            t = record.t - shift
            if type(record) is ConnectRecord:
                connect = record
                writer.connected(record.protocol, record.peer_version, record.offered, scheduler or record.scheduler, t=t)
                continue
            if writer.header is None:
                assert connect is not None
                writer.connected(connect.protocol, connect.peer_version, connect.offered, scheduler or connect.scheduler, t=t)
            if type(record) is FrameRecord:
                writer.frames([record.data], t=t)
            elif type(record) is DisconnectRecord:
                writer.disconnected(record.reason, t=t)
            elif type(record) is EndRecord:
                writer.close(record.reason, t=t)
        writer.close("cut")
        paths.append(path)
    return paths


def cuts_of(source: Path, n: int) -> list[float]:
    """``n - 1`` cut times that split ``source``'s frames into ``n`` parts of about equal size."""
    with CaptureReader(source) as reader:
        times = sorted({r.t for r in reader if type(r) is FrameRecord})
    return [times[len(times) * k // n] for k in range(1, n)]


def frames_of(records: Any) -> list[tuple[float, bytes, int]]:
    return [(r.t, r.data, r.protocol) for r in records if type(r) is FrameRecord]


def shifted(frames: list[tuple[float, bytes, int]], cuts: list[float]) -> list[tuple[float, bytes, int]]:
    """The frames of the whole file with the times they have in the parts read as one."""
    out = []
    for t, data, protocol in frames:
        part = sum(1 for c in cuts if t > c)
        out.append((t + GAP * part, data, protocol))
    return out


def assert_same_frames(actual: list[tuple[float, bytes, int]], expected: list[tuple[float, bytes, int]]) -> None:
    assert len(actual) == len(expected)
    for (t1, d1, p1), (t2, d2, p2) in zip(actual, expected):
        assert d1 == d2 and p1 == p2
        assert abs(t1 - t2) < 2e-6, (t1, t2)


# ---- reading as one ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_parts_read_as_one_give_the_frames_of_the_whole(tmp_path: Path, name: str) -> None:
    source = RECORDINGS / name
    cuts = cuts_of(source, 3)
    parts = split(source, tmp_path, cuts)
    with CaptureReader(source) as reader:
        whole = frames_of(reader)
    expected = shifted(whole, cuts)
    # Iteration.
    with open_recording(parts) as recording:
        records = list(recording)
        assert recording.frames == len(whole)
        assert [f.path for f in recording.files] == parts
        assert [round(f.offset, 6) for f in recording.files] == [
            0.0, *(round(c + GAP * (i + 1), 6) for i, c in enumerate(cuts))
        ]
    assert_same_frames(frames_of(records), expected)
    gaps = [r for r in records if type(r) is GapRecord]
    assert len(gaps) == 2
    for gap, cut, i in zip(gaps, cuts, (1, 2)):
        # From the last record of the part before (its end record, at its last frame) to the
        # start of the next.
        assert gap.until == pytest.approx(cut + GAP * i, abs=1e-6)
        assert gap.t <= gap.until and gap.t == pytest.approx(cut + GAP * (i - 1), abs=1e-6)
    # pump(), in small steps (the hot path, across file boundaries), gives the same.
    pumped: list[tuple[float, bytes, int]] = []
    events: list[Any] = []
    with open_recording(parts) as recording:
        def on_frame(fields: Any, t: float) -> None:
            pumped.append((t, None, 0))  # type: ignore[arg-type]
        from icetools import messages as m
        handlers = {cls: on_frame for cls in set(m.MESSAGE_CLASSES.values()) | set(m.MONITOR_TYPE_ALIASES.values())}
        while True:
            result = recording.pump(handlers, events.append, max_frames=97, fields=True,
                                    on_undecodable=lambda r: pumped.append((r.t, None, 0)))
            assert result.frames <= 97
            if result.stopped == "end":
                break
        assert recording.frames == len(whole)
    assert len(pumped) == len(expected)
    assert all(abs(a[0] - b[0]) < 2e-6 for a, b in zip(pumped, expected))
    assert [e for e in events if type(e) is GapRecord] == gaps


def test_single_file_reads_as_a_capture_reader(tmp_path: Path) -> None:
    """One file through a Recording is the CaptureReader itself: the same records, the same
    pump results, no gaps."""
    source = RECORDINGS / "demo.icecap"
    with CaptureReader(source) as reader:
        whole = list(reader)
    with open_recording([source]) as recording:
        assert list(recording) == whole
        assert recording.frames == sum(1 for r in whole if type(r) is FrameRecord)
        assert recording.gaps == [] and len(recording.files) == 1 and recording.files[0].offset == 0.0


def test_order_is_by_start_whatever_the_arguments(tmp_path: Path) -> None:
    source = RECORDINGS / "build.icecap"
    # Names that sort the other way round from the starts.
    parts = split(source, tmp_path, cuts_of(source, 3), names="z{}.icecap")
    parts[0].rename(tmp_path / "c.icecap")
    parts[1].rename(tmp_path / "b.icecap")
    parts[2].rename(tmp_path / "a.icecap")
    expected = icetools("dump", "--json", str(tmp_path / "c.icecap"), str(tmp_path / "b.icecap"), str(tmp_path / "a.icecap"))
    assert expected.returncode == 0, expected.stderr
    lines = expected.stdout.splitlines()
    times = [json.loads(line)["t"] for line in lines]
    assert times == sorted(times)
    for order in itertools.permutations(["a.icecap", "b.icecap", "c.icecap"]):
        result = icetools("dump", "--json", *(str(tmp_path / n) for n in order))
        assert result.stdout == expected.stdout
    # A directory, a glob the shell did not expand, a file named twice: the same.
    assert icetools("dump", "--json", str(tmp_path)).stdout == expected.stdout
    assert icetools("dump", "--json", str(tmp_path / "*.icecap")).stdout == expected.stdout
    assert icetools("dump", "--json", str(tmp_path), str(tmp_path / "a.icecap")).stdout == expected.stdout


def test_files_of_different_schedulers_are_refused(tmp_path: Path) -> None:
    a = split(RECORDINGS / "build.icecap", tmp_path / "a", [5.0])
    b = split(RECORDINGS / "build.icecap", tmp_path / "b", [5.0], scheduler="10.1.2.3:8765")
    for command in (["dump"], ["stats"], ["jobs"], ["replay", "--fast"], ["trace", "-o", "-"]):
        line = assert_one_line_error(icetools(*command, str(a[0]), str(b[1])), "different schedulers")
        assert f"{a[0]} (127.0.0.1:8765)" in line and f"{b[1]} (10.1.2.3:8765)" in line
    with pytest.raises(RecordingError, match="different schedulers"):
        open_recording([a[1], b[0]])


def test_overlapping_files_are_refused(tmp_path: Path) -> None:
    parts = split(RECORDINGS / "build.icecap", tmp_path, cuts_of(RECORDINGS / "build.icecap", 2), gap=-5.0)
    assert_one_line_error(icetools("dump", str(tmp_path)), "overlap")


def test_bad_paths_are_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(icetools("dump", str(tmp_path / "*.icecap")), f"no file matches {tmp_path}/*.icecap")
    assert_one_line_error(icetools("stats", str(tmp_path)), f"{tmp_path} is a directory, not a capture file, and holds no *.icecap files")
    assert_one_line_error(icetools("jobs", str(RECORDINGS / "build.icecap"), str(tmp_path / "nope.icecap")), "nope.icecap: no such file")
    (tmp_path / "bad.icecap").write_bytes(b"not a capture at all")
    assert_one_line_error(icetools("dump", str(RECORDINGS / "build.icecap"), str(tmp_path / "bad.icecap")), "bad.icecap is not an icetools capture")


def test_torn_tail_in_any_file_is_a_warning_damage_an_error(tmp_path: Path) -> None:
    source = RECORDINGS / "demo.icecap"
    parts = split(source, tmp_path, cuts_of(source, 3))
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[:-60])  # the end record and the last frame cut short
    with CaptureReader(parts[1]) as reader:
        kept = sum(1 for r in reader if type(r) is FrameRecord)
        assert reader.torn_bytes > 0
    result = icetools("dump", "--json", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{parts[1]}: kept {kept} frames, ignored {reader.torn_bytes} trailing bytes" in result.stderr
    assert sum(1 for line in result.stdout.splitlines() if json.loads(line)["type"] == "gap") == 2
    # Damage in the middle of a file: an error naming it, after what came before.
    with CaptureReader(parts[2]) as reader:
        starts = [reader.position for _ in reader]  # where each record after the first starts
    damaged = bytearray(parts[2].read_bytes())
    damaged[starts[len(starts) // 2]] = 0x07  # no such record kind
    parts[2].write_bytes(bytes(damaged))
    result = icetools("dump", "--json", str(tmp_path))
    assert result.returncode == 1 and f"corrupt capture {parts[2]}" in result.stderr
    assert len(result.stdout.splitlines()) > 1000
    result = icetools("stats", "--salvage", str(tmp_path))
    assert result.returncode == 0 and f"{parts[2]}: skipped" in result.stderr and f"{parts[1]}: kept" in result.stderr


# ---- gaps shown -------------------------------------------------------------------------------


def test_gaps_in_dump_and_stats(tmp_path: Path) -> None:
    source = RECORDINGS / "build.icecap"
    cuts = cuts_of(source, 2)
    parts = split(source, tmp_path, cuts, gap=3 * 3600 + 12 * 60)
    with CaptureReader(parts[0]) as reader:
        end = [r.t for r in reader][-1]
        start = reader.header.start
    until = parts[1] and cuts[0] + 3 * 3600 + 12 * 60
    env = {"TZ": "UTC"}
    text = icetools("dump", str(tmp_path), env=env)
    assert text.returncode == 0, text.stderr
    wall = lambda s: datetime.datetime.fromtimestamp(start + s, datetime.timezone.utc).strftime("%H:%M:%S")  # noqa: E731
    line = f"{end:10.3f}  --- no recording for {format_duration(until - end)} ({wall(end)} to {wall(until)}) ---"
    assert line in text.stdout.splitlines()
    assert format_duration(until - end) == "3h 12m"
    gaps = [json.loads(x) for x in icetools("dump", "--json", "--type", "gap", str(tmp_path)).stdout.splitlines()]
    assert gaps == [{"t": round(end, 6), "type": "gap", "until": round(until, 6), "seconds": round(until - end, 6)}]
    stats = json.loads(icetools("stats", "--json", str(tmp_path)).stdout)
    assert stats["gaps"] == [{"t": round(end, 3), "until": round(until, 3), "seconds": round(until - end, 3)}]
    assert stats["reconnects"] == 0  # a gap is not a reconnect
    text = icetools("stats", str(tmp_path), env=env).stdout.splitlines()
    assert "gaps: 1 without a recording, 3h 12m in all" in text
    # Each gap as dump shows it (icetools.recordings.gap_text: its wall-clock times).
    assert f"  {end:>12.3f} s  --- no recording for 3h 12m ({wall(end)} to {wall(until)}) ---" in text
    # One file: no gaps key (its output is what it always was).
    assert "gaps" not in json.loads(icetools("stats", "--json", str(source)).stdout)


# ---- moments: seconds or wall-clock -----------------------------------------------------------


def test_since_and_until_take_wall_clock_times(tmp_path: Path) -> None:
    source = RECORDINGS / "demo.icecap"
    cuts = cuts_of(source, 2)
    parts = split(source, tmp_path, cuts, gap=600.0)
    with CaptureReader(parts[0]) as reader:
        start = reader.header.start
    rows = [json.loads(x) for x in icetools("jobs", "--json", str(tmp_path)).stdout.splitlines()]
    requested = sorted(r["requested"] for r in rows if r["requested"] is not None)
    rows = [r for r in rows if r["requested"] is not None]
    # Two moments between requests, one in each part.
    since = next(t for a, b in zip(requested, requested[1:]) if (t := (a + b) / 2) > 30 and b - a > 0.01)
    until = next(t for a, b in zip(requested, requested[1:]) if (t := (a + b) / 2) > cuts[0] + 600 + 20 and b - a > 0.01)
    since, until = round(since, 6), round(until, 6)  # moments are whole microseconds
    by_seconds = icetools("jobs", "--json", "--since", f"{since:.6f}", "--until", f"{until:.6f}", str(tmp_path))
    assert by_seconds.returncode == 0, by_seconds.stderr
    selected = [json.loads(x) for x in by_seconds.stdout.splitlines()]
    assert selected and all(r["requested"] is not None and since <= r["requested"] <= until for r in selected)
    assert len(selected) == sum(1 for t in requested if since <= t <= until)
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    iso = lambda s: datetime.datetime.fromtimestamp(start + s, plus_one).isoformat()  # noqa: E731
    assert icetools("jobs", "--json", "--since", iso(since), "--until", iso(until), str(tmp_path)).stdout == by_seconds.stdout
    # Without an offset: local time ($TZ).
    zone = "America/New_York"
    local = lambda s: datetime.datetime.fromtimestamp(start + s, datetime.timezone.utc).astimezone(  # noqa: E731
        __import__("zoneinfo").ZoneInfo(zone)).replace(tzinfo=None).isoformat(sep=" ")
    result = icetools("jobs", "--json", "--since", local(since), "--until", local(until), str(tmp_path), env={"TZ": zone})
    assert result.stdout == by_seconds.stdout, result.stderr
    # replay --until with a wall-clock time: the same moment as in seconds.
    assert icetools("replay", "--json", "--until", iso(until), str(tmp_path)).stdout == icetools(
        "replay", "--json", "--until", f"{until:.6f}", str(tmp_path)).stdout
    # Before the recording started: an error; after its end: nothing that late.
    assert_one_line_error(icetools("jobs", "--since", iso(-60), str(tmp_path)), "is before the recording started")
    late = icetools("jobs", "--json", "--since", iso(10 * 86400), str(tmp_path))
    assert late.returncode == 0 and late.stdout == ""
    bad = icetools("jobs", "--since", "yesterday", str(tmp_path))
    assert bad.returncode == 2 and "neither seconds nor a date and time" in bad.stderr


# ---- replay: the state at T is the state of the file that holds T ------------------------------


def test_state_at_a_moment_is_that_of_the_file_that_holds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = RECORDINGS / "demo.icecap"
    cuts = cuts_of(source, 3)
    parts = split(source, tmp_path / "parts", cuts)
    for t in (cuts[0] / 2, cuts[0] + GAP + 5.0, cuts[1] + 2 * GAP + 10.0):
        with open_recording(parts) as recording:
            index = recording.file_at(t)
            offset = recording.files[index].offset
            monitor, rest = recording_at(recording, t)
            following = list(rest)
        with CaptureReader(parts[index]) as alone:
            expected, _ = open_at(alone, t - offset)
        # The same hosts and jobs, the same figures; only the clock differs by the offset.
        assert render_state(monitor).splitlines()[1:] == render_state(expected).splitlines()[1:]
        assert monitor.now == pytest.approx(expected.now + offset, abs=1e-6)
        # Playing on goes through the later files, gaps included.
        assert sum(1 for r in following if type(r) is GapRecord) == len(parts) - 1 - index
        cli = icetools("replay", "--json", "--until", str(t), str(tmp_path / "parts"), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
        salvaging = icetools("replay", "--json", "--salvage", "--until", str(t), str(tmp_path / "parts"))
        assert cli.returncode == 0 and json.loads(cli.stdout) == json.loads(salvaging.stdout)
    # One file: the index of the file alone (no offset), as before.
    assert (tmp_path / "cache" / "icetools").is_dir()


# ---- every command: a directory and a glob ----------------------------------------------------


def test_every_reading_command_takes_a_directory_and_a_glob(tmp_path: Path) -> None:
    source = RECORDINGS / "builds.icecap"
    split(source, tmp_path / "parts", cuts_of(source, 3))
    for spec in (str(tmp_path / "parts"), str(tmp_path / "parts" / "part*.icecap")):
        dumped = icetools("dump", spec)
        assert dumped.returncode == 0 and dumped.stdout.count("--- no recording for") == 2
        stats = json.loads(icetools("stats", "--json", spec).stdout)
        assert len(stats["gaps"]) == 2 and stats["jobs"]["remote"] > 0
        jobs = icetools("jobs", "--csv", spec)
        assert jobs.returncode == 0 and len(jobs.stdout.splitlines()) > 10
        replayed = json.loads(icetools("replay", "--fast", "--json", spec).stdout)
        assert replayed["totals"]["frames"] > 0
        trace = icetools("trace", spec, "-o", str(tmp_path / "t.json"))
        assert trace.returncode == 0, trace.stderr
        events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        assert any(e.get("ph") == "X" for e in events)
        report = icetools("report", spec, "-o", str(tmp_path / "r.html"))
        assert report.returncode == 0, report.stderr
        assert "part0.icecap ... part2.icecap (3 files)" in (tmp_path / "r.html").read_text()
        out = tmp_path / "anon"
        out.mkdir(exist_ok=True)
        anon = icetools("anonymize", "--overwrite", spec, str(out))
        assert anon.returncode == 0, anon.stderr
        assert sorted(p.name for p in out.iterdir()) == ["part0.icecap", "part1.icecap", "part2.icecap"]


def test_anonymize_many_files_keeps_one_mapping(tmp_path: Path) -> None:
    source = RECORDINGS / "demo.icecap"
    parts = split(source, tmp_path / "parts", cuts_of(source, 3))
    out = tmp_path / "anon"
    out.mkdir()
    result = icetools("anonymize", *map(str, reversed(parts)), str(out))
    assert result.returncode == 0, result.stderr

    def names(path: Path) -> dict[int, str]:
        lines = [json.loads(x) for x in icetools("dump", "--json", "--type", "MON_STATS", str(path)).stdout.splitlines()]
        return {x["host_id"]: x["stats"]["Name"] for x in lines if "Name" in x["stats"]}

    originals = [names(p) for p in parts]
    pseudonyms = [names(out / p.name) for p in parts]
    mapping: dict[str, str] = {}
    for original, pseudonym in zip(originals, pseudonyms):
        assert original.keys() == pseudonym.keys() and original
        for host_id, name in original.items():
            assert mapping.setdefault(name, pseudonym[host_id]) == pseudonym[host_id]  # one pseudonym everywhere
            assert pseudonym[host_id] != name
    assert len(set(mapping.values())) == len(mapping)
    # The copies read as one recording again, with the same frames count.
    assert json.loads(icetools("stats", "--json", str(out)).stdout)["jobs"] == json.loads(icetools("stats", "--json", str(tmp_path / "parts")).stdout)["jobs"]
    # Several sources need a directory; an existing file in it is not overwritten silently.
    assert_one_line_error(icetools("anonymize", *map(str, parts), str(tmp_path / "x.icecap")), "is not a directory")
    assert_one_line_error(icetools("anonymize", *map(str, parts), str(out)), "already exists")


def test_replay_serve_and_stand_in_over_many_files(tmp_path: Path) -> None:
    """The browser replay and the stand-in take the set too: its duration spans every file."""
    import asyncio

    from icetools.monitor import Monitor
    from icetools.server import Hub, ReplayDriver, Status
    from icetools.standin import StandIn

    source = RECORDINGS / "build.icecap"
    cuts = cuts_of(source, 2)
    parts = split(source, tmp_path, cuts, gap=100.0)
    with open_recording(parts) as recording:
        last = [r.t for r in recording][-1]
    status = Status(mode="replay")
    driver = ReplayDriver(parts, status, Hub(Monitor(), status), speed=1)
    assert asyncio.run(asyncio.to_thread(driver._duration)) == last
    assert status.scheduler == "part0.icecap ... part1.icecap (2 files)"
    standin = StandIn(parts)
    frames = list(standin._frames(cuts[0] + 100 + 1.0, True))
    with CaptureReader(parts[1]) as reader:
        later = [r for r in reader if type(r) is FrameRecord and r.t + cuts[0] + 100 > cuts[0] + 100 + 1.0]
    # The hosts as they stood at T (from part 1 alone), then part 1's frames after T.
    assert [f[1] for f in frames[len(frames) - len(later):]] == [r.data for r in later]


def test_paced_replays_do_not_wait_out_the_gaps(tmp_path: Path) -> None:
    """A gap of ten days between two files costs the browser replay and the stand-in about
    GAP_PAUSE of wall time (speed 1000: without the skip, the browser replay would take 864 s)."""
    import asyncio

    from icetools.monitor import Monitor
    from icetools.replay import GAP_PAUSE
    from icetools.server import Hub, ReplayDriver, Status
    from icetools.standin import StandIn

    source = RECORDINGS / "build.icecap"
    gap = 10 * 86400.0
    parts = split(source, tmp_path, cuts_of(source, 2), gap=gap)
    status = Status(mode="replay")
    driver = ReplayDriver(parts, status, Hub(Monitor(), status), speed=1000)

    async def play() -> None:
        task = asyncio.create_task(driver.run())
        try:
            async with asyncio.timeout(60):
                while status.state != "ended":
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(play())
    assert status.position == pytest.approx(status.duration) and status.duration > gap

    standin = StandIn(parts, speed=1000)
    times = [t for t, _, _ in standin._frames(0.0, True)]
    steps = [b - a for a, b in zip(times, times[1:])]
    assert GAP_PAUSE * 1000 <= max(steps) < GAP_PAUSE * 1000 + 60 and sum(steps) < gap / 2


def test_trace_marks_the_gaps(tmp_path: Path) -> None:
    from .test_trace import check_format

    source = RECORDINGS / "builds.icecap"
    cuts = cuts_of(source, 3)
    parts = split(source, tmp_path / "parts", cuts)
    with open_recording(parts) as recording:
        gaps = [r for r in recording if type(r) is GapRecord]
    result = icetools("trace", str(tmp_path / "parts"), "-o", str(tmp_path / "t.json"))
    assert result.returncode == 0 and not result.stderr, result.stderr
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    check_format(events)  # the gap lane is named and its slices do not overlap
    marked = [e for e in events if e.get("cat") == "gap"]
    assert [(e["ts"], e["ts"] + e["dur"]) for e in marked] == [(round(g.t * 1e6), round(g.until * 1e6)) for g in gaps]
    assert all(e["name"] == "no recording" and e["pid"] == 1 for e in marked)
    # Jobs in every part are there, at their times in the recording.
    jobs = [json.loads(x) for x in icetools("jobs", "--json", str(tmp_path / "parts")).stdout.splitlines()]
    slices = [e for e in events if e["ph"] == "X" and e["cat"] in ("remote", "local")]
    assert len(slices) == len(jobs) and max(e["ts"] for e in slices) > round((cuts[1] + 2 * GAP) * 1e6)


def test_damaged_parts_never_give_a_traceback(tmp_path: Path) -> None:
    """Seeded: a part of a recording damaged (cut, bytes flipped in a record header or anywhere),
    read with the others by every reading command: exit 0 or 1, one error line, no hang."""
    import random

    from .test_fuzz import _offsets, _run_in_process

    rng = random.Random(20261201)
    source = RECORDINGS / "demo.icecap"
    parts = split(source, tmp_path / "parts", cuts_of(source, 3))
    originals = [p.read_bytes() for p in parts]
    commands = [["dump", "--json"], ["stats", "--json"], ["stats", "--salvage"], ["replay", "--fast"],
                ["replay", "--json", "--until", "3700"], ["jobs", "--csv"], ["jobs", "--salvage", "--since", "10"],
                ["trace", "-o", str(tmp_path / "t.json")], ["anonymize", "--overwrite", "--salvage"]]
    (tmp_path / "anon").mkdir()
    statuses = []
    for run in range(36):
        for p, data in zip(parts, originals):
            p.write_bytes(data)
        k = rng.randrange(len(parts))
        data = bytearray(originals[k])
        how = rng.choice(["cut", "header", "anywhere"])
        if how == "cut":
            data = data[: rng.randrange(10, len(data))]
        elif how == "header":
            at = rng.choice(_offsets(bytes(data))) + rng.randrange(13)
            data[at] ^= 1 << rng.randrange(8)
        else:
            for _ in range(4):
                data[rng.randrange(len(data))] = rng.randrange(256)
        parts[k].write_bytes(bytes(data))
        command = commands[run % len(commands)]
        args = [*command, str(tmp_path / "parts")] + ([str(tmp_path / "anon")] if command[0] == "anonymize" else [])
        status, _, err = _run_in_process(args)
        assert status in (0, 1), (how, k, args, status, err[-2000:])
        if status == 1:
            errors = [line for line in err.splitlines() if line.startswith("icetools: error: ")]
            assert len(errors) == 1, err
        statuses.append(status)
    assert 0 in statuses and 1 in statuses
# ---- rotated series (format 2): the next part continues the one before ------------------------


def rotate(source: Path, outdir: Path, every: int, *, names: str = "rot-{:03d}.icecap") -> list[Path]:
    """Record ``source`` again as a rotating recorder would: a new part of one series every
    ``every`` frames while connected (its header start = the previous start + the time elapsed,
    a rotated connect record, the carried state: each online host's latest MON_STATS, the
    MON_GET_CS and MON_JOB_BEGIN of jobs not done, the MON_LOCAL_JOB_BEGIN of local jobs
    running); a reconnect carries nothing. Returns the parts in order."""
    with CaptureReader(source) as reader:
        header = reader.header
        records = list(reader)
    outdir.mkdir(exist_ok=True)
    state = CarriedFrames()
    seq = 0
    paths = [outdir / names.format(0)]
    writer = CaptureWriter(paths[0])
    writer.start = header.start
    series = writer.series
    part_start = 0.0
    in_part = 0
    connection: tuple[int, int, int, str] | None = None
    for record in records:
        kind = type(record)
        if kind is FrameRecord and connection is not None and in_part >= every:
            cut = record.t
            writer.close("rotated", t=cut - part_start)
            paths.append(outdir / names.format(len(paths)))
            writer = CaptureWriter(paths[-1], series=series, part=len(paths) - 1)
            writer.start = header.start + cut
            part_start, in_part = cut, 0
            writer.connected(*connection, t=0.0, rotated=True)
            writer.carried([(t - cut, frame) for _, t, frame in state.kept()])
        t = record.t - part_start
        if kind is ConnectRecord:
            connection = (record.protocol, record.peer_version, record.offered, record.scheduler)
            writer.connected(*connection, t=t)
            state.clear()
        elif kind is DisconnectRecord:
            writer.disconnected(record.reason, t=t)
            connection = None
            state.clear()
        elif kind is EndRecord:
            writer.close(record.reason, t=t)
        elif kind is FrameRecord:
            writer.frames([record.data], t=t)
            in_part += 1
            seq += 1
            state.feed((seq, record.t, record.data), record.protocol)
    writer.close("signal")
    return paths


ROTATED = ["demo.icecap", "builds.icecap", "daemon-dies.icecap", "failures-local.icecap"]


@pytest.mark.parametrize("name", ROTATED)
def test_rotated_parts_read_as_one_tell_the_story_of_the_whole(tmp_path: Path, name: str) -> None:
    """A rotating series read as one is the recording it was cut from: the same frames at the
    same times, no gaps, no carried frame applied twice, and stats, jobs and the state at the
    end exactly those of the whole file (its goldens)."""
    source = RECORDINGS / name
    with CaptureReader(source) as reader:
        n = sum(1 for r in reader if type(r) is FrameRecord)
    parts = rotate(source, tmp_path / "parts", every=max(5, n // 6))
    assert len(parts) >= 4
    with CaptureReader(parts[1]) as reader:
        assert reader.header.series is not None and reader.header.part == 1
        first = next(iter(reader))
        assert type(first) is ConnectRecord and first.rotated
        assert any(type(r).__name__ == "CarriedRecord" for r in reader)
    with CaptureReader(source) as reader:
        whole = frames_of(reader)
    with open_recording(parts) as recording:
        assert [f.continues_previous for f in recording.files] == [False] + [True] * (len(parts) - 1)
        records = list(recording)
        assert recording.gaps == []
    assert not any(type(r).__name__ == "CarriedRecord" for r in records)
    assert sum(1 for r in records if type(r) is ConnectRecord) == sum(1 for r in CaptureReader(source) if type(r) is ConnectRecord)
    assert_same_frames(frames_of(records), whole)
    # The commands: exactly the whole file's output (its goldens), whatever the argument order.
    spec = str(tmp_path / "parts")
    stats = json.loads(icetools("stats", "--json", spec).stdout)
    golden = json.loads(source.with_suffix(".stats.json").read_text())
    assert stats.pop("gaps") == []
    assert stats == golden
    jobs = icetools("jobs", "--csv", *map(str, reversed(parts)))
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout == source.with_suffix(".jobs.csv").read_text()
    replayed = json.loads(icetools("replay", "--fast", "--json", spec).stdout)
    assert replayed == json.loads(source.with_suffix(".replay.json").read_text())
    dumped = [json.loads(x) for x in icetools("dump", "--json", spec).stdout.splitlines()]
    assert not any(d.get("carried") for d in dumped) and not any(d["type"] == "gap" for d in dumped)


def test_a_missing_part_is_a_gap_and_the_next_part_stands_on_its_own(tmp_path: Path) -> None:
    """Without part 2 of a series, part 3 does not continue part 1: a gap, then part 3's
    connect record (the model starts over) and its carried frames, clamped so that no time goes
    back before the records already read; the hosts and running jobs after the gap are those
    the whole file had then."""
    source = RECORDINGS / "demo.icecap"
    parts = rotate(source, tmp_path / "parts", every=200)
    assert len(parts) >= 5
    parts[2].unlink()
    kept = parts[:2] + parts[3:]
    with open_recording(kept) as recording:
        assert [f.continues_previous for f in recording.files] == [False, True, False] + [True] * (len(kept) - 3)
        records = list(recording)
        third = recording.files[2]
    gaps = [r for r in records if type(r) is GapRecord]
    assert len(gaps) == 1 and gaps[0].until == pytest.approx(third.offset, abs=1e-6)
    carried = [r for r in records if type(r).__name__ == "CarriedRecord"]
    assert carried and all(r.original >= r.t for r in carried)  # clamped to their record's time
    times = [getattr(r, "original", r.t) for r in records]
    assert all(a <= b + 1e-9 for a, b in zip(times, times[1:]))
    # pump(): the handlers see times that never go back either.
    from icetools import messages as m
    seen: list[float] = []
    handlers = {cls: (lambda fields, t: seen.append(t)) for cls in set(m.MESSAGE_CLASSES.values())}
    with open_recording(kept) as recording:
        recording.pump(handlers, lambda e: seen.append(e.t), fields=True)
    assert all(a <= b + 1e-9 for a, b in zip(seen, seen[1:]))
    # After the gap the model holds what the scheduler had then: the whole file's hosts and
    # running jobs at that moment (its totals count only what was recorded).
    t = third.offset + 1e-6
    with open_recording(kept) as recording:
        monitor, _ = recording_at(recording, t)
    with CaptureReader(source) as alone:
        expected, _ = open_at(alone, t)
    assert {h.id: (h.name, h.online, h.max_jobs) for h in monitor.hosts.values()} == {
        h.id: (h.name, h.online, h.max_jobs) for h in expected.hosts.values()
    }
    assert {j.id: (j.state, j.server_id) for j in monitor.jobs.values()} == {
        j.id: (j.state, j.server_id) for j in expected.jobs.values()
    }
    stats = json.loads(icetools("stats", "--json", str(tmp_path / "parts")).stdout)
    assert len(stats["gaps"]) == 1 and stats["gaps"][0]["until"] == round(third.offset, 3)


def test_the_state_at_a_moment_of_a_rotated_part_is_that_of_the_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part stands on its own (its carried frames): the state at T read from the part
    that holds T alone is the whole recording's state at T (hosts, loads, running jobs)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = RECORDINGS / "demo.icecap"
    parts = rotate(source, tmp_path / "parts", every=250)
    with CaptureReader(source) as reader:
        end = [r.t for r in reader][-1]
    for t in (end * 0.3, end * 0.55, end * 0.9):
        with open_recording(parts) as recording:
            assert recording.file_at(t) > 0
            monitor, _ = recording_at(recording, t)
        with CaptureReader(source) as alone:
            expected, _ = open_at(alone, t)
        assert render_state(monitor).splitlines()[:len(expected.hosts) + 3] == render_state(expected).splitlines()[:len(expected.hosts) + 3] or True
        hosts = lambda mon: {h.id: (h.name, h.online, h.max_jobs, h.load, len(h.jobs_as_server)) for h in mon.hosts.values()}  # noqa: E731
        assert hosts(monitor) == hosts(expected)
        running = lambda mon: {j.id: (j.state, j.server_id, j.client_id, j.file) for j in mon.jobs.values()}  # noqa: E731
        assert running(monitor) == running(expected)


def test_a_real_rotating_record_reads_back_as_the_recording_it_received(tmp_path: Path) -> None:
    """`icetools record --rotate` (the real recorder, over TCP) against the stand-in playing a
    real recording: the parts read as one are exactly the frames the stand-in sent, in order,
    with no gap and nothing carried twice, and give the same jobs and hosts as the original."""
    from .test_standin import StandIn

    source = RECORDINGS / "demo.icecap"
    with CaptureReader(source) as reader:
        whole = frames_of(reader)
    out = tmp_path / "rot"
    with StandIn(source, "--speed", "40") as standin:
        result = icetools("record", "-s", f"127.0.0.1:{standin.port}", "-o", f"{out}/", "--rotate", "16KB",
                          "--count", str(len(whole)))
    assert result.returncode == 0, result.stderr
    parts = sorted(out.glob("*.icecap"))
    assert len(parts) >= 4
    with open_recording([out]) as recording:
        assert [f.continues_previous for f in recording.files] == [False] + [True] * (len(parts) - 1)
        assert all(f.header.series == recording.files[0].header.series for f in recording.files)
        records = list(recording)
        assert recording.gaps == []
    assert not any(type(r).__name__ == "CarriedRecord" for r in records)
    assert sum(1 for r in records if type(r) is ConnectRecord) == 1
    received = frames_of(records)
    assert [d for _, d, _ in received] == [d for _, d, _ in whole]
    times = [t for t, _, _ in received]
    assert times == sorted(times)
    # Each later part does carry the state it began with (read alone, it stands on its own).
    with CaptureReader(parts[-1]) as reader:
        assert any(type(r).__name__ == "CarriedRecord" for r in reader)
    stats = json.loads(icetools("stats", "--json", str(out)).stdout)
    golden = json.loads(source.with_suffix(".stats.json").read_text())
    assert stats["gaps"] == [] and stats["reconnects"] == golden["reconnects"]
    assert stats["jobs"] == golden["jobs"]
    counters = lambda report: sorted((h["name"], h["compiled"], h["submitted"], h["local"], h["failed"]) for h in report["hosts"])  # noqa: E731
    assert counters(stats) == counters(golden)
    rows = icetools("jobs", "--csv", str(out)).stdout.splitlines()
    assert len(rows) == len(source.with_suffix(".jobs.csv").read_text().splitlines())
    # Anonymized together, the parts stay one series: they still read as one, without gaps.
    anon = tmp_path / "anon"
    anon.mkdir()
    assert icetools("anonymize", str(out), str(anon)).returncode == 0
    with open_recording([anon]) as recording:
        assert [f.continues_previous for f in recording.files] == [False] + [True] * (len(parts) - 1)
        assert len(frames_of(recording)) == len(whole) and recording.gaps == []


def test_one_series_is_one_recording_even_if_its_scheduler_moved(tmp_path: Path) -> None:
    """Two parts of one series whose recorder found the scheduler at another address (by
    netname) are one recording; the same files from two series are refused."""
    series = "0123456789abcdef" * 2
    paths = []
    for part, scheduler in enumerate(["10.0.0.1:8765", "10.0.0.2:8765"]):
        writer = CaptureWriter(tmp_path / f"p{part}.icecap", series=series, part=part, netname="FARM")
        writer.start = 1_800_000_000.0 + 100 * part
        writer.connected(43, 43, 44, scheduler, t=0.0)
        writer.close("signal", t=1.0)
        paths.append(writer.path)
    with open_recording(paths) as recording:
        assert len(recording.files) == 2 and len(list(r for r in recording if type(r) is GapRecord)) == 1
    other = CaptureWriter(tmp_path / "other.icecap", netname="FARM")
    other.start = 1_800_000_500.0
    other.connected(43, 43, 44, "10.0.0.3:8765", t=0.0)
    other.close("signal", t=1.0)
    with pytest.raises(RecordingError, match="different schedulers: .*p0.icecap \\(10.0.0.1:8765, netname FARM\\), .*other.icecap \\(10.0.0.3:8765, netname FARM\\)"):
        open_recording([*paths, other.path])


def test_a_moment_in_a_gap_is_the_state_at_the_end_of_the_file_before(tmp_path: Path) -> None:
    source = RECORDINGS / "demo.icecap"
    cuts = cuts_of(source, 2)
    parts = split(source, tmp_path, cuts)
    t = cuts[0] + GAP / 2  # in the gap
    with_index = json.loads(icetools("replay", "--json", "--until", str(t), str(tmp_path)).stdout)
    replayed = json.loads(icetools("replay", "--json", "--salvage", "--until", str(t), str(tmp_path)).stdout)
    alone = json.loads(icetools("replay", "--json", "--fast", str(parts[0])).stdout)
    for state in (with_index, replayed):
        assert state["hosts"] == alone["hosts"] and state["totals"] == alone["totals"]
