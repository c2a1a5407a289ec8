"""Cached summaries (icetools/summary.py): one file's summary gives stats' own report; merged
summaries of several files give exactly the report of reading them as one recording
(icetools.stats.analyse over icetools.recordings.open_recording: gaps, continuations); the cache is used, and rebuilt
when it is damaged or foreign; `stats` over several files in parallel, with one clear line for
an error or a stop."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from icetools import messages as m
from icetools import summary as summary_mod
from icetools.capture import CaptureReader, CaptureWriter, FrameRecord
from icetools.recordings import open_recording
from icetools.stats import analyse, render_report
from icetools.summary import SUMMARY_MAGIC, load, merged, report_from, save, summaries, summarise, summary_path

from .carried import CarriedFrames

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
ALL = sorted(RECORDINGS.glob("*.icecap"))
_PREAMBLE = struct.Struct(">8sHI")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "icetools"


def one_stream(paths: list[Path], gap: float = 30.0) -> dict[str, Any]:
    """The reference: the streaming read of the same files as one recording,
    ``icetools.stats.analyse(open_recording(paths))`` (icetools.recordings: a file that does not
    continue the one before follows a gap, where the Monitor forgets hosts and jobs; one that
    continues it skips its connect record and carried frames)."""
    with open_recording(paths) as recording:
        return analyse(recording, gap=gap)[0]


def with_start(source: Path, target: Path, start: float) -> Path:
    """A copy of ``source`` whose header says it started at ``start``."""
    data = source.read_bytes()
    magic, version, length = _PREAMBLE.unpack_from(data)
    header = json.loads(data[_PREAMBLE.size : _PREAMBLE.size + length])
    header["start"] = start
    raw = json.dumps(header, separators=(",", ":")).encode()
    target.write_bytes(_PREAMBLE.pack(magic, version, len(raw)) + raw + data[_PREAMBLE.size + length :])
    return target


def one_after_another(tmp_path: Path, names: list[str], pauses: list[float]) -> list[Path]:
    """Copies of recordings, each starting ``pause`` seconds after the previous one ended."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    start = 1795849595.25
    for i, name in enumerate(names):
        if i:
            start += summarise(paths[-1]).end + pauses[i - 1]
        paths.append(with_start(RECORDINGS / f"{name}.icecap", tmp_path / f"{i}-{name}.icecap", start))
    return paths


def write(path: Path, start: float, frames: list[tuple[float, m.Message]], end: float, scheduler: str = "s:1",
          netname: str | None = None) -> Path:
    writer = CaptureWriter(path, netname=netname)
    writer.start = start
    writer.connected(43, 43, 44, scheduler, t=0.0)
    for t, message in frames:
        writer.frames([m.encode(message, 43)], t=t)
    writer.close("stopped", t=end)
    return path


def _host(n: int, max_jobs: int) -> str:
    return f"Name:node{n}\nIP:10.0.0.{n}\nMaxJobs:{max_jobs}\nLoad:10\n"


# ---- one file -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_the_summary_of_a_file_gives_its_stats_golden(path: Path) -> None:
    expected = json.loads(path.with_suffix(".stats.json").read_text())
    summary = summarise(path)
    assert report_from(summary) == expected
    assert report_from(summary) == expected  # (reporting leaves the summary as it was)
    save(path, summary, False)
    cached = load(path, 30.0, False)
    assert cached is not None and cached is not summary
    assert report_from(cached) == expected


# ---- several files: merged = one stream ---------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "pauses"),
    [
        (["builds", "builds"], [10.0]),  # a pause shorter than the gap: builds go on
        (["builds", "builds"], [100.0]),
        (["demo", "demo"], [0.3]),
        (["daemon-dies", "demo", "failures-local", "build"], [5.0, 2.0, 40.0]),  # a job in flight at the end
        (["build", "builds", "daemon-dies", "demo", "failures-local", "protocol-21", "layouts-29", "protocol-43"],
         [3.7] * 7),
    ],
    ids=["builds-10s", "builds-100s", "demo-0.3s", "four", "eight"],
)
def test_merged_summaries_equal_one_stream(tmp_path: Path, names: list[str], pauses: list[float]) -> None:
    paths = one_after_another(tmp_path, names, pauses)
    expected = one_stream(paths)
    assert report_from(merged([summarise(p) for p in paths])) == expected
    # A gap is no reconnect (icetools.recordings): only each file's own reconnects count.
    assert expected["reconnects"] == sum(json.loads(
        (RECORDINGS / f"{n}.stats.json").read_text())["reconnects"] for n in names)
    assert len(expected["gaps"]) == len(paths) - 1


def test_builds_go_on_across_a_short_pause_and_not_a_long_one(tmp_path: Path) -> None:
    alone = len(json.loads((RECORDINGS / "builds.stats.json").read_text())["builds"])
    paths = one_after_another(tmp_path / "a", ["builds", "builds"], [10.0])
    first_end = summarise(paths[0]).end
    short = report_from(merged([summarise(p) for p in paths]))
    long = report_from(merged([summarise(p) for p in one_after_another(tmp_path / "b", ["builds", "builds"], [100.0])]))
    assert len(long["builds"]) == 2 * alone
    assert len(short["builds"]) == 2 * alone - 1  # the last build of the first file goes on
    [joined] = [b for b in short["builds"] if b["start"] < first_end and b["end"] > first_end + 10]
    assert joined["jobs"] > 5


def test_the_edges_of_two_hand_made_files(tmp_path: Path) -> None:
    """The figures that depend on the next file: the peak second spans both files; a host the
    first file named turns up in the second by id before its report names it (what it did
    before is not counted under the name, as in one stream); a job in flight at the end of the
    first file ends there, unfinished, in a build that goes on in the second; the slots the
    host offered stop at the end of the first file (the gap's start: nothing counts in a gap)."""
    start = 1_800_000_000.0
    a = write(tmp_path / "a.icecap", start, [
        (0.0, m.MonStats(1, _host(1, 0))),
        (0.0, m.MonStats(2, _host(2, 4))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.0, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
        (1.0, m.MonGetCS(filename="c.c", job_id=3, client_id=1)),
        (1.0, m.MonGetCS(filename="d.c", job_id=4, client_id=1)),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (1.5, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
        (1.5, m.MonJobBegin(job_id=3, stime=0, host_id=2)),
        (1.5, m.MonJobBegin(job_id=4, stime=0, host_id=2)),
        (2.0, m.MonJobBegin(job_id=5, stime=0, host_id=9)),  # begun before: a host known by id only
        (3.0, m.MonJobDone(job_id=5, exitcode=0, real_msec=700)),
        (9.7, m.MonJobDone(job_id=1, exitcode=0, real_msec=8000)),
        (9.8, m.MonJobDone(job_id=2, exitcode=0, real_msec=8000)),
        (9.9, m.MonJobDone(job_id=3, exitcode=0, real_msec=8000)),
    ], end=9.9)  # job 4 runs on
    b = write(tmp_path / "b.icecap", start + 9.95, [
        (0.0, m.MonStats(1, _host(1, 0))),
        (0.0, m.MonGetCS(filename="e.c", job_id=1, client_id=1)),
        (0.0, m.MonGetCS(filename="f.c", job_id=2, client_id=1)),
        (0.0, m.MonJobBegin(job_id=1, stime=0, host_id=7)),  # node2 again, known by id only
        (0.0, m.MonJobBegin(job_id=2, stime=0, host_id=7)),
        (0.01, m.MonJobDone(job_id=1, exitcode=0, real_msec=5)),
        (0.02, m.MonJobDone(job_id=2, exitcode=0, real_msec=5)),
        (1.0, m.MonStats(7, _host(2, 4))),  # now it is node2
        (2.0, m.MonGetCS(filename="g.c", job_id=3, client_id=1)),
        (2.0, m.MonJobBegin(job_id=3, stime=0, host_id=7)),
        (3.0, m.MonJobDone(job_id=3, exitcode=0, real_msec=900)),
    ], end=4.0)
    expected = one_stream([a, b])
    got = report_from(merged([summarise(a), summarise(b)]))
    assert got == expected
    assert got["gaps"] == [{"t": 9.9, "until": 9.95, "seconds": 0.05}]  # nothing recorded there
    # Worked out by hand: 3 jobs in second 9 of the first file and 2 at 9.96 and 9.97.
    assert (got["peak_jobs_per_second"], got["peak_second"]) == (5, 9)
    assert (report_from(summarise(a))["peak_jobs_per_second"], report_from(summarise(b))["peak_jobs_per_second"]) == (3, 2)
    # Host #9 is a host of the first file only: the reconnect forgot it (its job is counted).
    assert "#9" in [h["name"] for h in report_from(summarise(a))["hosts"]]
    assert "#9" not in [h["name"] for h in got["hosts"]] and got["jobs"]["remote"] == 7
    node2 = next(h for h in got["hosts"] if h["name"] == "node2")
    assert node2["compiled"] == 3 + 1  # the two compiles before its name came are node #7's
    assert report_from(summarise(b))["hosts"][1]["compiled"] == 3  # (alone, node2 took them over)
    [build] = got["builds"]
    assert (build["start"], build["end"], build["jobs"], build["unfinished"]) == (1.0, 12.95, 7, 1)
    # node2's 4 slots from 0 s to the end of the first file at 9.9 s (the gap starts there: the
    # model forgot the hosts), then from its report at 10.95 s to the end at 13.95 s; no reconnect.
    assert got["utilisation"]["cluster"]["offered_slot_s"] == pytest.approx(4 * 9.9 + 4 * 3.0)
    assert got["reconnects"] == 0


# ---- the cache ----------------------------------------------------------------------------------


def test_a_file_seen_before_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    paths = one_after_another(tmp_path, ["build", "builds", "demo"], [5.0, 5.0])
    first = report_from(merged(summaries(paths, workers=1)))
    assert len(list(_own_cache.glob("*.sum"))) == 3

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("read a file whose summary is cached")

    monkeypatch.setattr(summary_mod, "summarise", no_reading)
    assert report_from(merged(summaries(paths, workers=1))) == first
    # Another gap is another summary.
    with pytest.raises(AssertionError, match="cached"):
        summaries(paths[:1], gap=60.0, workers=1)


def test_a_damaged_or_foreign_cache_entry_is_rebuilt(tmp_path: Path, _own_cache: Path) -> None:
    path = with_start(RECORDINGS / "build.icecap", tmp_path / "build.icecap", 1795849595.25)
    expected = report_from(summarise(path))
    summaries([path])
    entry = summary_path(path, 30.0, False)
    good = entry.read_bytes()
    import pickle
    import zlib

    for bad in (
        good[: len(good) // 2],  # cut short
        b"nonsense",
        SUMMARY_MAGIC + zlib.compress(pickle.dumps(("x" * 10, {"not": "a summary"}))),
        SUMMARY_MAGIC + zlib.compress(pickle.dumps((entry.name, {"not": "a summary"}))),
        # A pickle that would run something when loaded: never unpickled beyond icetools' classes.
        SUMMARY_MAGIC + zlib.compress(pickle.dumps((entry.name, _Boom()))),
    ):
        entry.write_bytes(bad)
        assert load(path, 30.0, False) is None
        assert report_from(summaries([path])[0]) == expected
        assert entry.read_bytes() != bad  # rebuilt
    assert not Path("/tmp/icetools-summary-was-unpickled").exists()  # (_Boom never ran)
    # Another file's entry under this file's name is foreign too.
    other = with_start(RECORDINGS / "builds.icecap", tmp_path / "builds.icecap", 1795849595.25)
    summaries([other])
    entry.write_bytes(summary_path(other, 30.0, False).read_bytes())
    assert load(path, 30.0, False) is None
    # A file that changes gets a new entry.
    assert summary_path(path, 30.0, False) != summary_path(path, 31.0, False)
    assert summary_path(path, 30.0, False) != summary_path(path, 30.0, True)


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/icetools-summary-was-unpickled",))


# ---- the command --------------------------------------------------------------------------------


def icetools(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_stats_over_several_files_in_parallel_and_from_the_cache(tmp_path: Path) -> None:
    paths = one_after_another(tmp_path, ["daemon-dies", "demo", "builds", "build"], [5.0, 2.0, 40.0])
    expected = one_stream(paths)
    given = [str(p) for p in reversed(paths)] + [str(paths[0])]  # any order; a file twice counts once
    first = icetools("stats", "--json", *given)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == expected
    assert first.stderr == ""
    cached = icetools("stats", "--json", *given)
    assert json.loads(cached.stdout) == expected
    text = icetools("stats", *given)
    assert text.stdout.startswith(f"{expected['duration']:.1f} s: {expected['jobs']['remote']} remote jobs")


def test_files_of_different_schedulers_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.icecap", 1_800_000_000.0, [(0.0, m.MonStats(1, _host(1, 1)))], end=1.0, scheduler="s:1")
    b = write(tmp_path / "b.icecap", 1_800_000_010.0, [(0.0, m.MonStats(1, _host(1, 1)))], end=1.0, scheduler="t:2")
    result = icetools("stats", str(b), str(a))
    assert result.returncode == 1
    assert result.stderr == f"icetools: error: will not read as one recording files from different schedulers: {a} (s:1), {b} (t:2)\n"
    # The same address but another netname (when both files name one) is another scheduler.
    c = write(tmp_path / "c.icecap", 1_800_000_020.0, [(0.0, m.MonStats(1, _host(1, 1)))], end=1.0, netname="A")
    d = write(tmp_path / "d.icecap", 1_800_000_030.0, [(0.0, m.MonStats(1, _host(1, 1)))], end=1.0, netname="B")
    result = icetools("stats", str(c), str(d))
    assert result.returncode == 1
    assert result.stderr == f"icetools: error: will not read as one recording files from different schedulers: {c} (s:1, netname A), {d} (s:1, netname B)\n"
    assert icetools("stats", str(a), str(c)).returncode == 0  # (one file names none)


def _grown(tmp_path: Path, n: int, frames: int) -> list[Path]:
    grown = tmp_path / "grown.icecap"
    subprocess.run([sys.executable, str(ROOT / "bench" / "grow.py"), str(RECORDINGS / "demo.icecap"), str(grown),
                    "--frames", str(frames)], check=True, capture_output=True, timeout=300)
    return [with_start(grown, tmp_path / f"g{i}.icecap", 1_800_000_000.0 + 1_000_000 * i) for i in range(n)]


def test_an_error_in_one_worker_is_one_line(tmp_path: Path) -> None:
    paths = _grown(tmp_path, 2, 30_000)
    bad = tmp_path / "bad.icecap"
    data = paths[1].read_bytes()
    middle = len(data) // 2
    bad.write_bytes(data[:middle] + b"\x09" * 64 + data[middle + 64 :])  # damage in the middle
    os.utime(bad)
    result = icetools("stats", str(paths[0]), str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith("icetools: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_the_first_pass_is_one_line_and_ends_the_workers(tmp_path: Path, sig: signal.Signals) -> None:
    paths = _grown(tmp_path, 2, 300_000)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "icetools", "stats", *map(str, paths)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # Wait for the workers (children of the command) to be running.
    deadline = time.monotonic() + 60
    children: list[int] = []
    while time.monotonic() < deadline and len(children) < 2:
        children = _children(proc.pid)
        time.sleep(0.05)
    assert len(children) >= 2, "the workers never started"
    # Ctrl-C reaches the whole process group; SIGTERM (a service manager) the command itself.
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # (click starts a new line after the ^C a terminal shows, as for every command)
    assert err.strip() == "icetools: aborted" and "Traceback" not in err
    assert out == ""
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"
    assert not list((tmp_path / "cache").rglob("*.sum"))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# ---- files that continue each other (format 2) --------------------------------------------------


def _carried(frames: list[tuple[float, bytes]], protocol: int, before: float) -> list[tuple[float, bytes]]:
    """What a rotation at ``before`` carries (docs/capture-format.md): each online host's latest
    MON_STATS, each job not done its MON_GET_CS and MON_JOB_BEGIN, each running local job its
    MON_LOCAL_JOB_BEGIN; in the order received."""
    state = CarriedFrames()
    for seq, (t, data) in enumerate(frames):
        if t > before:
            break
        state.feed((seq, t, data), protocol)
    return [(t - before, data) for _, t, data in state.kept()]


def rotated(source: Path, folder: Path, at: list[float], start: float = 1795849595.25) -> tuple[Path, list[Path]]:
    """``source``'s frames written unrotated and as a series rotated at the times ``at`` (each
    part carries the state at its start), with ``start`` as the first start."""
    folder.mkdir(parents=True, exist_ok=True)
    with CaptureReader(source) as reader:
        protocol = reader.header.protocol
        frames = [(r.t, r.data) for r in reader if isinstance(r, FrameRecord)]
    end = frames[-1][0] + 1.0
    whole = CaptureWriter(folder / "whole.icecap")
    whole.start = start
    whole.connected(protocol, protocol, protocol, "s:1", t=0.0)
    for t, data in frames:
        whole.frames([data], t=t)
    whole.close("stopped", t=end)
    series = "ab" * 16
    parts = []
    bounds = [0.0, *at, end]
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        writer = CaptureWriter(folder / f"part-{k}.icecap", series=series, part=k)
        writer.start = start + lo
        writer.connected(protocol, protocol, protocol, "s:1", t=0.0, rotated=k > 0)
        if k:
            writer.carried(_carried(frames, protocol, lo))
        for t, data in frames:
            if lo < t <= hi or (k == 0 and t == 0.0):
                writer.frames([data], t=t - lo)
        writer.close("rotated" if k < len(bounds) - 2 else "stopped", t=hi - lo)
        parts.append(writer.path)
    return whole.path, parts


@pytest.mark.parametrize("name", ["demo", "daemon-dies", "builds", "failures-local"])
def test_a_rotated_series_merges_into_the_unrotated_recording(tmp_path: Path, name: str) -> None:
    """A series rotated three times while jobs run (each part starting with the carried state):
    its merged summaries equal one stream of the parts (carried frames skipped) and the stats
    of the same frames recorded in one file; each part alone is what stats says of it."""
    source = RECORDINGS / f"{name}.icecap"
    duration = json.loads(source.with_suffix(".stats.json").read_text())["duration"]
    whole, parts = rotated(source, tmp_path, [round(duration * f, 2) for f in (0.25, 0.5, 0.75)])
    summaries_ = [summarise(p) for p in parts]
    assert summaries_[0].carried == 0 and summaries_[-1].carried > 0
    assert all(summaries_[k].continued_by(summaries_[k + 1]) for k in range(3))
    for p, s in zip(parts, summaries_):
        with CaptureReader(p) as reader:
            assert report_from(s) == analyse(reader)[0]  # (a part alone: stats' own answer)
    expected = one_stream(parts)
    got = report_from(merged(summaries_))
    assert _rounded(got) == _rounded(expected)
    assert _rounded(got) == _rounded(report_from(summarise(whole)))
    assert got["reconnects"] == 0 and got["gaps"] == []
    # The jobs running at a rotation were counted once.
    assert got["jobs"] == report_from(summarise(whole))["jobs"]


def _rounded(report: dict[str, Any]) -> Any:
    """The report with its sums of seconds to 2 decimals: a part's carried share is taken back
    by subtraction, which can move a float sum by a few units in its last place."""
    if isinstance(report, dict):  # (and without the gaps: a file read alone has none)
        return {k: _rounded(v) for k, v in report.items() if k != "gaps"}
    if isinstance(report, list):
        return [_rounded(v) for v in report]
    if isinstance(report, float):
        return round(report, 2)
    return report


def test_a_job_carried_before_its_submitter_s_report(tmp_path: Path) -> None:
    """Carried frames come in the order received: here a running job's request before its
    submitter's latest report, and a job waiting for the one slot. The next part alone names
    the build after its submitter once the report comes (not "#1"), and merged after the part it
    continues, the build goes on, the wait is counted once and the waiting time before the part
    began is not counted twice."""
    source = write(tmp_path / "source.icecap", 1_800_000_000.0, [
        (0.0, m.MonStats(2, _host(2, 1))),
        (0.5, m.MonStats(1, _host(1, 0))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.2, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (1.5, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),  # waits: the slot is taken
        (2.0, m.MonStats(1, _host(1, 0).replace("Load:10", "Load:20"))),  # node1's latest report
        (4.0, m.MonJobDone(job_id=1, exitcode=0, real_msec=2500)),
        (4.5, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
        (5.0, m.MonJobDone(job_id=2, exitcode=0, real_msec=400)),
    ], end=6.0)
    whole, parts = rotated(source, tmp_path / "rotated", [3.0], start=1_800_000_000.0)
    alone = report_from(summarise(parts[1]))
    assert [b["submitter"] for b in alone["builds"]] == ["node1"]
    got = report_from(merged([summarise(p) for p in parts]))
    assert got == one_stream(parts)
    assert _rounded(got) == _rounded(report_from(summarise(whole)))
    [build] = got["builds"]
    assert (build["submitter"], build["jobs"], build["unfinished"], build["start"], build["end"]) == ("node1", 2, 0, 1.0, 5.0)
    assert got["wait"]["cluster"] == {"count": 2, "p50_ms": 200, "p95_ms": 3000, "max_ms": 3000}
    # Job 2 waited from 1.5 s to 4.0 s with no slot free, then until 4.5 s with one free (and
    # job 1 for 0.2 s with the slot free).
    assert (got["saturated_s"], got["waiting_with_free_slots_s"]) == (2.5, 0.7)


def test_a_file_still_being_recorded_is_not_cached(tmp_path: Path, _own_cache: Path) -> None:
    writer = CaptureWriter(tmp_path / "growing.icecap")
    writer.connected(43, 43, 44, "s:1", t=0.0)
    writer.frames([m.encode(m.MonStats(1, _host(1, 1)), 43)], t=1.0)
    try:
        first = summaries([writer.path])[0]
        assert not first.complete
        assert not list(_own_cache.glob("*.sum"))  # (it grows: every run would add an entry)
        writer.close("stopped", t=2.0)
        assert summaries([writer.path])[0].complete
        assert len(list(_own_cache.glob("*.sum"))) == 1
    finally:
        writer.close("stopped")


def test_stats_over_a_series_written_by_the_rotating_recorder(tmp_path: Path) -> None:
    """The rotating recorder itself (icetools.rotation.RotatingWriter, on a clock that follows
    the recording) writes demo's frames as a series rotated by size while jobs run; `stats`
    over its files equals `stats` of the same frames in one file, and the first file alone
    equals stats of that file."""
    from icetools.rotation import RotatingWriter, Rotation

    with CaptureReader(RECORDINGS / "demo.icecap") as reader:
        header = reader.header
        frames = [(r.t, r.data) for r in reader if isinstance(r, FrameRecord)]
    now = [0.0]
    start = 1_800_000_000.0
    series = RotatingWriter(str(tmp_path / "rotated" / "part-%H%M%S.icecap"), Rotation(size=20_000),
                            clock=lambda: now[0], wall=lambda: start)
    whole = CaptureWriter(tmp_path / "whole.icecap")
    whole.start = start
    for sink in (series, whole):
        sink.connected(header.protocol, header.peer_version, header.offered, header.scheduler, 0.0)
    for t, data in frames:
        now[0] = t
        series.frames([data])
        whole.frames([data], t=t)
    now[0] = frames[-1][0] + 1.0
    series.close("stopped")
    whole.close("stopped", t=now[0])
    parts = sorted((tmp_path / "rotated").glob("*.icecap"), key=lambda p: CaptureReader(p).header.part)
    assert len(parts) >= 4
    with_carried = [p for p in parts if CaptureReader(p).header.part and _carried_count(p)]
    assert len(with_carried) >= 3  # (jobs ran across the rotations)
    expected = one_stream(parts)
    result = icetools("stats", "--json", *map(str, parts))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got == report_from(merged([summarise(p) for p in parts]))
    assert _rounded(got) == _rounded(expected)
    assert _rounded(got) == _rounded(report_from(summarise(whole.path)))
    assert got["reconnects"] == 0 and got["jobs"] == report_from(summarise(whole.path))["jobs"]


def _carried_count(path: Path) -> int:
    with CaptureReader(path) as reader:
        for _ in reader:
            pass
        return reader.carried


def test_one_file_to_read_pays_for_no_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = one_after_another(tmp_path, ["build", "builds", "demo"], [5.0, 5.0])
    summaries(paths[:2])  # (two files: in parallel)

    class NoPool:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("a pool for one file")

    monkeypatch.setattr(summary_mod.concurrent.futures, "ProcessPoolExecutor", NoPool)
    got = summaries(paths)  # two cached, one to read: read here
    assert report_from(merged(got)) == one_stream(paths)


# ---- a file's own time range; gaps with carried frames ----------------------------------------


def _rotated_by_the_recorder(source: Path, folder: Path, seconds: float) -> tuple[Path, list[Path]]:
    """``source``'s frames written by icetools.rotation.RotatingWriter rotating every
    ``seconds`` (on a clock that follows the recording), and the same frames in one file."""
    from icetools.rotation import RotatingWriter, Rotation

    with CaptureReader(source) as reader:
        header = reader.header
        frames = [(r.t, r.data) for r in reader if isinstance(r, FrameRecord)]
    now = [0.0]
    start = 1_800_000_000.0
    series = RotatingWriter(str(folder / "rotated" / "part-%H%M%S.icecap"), Rotation(seconds=seconds),
                            clock=lambda: now[0], wall=lambda: start + now[0])
    whole = CaptureWriter(folder / "whole.icecap")
    whole.start = start
    for sink in (series, whole):
        sink.connected(header.protocol, header.peer_version, header.offered, header.scheduler, 0.0)
    for t, data in frames:
        now[0] = t
        series.frames([data])
        whole.frames([data], t=t)
    now[0] = frames[-1][0] + 1.0
    series.close("stopped")
    whole.close("stopped", t=now[0])
    parts = sorted((folder / "rotated").glob("*.icecap"), key=lambda p: CaptureReader(p).header.part)
    return whole.path, parts


def _alone(path: Path) -> dict[str, Any]:
    with CaptureReader(path) as reader:
        return analyse(reader)[0]


def test_a_part_alone_reports_its_own_time_range(tmp_path: Path) -> None:
    """demo rotated every 20 s: each part alone (carried frames going back before its start)
    counts duration, slot-seconds and waiting from its first connect record, a carried job's
    wait only if it starts in the part, and no carried request or local job as its own: its
    summary and the streaming stats agree, and the parts' additive figures add up to the whole
    (before: parts of 30-48 s and 3001 offered slot-seconds against 2319 for the whole)."""
    whole_path, parts = _rotated_by_the_recorder(RECORDINGS / "demo.icecap", tmp_path, 20.0)
    assert len(parts) >= 4
    assert sum(1 for p in parts if _carried_count(p)) >= 3  # (jobs and hosts carried across)
    whole = _alone(whole_path)
    alone = []
    for p in parts:
        report = _alone(p)
        assert report_from(summarise(p)) == report  # one mechanism: the summary is the stream's
        with CaptureReader(p) as reader:
            assert analyse(reader, fast=False)[0] == report  # (record by record: the same)
        with CaptureReader(p) as reader:
            records = list(reader)
        # Its own time range: from its first connect record (time 0) to its last record.
        assert report["duration"] <= round(records[-1].t - records[0].t, 3) + 0.001
        alone.append(report)

    def total(key: Any) -> float:
        return round(sum(key(r) for r in alone), 3)

    for key in ("remote", "local", "failed", "lost", "unseen"):
        assert total(lambda r: r["jobs"][key]) == whole["jobs"][key], key
    # (A local re-run of a compile that failed in the part before is seen only merged.)
    assert total(lambda r: r["jobs"]["rerun_locally"]) < whole["jobs"]["rerun_locally"]
    assert total(lambda r: r["duration"]) == pytest.approx(whole["duration"], abs=0.01)
    for key in ("offered_slot_s", "busy_slot_s"):
        assert total(lambda r: r["utilisation"]["cluster"][key]) == pytest.approx(
            whole["utilisation"]["cluster"][key], abs=0.01), key
    for key in ("waiting_with_free_slots_s", "saturated_s"):
        assert total(lambda r: r[key]) == pytest.approx(whole[key], abs=0.01), key
    assert sum(r["wait"]["cluster"]["count"] for r in alone) == whole["wait"]["cluster"]["count"]
    for name in {h["name"] for h in whole["hosts"]}:
        for key in ("compiled", "submitted", "local", "failed"):
            assert sum(h[key] for r in alone for h in r["hosts"] if h["name"] == name) == next(
                h[key] for h in whole["hosts"] if h["name"] == name), (name, key)
    # And merged, the series is the whole recording, as the streaming read of the files says.
    got = report_from(merged([summarise(p) for p in parts]))
    assert got == one_stream(parts)
    assert _rounded(got) == _rounded(whole)


def test_a_missing_part_is_a_gap_and_the_next_part_starts_from_its_carried_state(tmp_path: Path) -> None:
    """A rotated series with a part missing: the part after it follows a gap (its carried
    frames clamped to its connect record, as icetools.recordings reads it). Its merged
    summaries equal the streaming read key for key: the gap starts where the part before
    ended, nothing counts in it, it is no reconnect; and `stats --json` over the files (the
    cached summaries, a process per file) gives the same report, as does its text."""
    source = RECORDINGS / "demo.icecap"
    duration = json.loads(source.with_suffix(".stats.json").read_text())["duration"]
    at = [round(duration * f, 2) for f in (0.2, 0.4, 0.6, 0.8)]
    _, parts = rotated(source, tmp_path, at)
    kept = [parts[0], parts[1], parts[3], parts[4]]  # part 2 is missing
    assert _carried_count(parts[3]) > 0
    expected = one_stream(kept)
    assert expected["gaps"] == [{"t": at[1], "until": at[2], "seconds": round(at[2] - at[1], 3)}]
    assert expected["reconnects"] == 0
    got = report_from(merged([summarise(p) for p in kept]))
    assert got == expected
    # Nothing counted in the gap: the slots offered are those of the two pieces around it.
    pieces = one_stream(kept[:2])["utilisation"]["cluster"]["offered_slot_s"] + one_stream(kept[2:])["utilisation"]["cluster"]["offered_slot_s"]
    assert expected["utilisation"]["cluster"]["offered_slot_s"] == pytest.approx(pieces, abs=0.002)
    result = icetools("stats", "--json", *map(str, reversed(kept)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected
    cached = icetools("stats", "--json", *map(str, kept))
    assert json.loads(cached.stdout) == expected
    text = icetools("stats", *map(str, kept))
    with CaptureReader(kept[0]) as reader:
        assert text.stdout == render_report(expected, reader.header.start) + "\n"


@pytest.mark.parametrize("block", [55, 95, 209, 1045, 4096])  # (the first four end one right after it)
def test_carried_frames_settle_wherever_the_read_blocks_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             block: int) -> None:
    """pump() settles the carried frames once, after the last one, whether that one ends a
    read block, straddles two or is followed by a record in the same block."""
    from icetools import capture

    source = RECORDINGS / "demo.icecap"
    duration = json.loads(source.with_suffix(".stats.json").read_text())["duration"]
    _, parts = rotated(source, tmp_path, [round(duration * 0.5, 2)])
    expected = _alone(parts[1])
    monkeypatch.setattr(capture, "READ_BLOCK", block)
    assert _alone(parts[1]) == expected


def test_a_job_carried_after_a_gap_waits_from_the_connect(tmp_path: Path) -> None:
    """After a gap, a job requested before the part began (a carried request) and started in
    it: the streaming read clamps its request to the part's connect record, so its wait and its
    build start there; the merged summaries say the same (the part is read again clamped)."""
    source = write(tmp_path / "source.icecap", 1_800_000_000.0, [
        (0.0, m.MonStats(2, _host(2, 1))),
        (0.5, m.MonStats(1, _host(1, 0))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.2, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (1.5, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),  # waits: the slot is taken
        (2.5, m.MonJobDone(job_id=1, exitcode=0, real_msec=1000)),
        (3.0, m.MonGetCS(filename="c.c", job_id=3, client_id=1)),
        (6.5, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
        (7.0, m.MonJobDone(job_id=2, exitcode=0, real_msec=400)),
        (7.5, m.MonJobBegin(job_id=3, stime=0, host_id=2)),
        (8.0, m.MonJobDone(job_id=3, exitcode=0, real_msec=400)),
    ], end=9.0)
    _, parts = rotated(source, tmp_path / "rotated", [2.0, 6.0], start=1_800_000_000.0)
    kept = [parts[0], parts[2]]  # the part from 2 s to 6 s is missing
    expected = one_stream(kept)
    got = report_from(merged([summarise(p) for p in kept]))
    assert got == expected
    assert expected["gaps"] == [{"t": 2.0, "until": 6.0, "seconds": 4.0}]
    # Jobs 2 and 3 (requested at 1.5 and 3.0 s) wait from the connect at 6.0 s: 500 and 1500 ms;
    # job 1's wait (200 ms) in the first part.
    assert expected["wait"]["cluster"] == {"count": 3, "p50_ms": 500, "p95_ms": 1500, "max_ms": 1500}
    # Alone, the last part counts the waits from the requests (5000 and 4500 ms).
    assert _alone(parts[2])["wait"]["cluster"]["max_ms"] == 5000
    assert report_from(summarise(parts[2])) == _alone(parts[2])
