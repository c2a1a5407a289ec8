"""`stats` answers "why was the build slow": waits, slot use, builds, transfer time (issue 11).

The definitions (docs/analysis.md) are checked on a hand-made stream with every figure worked
out by hand, then on real builds: the shipped recording of overlapping builds and the same
builds run live on a real cluster while `icetools record` records them, each figure checked
against what the test itself ran and against the rows of `icetools jobs`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, ConnectRecord, FrameRecord, Record
from icetools.monitor import Monitor
from icetools.replay import replay
from icetools.stats import WhyAnalysis, _wait_bucket, analyse, report

from . import realcluster
from .build_sessions import BuildRun, overlapping_builds, warm_up

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"


def icetools(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=120)


def _stream(frames: list[tuple[float, m.Message]]) -> list[Record]:
    records: list[Record] = [ConnectRecord(0.0, 43, 43, 44, "s:1", False)]
    records += [FrameRecord(t, m.encode(message, 43), 43) for t, message in frames]
    return records


def _why(records: list[Record], gap: float = 30.0) -> dict[str, Any]:
    why = WhyAnalysis(gap)
    monitor = Monitor(publishers=[why])
    replay(monitor, records)
    why.finish(monitor)
    return report(monitor, why)


def _host(n: int, max_jobs: int, extra: str = "") -> str:
    return f"Name:node{n}\nIP:10.0.0.{n}\nMaxJobs:{max_jobs}\n{extra}Load:10\n"


# ---- the definitions, on a stream worked out by hand -----------------------------------------

# node1 and node3 submit; node2 compiles (1 slot); node4 accepts no remote jobs (NoRemote) and
# node1 none either (MaxJobs 0): only node2 offers slots. gap = 10 s.
HAND_MADE: list[tuple[float, m.Message]] = [
    (0.0, m.MonStats(1, _host(1, 0))),
    (0.0, m.MonStats(2, _host(2, 1))),
    (0.0, m.MonStats(3, _host(3, 0))),
    (0.0, m.MonStats(4, _host(4, 2, "NoRemote:true\n"))),
    # node1's first build: two compiles on node2's single slot (b.c waits 1.5 s: 1 s with the
    # slot taken, 0.5 s with it free), then a link.
    (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
    (1.0, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
    (2.0, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
    (3.0, m.MonJobDone(job_id=1, exitcode=0, real_msec=1500)),
    (3.5, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
    (5.0, m.MonJobDone(job_id=2, exitcode=0, real_msec=1000)),
    (5.0, m.MonLocalJobBegin(host_id=1, job_id=3, stime=0, file="prog")),
    (6.0, m.JobLocalDone(job_id=3)),
    # node3's build: one slow compile (15 s, longer than the gap) and, 5 s after it ended,
    # another request: still the same build (the gap counts from the last activity).
    (20.0, m.MonGetCS(filename="slow.c", job_id=4, client_id=3)),
    (20.0, m.MonJobBegin(job_id=4, stime=0, host_id=2)),
    (35.0, m.MonJobDone(job_id=4, exitcode=0, real_msec=14000)),
    (40.0, m.MonGetCS(filename="late.c", job_id=5, client_id=3)),
    (40.0, m.MonJobBegin(job_id=5, stime=0, host_id=2)),
    (41.0, m.MonJobDone(job_id=5, exitcode=1, real_msec=100)),
    # node1 again after 42 s of quiet: a new build.
    (48.0, m.MonGetCS(filename="c.c", job_id=6, client_id=1)),
    (48.0, m.MonJobBegin(job_id=6, stime=0, host_id=2)),
    (49.0, m.MonJobDone(job_id=6, exitcode=0, real_msec=800)),
    (50.0, m.MonStats(2, "State:Offline\n")),
    (60.0, m.MonStats(1, _host(1, 0))),  # the recording goes on to 60 s
]


def test_each_figure_on_a_stream_worked_out_by_hand() -> None:
    r = _why(_stream(HAND_MADE), gap=10.0)
    # Waits (ms): node1 0, 1500, 0; node3 0, 0.
    assert r["wait"]["cluster"] == {"count": 5, "p50_ms": 0, "p95_ms": 1500, "max_ms": 1500}
    assert r["wait"]["submitters"] == [
        {"name": "node1", "count": 3, "p50_ms": 0, "p95_ms": 1500, "max_ms": 1500},
        {"name": "node3", "count": 2, "p50_ms": 0, "p95_ms": 0, "max_ms": 0},
    ]
    # node2: 1 slot online 0..50 s; busy 2 + 1.5 + 15 + 1 + 1 s.
    assert r["utilisation"] == {
        "cluster": {"offered_slot_s": 50.0, "busy_slot_s": 20.5, "ratio": 0.41},
        "hosts": [{"name": "node2", "offered_slot_s": 50.0, "busy_slot_s": 20.5, "ratio": 0.41}],
    }
    assert (r["waiting_with_free_slots_s"], r["saturated_s"]) == (0.5, 1.0)
    assert r["build_gap_s"] == 10.0
    assert r["builds"] == [
        {"submitter": "node1", "start": 1.0, "end": 6.0, "wall_s": 5.0, "jobs": 3, "remote": 2, "local": 1,
         "failed": 0, "lost": 0, "unfinished": 0, "run_s": 4.5, "parallelism": 0.9, "wait_p95_ms": 1500,
         "slowest_file": "a.c"},
        {"submitter": "node3", "start": 20.0, "end": 41.0, "wall_s": 21.0, "jobs": 2, "remote": 2, "local": 0,
         "failed": 1, "lost": 0, "unfinished": 0, "run_s": 16.0, "parallelism": 0.76, "wait_p95_ms": 0,
         "slowest_file": "slow.c"},
        {"submitter": "node1", "start": 48.0, "end": 49.0, "wall_s": 1.0, "jobs": 1, "remote": 1, "local": 0,
         "failed": 0, "lost": 0, "unfinished": 0, "run_s": 1.0, "parallelism": 1.0, "wait_p95_ms": 0,
         "slowest_file": "c.c"},
    ]
    # node2 ran 20.5 s of remote jobs and measured 17.4 s of compiling.
    assert r["transfer"] == [{"name": "node2", "jobs": 5, "run_s": 20.5, "compile_s": 17.4, "transfer_s": 3.1}]
    # With the default gap of 30 s, node3's two requests 20 s apart are one build anyway and
    # node1's 42 s pause still splits its builds.
    assert [b["submitter"] for b in _why(_stream(HAND_MADE))["builds"]] == ["node1", "node3", "node1"]
    # A gap longer than node1's pause joins its two builds (the one of node3 in between is
    # another submitter's).
    joined = _why(_stream(HAND_MADE), gap=45.0)["builds"]
    assert [(b["submitter"], b["jobs"], b["start"], b["end"]) for b in joined] == [("node1", 4, 1.0, 49.0), ("node3", 2, 20.0, 41.0)]


def test_slots_follow_max_jobs_offline_and_a_host_that_comes_back() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, _host(1, 0))),
        (0.0, m.MonStats(2, _host(2, 2))),
        (10.0, m.MonStats(2, _host(2, 4))),  # MaxJobs 2 -> 4 at 10 s
        (20.0, m.MonStats(2, "State:Offline\n")),
        (25.0, m.MonStats(2, _host(2, 1, "NoRemote:false\n"))),  # back at 25 s with 1 slot
        (26.0, m.MonStats(2, _host(2, 1, "NoRemote:true\n"))),  # stops taking remote jobs
        (30.0, m.MonStats(1, _host(1, 0))),
    ]
    use = _why(_stream(frames))["utilisation"]["hosts"]
    assert use == [{"name": "node2", "offered_slot_s": 2 * 10 + 4 * 10 + 1 * 1, "busy_slot_s": 0.0, "ratio": 0.0}]


def test_a_host_running_more_jobs_than_its_slots_counts_as_full() -> None:
    frames: list[tuple[float, m.Message]] = [(0.0, m.MonStats(1, _host(1, 0))), (0.0, m.MonStats(2, _host(2, 1)))]
    for job_id in (1, 2):
        frames += [(1.0, m.MonGetCS(filename=f"{job_id}.c", job_id=job_id, client_id=1)),
                   (1.0, m.MonJobBegin(job_id=job_id, stime=0, host_id=2))]
    frames += [(3.0, m.MonJobDone(job_id=1, exitcode=0)), (3.0, m.MonJobDone(job_id=2, exitcode=0)),
               (4.0, m.MonStats(1, _host(1, 0)))]
    r = _why(_stream(frames))
    assert r["utilisation"]["cluster"] == {"offered_slot_s": 4.0, "busy_slot_s": 2.0, "ratio": 0.5}
    assert r["builds"][0]["parallelism"] == 2.0  # the jobs' own run time is not cut


def test_a_reconnect_ends_what_was_in_flight_and_the_slots_count_again_from_the_new_reports() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, _host(1, 0))),
        (0.0, m.MonStats(2, _host(2, 1))),
        (1.0, m.MonGetCS(filename="old.c", job_id=1, client_id=1)),
        (1.0, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        # reconnect at 2 s: the new scheduler numbers hosts and jobs from 1 again
        (3.0, m.MonStats(1, _host(2, 1))),
        (3.0, m.MonStats(2, _host(1, 0))),
        (3.0, m.MonGetCS(filename="new.c", job_id=1, client_id=2)),
        (3.0, m.MonJobBegin(job_id=1, stime=0, host_id=1)),
        (4.0, m.MonJobDone(job_id=1, exitcode=0, real_msec=900)),
        (5.0, m.MonStats(2, _host(1, 0))),
    ]
    records = _stream(frames)
    records.insert(5, ConnectRecord(2.0, 43, 43, 44, "s:1", True))
    r = _why(records)
    # node2: 1 slot for 0-2 s and 3-5 s; busy 1-2 s (old.c, cut by the reconnect) and 3-4 s.
    assert r["utilisation"]["hosts"] == [{"name": "node2", "offered_slot_s": 4.0, "busy_slot_s": 2.0, "ratio": 0.5}]
    assert r["builds"] == [
        {"submitter": "node1", "start": 1.0, "end": 4.0, "wall_s": 3.0, "jobs": 2, "remote": 2, "local": 0,
         "failed": 0, "lost": 0, "unfinished": 1, "run_s": 1.0, "parallelism": 0.33, "wait_p95_ms": 0,
         "slowest_file": "new.c"},
    ]


def test_a_job_begun_again_elsewhere_frees_its_first_slot() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, _host(1, 0))),
        (0.0, m.MonStats(2, _host(2, 1))),
        (0.0, m.MonStats(3, _host(3, 1))),
        (1.0, m.MonGetCS(filename="moved.c", job_id=1, client_id=1)),
        (1.0, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (2.0, m.MonJobBegin(job_id=1, stime=0, host_id=3)),  # the scheduler moved it
        (2.0, m.MonGetCS(filename="next.c", job_id=2, client_id=1)),
        (2.0, m.MonJobBegin(job_id=2, stime=0, host_id=2)),  # node2's slot is free again
        (3.0, m.MonJobDone(job_id=1, exitcode=0, real_msec=900)),
        (3.0, m.MonJobDone(job_id=2, exitcode=0, real_msec=900)),
        (4.0, m.MonStats(1, _host(1, 0))),
    ]
    r = _why(_stream(frames))
    assert [(h["name"], h["busy_slot_s"]) for h in r["utilisation"]["hosts"]] == [("node2", 2.0), ("node3", 1.0)]
    assert (r["waiting_with_free_slots_s"], r["saturated_s"]) == (0.0, 0.0)
    # As in `jobs`: the job started when it began anew (so it waited 1 s and ran 1 s).
    assert r["wait"]["cluster"] == {"count": 2, "p50_ms": 0, "p95_ms": 1000, "max_ms": 1000}


def test_a_host_known_by_id_before_its_first_report_counts_under_its_name() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, _host(1, 0))),
        (1.0, m.MonJobBegin(job_id=7, stime=0, host_id=2)),  # requested before the recording
        (2.0, m.MonStats(2, _host(2, 2))),
        (3.0, m.MonJobDone(job_id=7, exitcode=0, real_msec=1500)),
        (4.0, m.MonStats(1, _host(1, 0))),
    ]
    r = _why(_stream(frames))
    assert r["utilisation"]["hosts"] == [{"name": "node2", "offered_slot_s": 4.0, "busy_slot_s": 1.0, "ratio": 0.25}]
    assert r["builds"] == [] and r["wait"]["cluster"]["count"] == 0
    assert r["transfer"] == [{"name": "node2", "jobs": 1, "run_s": 2.0, "compile_s": 1.5, "transfer_s": 0.5}]


def test_jobs_that_never_end_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import icetools.stats

    monkeypatch.setattr(icetools.stats, "MAX_IN_FLIGHT", 10)
    frames: list[tuple[float, m.Message]] = [(0.0, m.MonStats(1, _host(1, 0))), (0.0, m.MonStats(2, _host(2, 1)))]
    frames += [(1.0 + i, m.MonGetCS(filename=f"{i}.c", job_id=i, client_id=1)) for i in range(1, 31)]
    why = WhyAnalysis()
    monitor = Monitor(publishers=[why])
    replay(monitor, _stream(frames))
    assert len(why._open) == 10 and why._waiting == 10  # the 20 oldest ended, unfinished
    why.finish(monitor)
    (build,) = report(monitor, why)["builds"]
    assert (build["jobs"], build["unfinished"], build["wait_p95_ms"]) == (30, 30, None)
    # node2's slot stayed free while they waited, from the first request (2 s) to the end (31 s).
    assert (report(monitor, why)["waiting_with_free_slots_s"], report(monitor, why)["saturated_s"]) == (29.0, 0.0)


def test_the_wait_histogram_is_exact_below_ten_seconds_and_four_digits_above() -> None:
    frames: list[tuple[float, m.Message]] = [(0.0, m.MonStats(1, _host(1, 0))), (0.0, m.MonStats(2, _host(2, 8)))]
    waits_ms = [1, 9999, 12_345, 123_456]
    for job_id, wait in enumerate(waits_ms, 1):
        frames += [(1.0, m.MonGetCS(filename=f"{job_id}.c", job_id=job_id, client_id=1))]
    for job_id, wait in sorted(enumerate(waits_ms, 1), key=lambda x: x[1]):
        frames += [(1.0 + wait / 1000, m.MonJobBegin(job_id=job_id, stime=0, host_id=2))]
    waits = _why(_stream(frames))["wait"]["cluster"]
    assert waits == {"count": 4, "p50_ms": 9999, "p95_ms": 123_400, "max_ms": 123_456}
    assert _why(_stream(frames[:-1]))["wait"]["cluster"]["p95_ms"] == 12_340


def test_memory_stays_bounded_on_a_long_stream() -> None:
    with CaptureReader(RECORDINGS / "demo.icecap") as reader:
        template = [m.decode(r.data, r.protocol) for r in reader if isinstance(r, FrameRecord)]
    max_job = max(getattr(msg, "job_id", 0) for msg in template)
    why = WhyAnalysis(gap=0.5)  # every cycle is a build of its own (and of each submitter)
    monitor = Monitor(max_finished=100, publishers=[why])
    monitor.connected(43, 0.0)

    def cycle(n: int) -> None:
        for msg in template:
            if hasattr(msg, "job_id"):
                msg = msg.replace(job_id=msg.job_id + n * max_job)
            monitor.feed(msg, float(n))

    tracemalloc.start()
    try:
        for n in range(10):
            cycle(n)
        early, _ = tracemalloc.get_traced_memory()
        for n in range(10, 50):
            cycle(n)
        late, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    why.finish(monitor)
    assert len(why.builds) == 50 and not why._open and not why._builds
    # 40 more cycles of 476 jobs: what grows is one closed build's figures per cycle.
    assert late - early < 100_000, (early, late)


# ---- real builds ------------------------------------------------------------------------------


def _jobs(path: Path) -> list[dict[str, Any]]:
    result = icetools("jobs", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _stats(path: Path, *args: str) -> dict[str, Any]:
    result = icetools("stats", "--json", *args, str(path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _nearest_rank(values: list[int], pct: int) -> int:
    """The nearest-rank percentile as stats reports it: waits of 10 s and more are kept to four
    significant digits (docs/analysis.md), so the rank's value is shown rounded down to them."""
    ordered = sorted(values)
    return _wait_bucket(ordered[max(1, -(-len(ordered) * pct // 100)) - 1])


def check_against_jobs(stats: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Every "why" figure that the job rows determine, worked out here from the rows."""
    remote = [r for r in rows if r["kind"] == "remote"]
    waits = [int(r["wait_ms"] + 0.5) for r in remote if r["wait_ms"] is not None]
    assert stats["wait"]["cluster"] == {
        "count": len(waits), "p50_ms": _nearest_rank(waits, 50), "p95_ms": _nearest_rank(waits, 95), "max_ms": max(waits),
    }
    for entry in stats["wait"]["submitters"]:
        mine = [int(r["wait_ms"] + 0.5) for r in remote if r["submitter"] == entry["name"] and r["wait_ms"] is not None]
        assert (entry["count"], entry["p95_ms"]) == (len(mine), _nearest_rank(mine, 95))
    # The builds partition the jobs.
    assert sum(b["jobs"] for b in stats["builds"]) == len(rows)
    assert sum(b["remote"] for b in stats["builds"]) == len(remote)
    for b in stats["builds"]:
        mine = [r for r in rows if r["submitter"] == b["submitter"] and b["start"] <= round(r["requested"], 3) <= b["end"]]
        assert len(mine) == b["jobs"]
        run = sum(r["run_ms"] for r in mine) / 1000
        assert b["run_s"] == pytest.approx(run, abs=0.002)
        assert b["wall_s"] == pytest.approx(max(r["ended"] for r in mine) - min(r["requested"] for r in mine), abs=0.002)
    # Busy slot-seconds are the remote jobs' run times (no host ran more jobs than its slots;
    # a host that went offline stops offering slots before its lost jobs' ends are reported).
    use = stats["utilisation"]
    exact = not any(r["outcome"] == "lost" for r in remote)
    for name, entry in [(None, use["cluster"])] + [(h["name"], h) for h in use["hosts"]]:
        busy = sum(r["run_ms"] for r in remote if name is None or r["server"] == name) / 1000
        if exact:
            assert entry["busy_slot_s"] == pytest.approx(busy, abs=0.005), name
        else:
            assert entry["busy_slot_s"] <= busy + 0.005, name
        assert 0 <= entry["ratio"] <= 1
    for t in stats["transfer"]:
        mine = [r for r in remote if r["server"] == t["name"]]
        run, real = sum(r["run_ms"] for r in mine), sum(r["real_msec"] for r in mine)
        assert (t["jobs"], t["run_s"], t["compile_s"]) == (len(mine), round(run / 1000, 3), round(real / 1000, 3))
        assert t["transfer_s"] == round(max(0, run - real) / 1000, 3)


def check_builds(stats: dict[str, Any], rows: list[dict[str, Any]], runs: list[tuple[str, list[str], str]]) -> None:
    """The builds found are the builds run: (submitter, sources compiled, object linked) each;
    the first two ran at once and are listed by their first request (then by name)."""
    builds = stats["builds"]
    first = {s: min(round(r["requested"], 3) for r in rows if r["submitter"] == s) for s, _, _ in runs[:2]}
    runs = sorted(runs[:2], key=lambda run: (first[run[0]], run[0])) + runs[2:]
    assert [b["submitter"] for b in builds] == [submitter for submitter, _, _ in runs]
    for b, (submitter, sources, link) in zip(builds, runs):
        # Each source compiled remotely once, and the link. (Under load a spoke daemon can lose
        # the scheduler mid-build: its jobs end lost and icecc compiles them again locally.)
        assert (b["remote"], b["failed"], b["unfinished"]) == (len(sources), 0, 0)
        assert b["local"] == 1 + b["lost"]
        mine = [r for r in rows if r["submitter"] == submitter and b["start"] <= round(r["requested"], 3) <= b["end"]]
        assert sorted(Path(r["file"]).name for r in mine if r["kind"] == "remote") == sorted(Path(s).name for s in sources)
        assert Path(link).name in [Path(r["file"]).name for r in mine if r["kind"] == "local"]
        assert b["parallelism"] is not None and b["parallelism"] > 0
        assert Path(b["slowest_file"]).name in {Path(s).name for s in sources} | {Path(link).name}
    # More jobs than slots: the overlapping builds waited, for lack of slots part of the time.
    assert stats["wait"]["cluster"]["max_ms"] > 0
    assert builds[0]["wait_p95_ms"] > 0 or builds[1]["wait_p95_ms"] > 0
    # Waiting for want of any free slot is what the overlap is for, but whether the builds (slow
    # on a loaded machine) ever asked for more than the free slots at once is up to timing: they
    # waited, with or without a free slot.
    assert stats["saturated_s"] + stats["waiting_with_free_slots_s"] > 0
    # Every host that accepts remote jobs (one slot each) offered it for the whole recording,
    # from its login report within the first second; less if it lost the scheduler meanwhile.
    for host in stats["utilisation"]["hosts"]:
        assert host["offered_slot_s"] <= stats["duration"]
        if not any(b["lost"] for b in builds):
            assert stats["duration"] - 1 <= host["offered_slot_s"]


def test_the_shipped_recording_of_overlapping_builds() -> None:
    path = RECORDINGS / "builds.icecap"
    stats, rows = _stats(path), _jobs(path)
    assert stats == json.loads(path.with_suffix(".stats.json").read_text())
    check_against_jobs(stats, rows)
    # How recordings/make_recordings.py made it (tests/build_sessions.py, 4 files a build).
    runs = [(submitter, [f"builds/{tag}/{tag}_{i}.c" for i in range(4)], f"builds/{tag}/{tag}.o")
            for submitter, tag in (("node1", "alpha"), ("node2", "beta"), ("node1", "gamma"))]
    check_builds(stats, rows, runs)
    assert stats["saturated_s"] > 0  # this session's overlap did ask for more than the slots
    assert {h["name"] for h in stats["utilisation"]["hosts"]} == {"node2", "node3"}
    # With a gap longer than the pause, node1's two builds are one.
    joined = _stats(path, "--gap", "60")["builds"]
    assert [(b["submitter"], b["jobs"]) for b in joined] == [("node1", 10), ("node2", 5)]


def test_text_report_and_bad_gap() -> None:
    result = icetools("stats", str(RECORDINGS / "builds.icecap"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "builds (3; a pause of 30 s or more" in text
    assert "waiting for a compile host" in text and "slots (hosts that accept remote jobs" in text
    lines = [line.split() for line in text.splitlines()]
    assert [line[0] for line in lines if len(line) == 11 and line[1].replace(".", "").isdigit()] == ["node1", "node2", "node1"]
    for bad in ("0", "-1", "x"):
        result = icetools("stats", "--gap", bad, str(RECORDINGS / "builds.icecap"))
        assert result.returncode != 0 and "Traceback" not in result.stderr and "--gap" in result.stderr


# -- live: the same builds on a real cluster, recorded by `icetools record` ---------------------


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Three daemons: node1 (namespace A) runs only local jobs, node2 and node3 one slot each."""
    realcluster.skip_or_fail_if_unsupported()
    with realcluster.Cluster(3, tmpdir=tmp_path_factory.mktemp("why"), max_jobs=1) as cluster:
        yield cluster


def _frames_of(path: Path, type_word: int) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with CaptureReader(path) as reader:
        return sum(1 for r in reader if isinstance(r, FrameRecord) and r.data[4:8] == type_word.to_bytes(4, "big"))


def _await(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_live_overlapping_builds_on_a_real_cluster(small_cluster: realcluster.Cluster, tmp_path: Path) -> None:
    cluster = small_cluster
    gap, pause = 2.0, 3.5
    warm_up(cluster, tmp_path, (1, 2))  # compiler environments packed before the recording
    capture = tmp_path / "live.icecap"
    recorder = cluster.popen_in_a(
        [sys.executable, "-m", "icetools", "record", "-s", f"{cluster.scheduler_host}:{cluster.scheduler_port}",
         "-o", str(capture)],
        cwd=str(ROOT), env={**cluster.client_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _await(lambda: _frames_of(capture, int(m.MonStats.TYPE)) >= 3, "the recorder's login")
        runs: list[BuildRun] = overlapping_builds(cluster, tmp_path / "b", files=4, weight=80, pause=pause)
        _await(lambda: _frames_of(capture, int(m.MonJobDone.TYPE)) >= 12 and _frames_of(capture, int(m.JobLocalDone.TYPE)) >= 3,
               "12 compiles and 3 links in the recording")
    finally:
        recorder.send_signal(signal.SIGTERM)
        _, err = recorder.communicate(timeout=30)
    assert recorder.returncode == 0, err
    # What the test ran: node1 and node2 at once, then node1 after a pause longer than the gap.
    assert [r.submitter for r in runs[:2]] in (["node1", "node2"], ["node2", "node1"]) and runs[2].submitter == "node1"
    assert runs[2].began - max(r.ended for r in runs[:2]) >= pause
    assert all(Path(s).with_suffix(".o").is_file() for r in runs for s in r.sources)  # objects built
    assert all(Path(r.link).is_file() for r in runs)
    stats, rows = _stats(capture, "--gap", str(gap)), _jobs(capture)
    check_against_jobs(stats, rows)
    check_builds(stats, rows, [(r.submitter, r.sources, r.link) for r in runs])
    assert {h["name"] for h in stats["utilisation"]["hosts"]} == {"node2", "node3"}
    # The live figures agree with what the library makes of the file.
    with CaptureReader(capture) as reader:
        assert analyse(reader, gap=gap)[0] == stats
