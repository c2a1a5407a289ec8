"""Rotating recordings against a real icecream cluster (issue 12, item 1).

A recording rotated every few KB while the cluster builds, next to an unrotated recording of the
same session: the frames of all parts are the unrotated recording's frames, byte for byte and in
order; every part but the last ends "rotated", the next begins with a rotated connect record and
carries exactly the state a Monitor fed with everything before it holds (online hosts' latest
reports, unfinished jobs), each carried frame is a frame really received earlier at its
``original`` time, and each part replays alone. Then a scheduler restarted across rotations:
nothing from before the restart is carried after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from icetools import messages as m
from icetools.capture import (
    CaptureHeader,
    CaptureReader,
    CarriedRecord,
    ConnectRecord,
    DisconnectRecord,
    EndRecord,
    FrameRecord,
    Record,
)
from icetools.monitor import Monitor
from icetools.replay import apply_record

from .realcluster import Cluster, make_cluster_fixture

rotation_cluster = make_cluster_fixture("rotation_cluster", scope="module", daemons=3)
ROOT = Path(__file__).resolve().parent.parent
JOB_DONE, STATS, LOCAL_DONE, JOB_BEGIN, GET_CS = 0x55, 0x57, 0x4F, 0x54, 0x53


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return result


Part = tuple[CaptureHeader, list[Record]]


def read_parts(where: Path) -> list[Part]:
    """The files of a recording (a file, or a directory of parts), in part order."""
    files = sorted(where.iterdir()) if where.is_dir() else [where] if where.exists() else []
    parts = []
    for path in files:
        if path.stat().st_size == 0:
            continue
        with CaptureReader(path) as reader:  # a torn tail (being written) is fine here
            parts.append((reader.header, list(reader)))
    return sorted(parts, key=lambda p: p[0].part or 0)


def frames(parts: list[Part], type_word: int | None = None) -> list[bytes]:
    out = [r.data for _, records in parts for r in records if type(r) is FrameRecord]
    if type_word is None:
        return out
    return [f for f in out if f[4:8] == type_word.to_bytes(4, "big")]


def record(cluster: Cluster, output: str, *extra: str) -> subprocess.Popen[str]:
    return cluster.popen_in_a(
        [sys.executable, "-m", "icetools", "record", "-s", f"{cluster.scheduler_host}:{cluster.scheduler_port}",
         "-o", output, *extra],
        cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def logged_in(proc: subprocess.Popen[str], where: Path, hosts: int = 3) -> None:
    wait_for(lambda: len(frames(read_parts(where), STATS)) >= hosts or proc.poll() is not None, "the recorder's login")
    assert proc.poll() is None, proc.communicate()


State = tuple[dict[int, tuple[str, bool]], dict[int, tuple[str, str, int | None]]]


def state_of(monitor: Monitor) -> State:
    """Online hosts (latest report) and unfinished jobs (state, file, compiling host), as values."""
    hosts = {h.id: (h.statmsg, h.online) for h in monitor.hosts.values() if h.online}
    jobs = {j.id: (j.state.value, j.file, j.server_id) for j in monitor.jobs.values()}
    return hosts, jobs


def carried_count(monitor: Monitor) -> int:
    """How many frames give ``monitor``'s state: a report per online host; per unfinished remote
    job its request (if seen) and its begin (if begun); per running local job its begin."""
    n = sum(1 for h in monitor.hosts.values() if h.online)
    for job in monitor.jobs.values():
        n += 1 if job.local else int(job.seen_submit) + int(job.started is not None)
    return n


def states_at_part_starts(parts: list[Part]) -> list[tuple[int, State, State, int, int]]:
    """For each later part whose connection goes on (rotated): (its number, the state a Monitor
    fed with every record of the parts before it holds (the truth), the state a Monitor fed with
    the part's own records up to its first frame holds (where a reader of that file alone
    starts), how many frames that truth takes, how many the part carries)."""
    truth = Monitor()
    out = []
    for k, (_, records) in enumerate(parts):
        first = records[0]
        if k and type(first) is ConnectRecord and first.rotated:
            alone = Monitor()
            for rec in records:
                if type(rec) is FrameRecord:
                    break
                apply_record(alone, rec)
            carried = sum(1 for r in records if type(r) is CarriedRecord)
            out.append((k, state_of(truth), state_of(alone), carried_count(truth), carried))
        for rec in records:
            # A rotated connect and the carried frames are not news: the connection and the
            # frames are the previous part's. A part begun with a new handshake is a reconnect.
            if type(rec) is CarriedRecord or type(rec) is EndRecord:
                continue
            if type(rec) is ConnectRecord and rec.rotated:
                continue
            apply_record(truth, rec)
    return out


def restart_point(parts: list[Part]) -> tuple[int, int] | None:
    """(part, record index) of the connect record of the first reconnection: a connect record
    with ``reconnect``, or the first record of a part begun with a new handshake (a rotation
    that fell due while the scheduler was away)."""
    for k, (_, records) in enumerate(parts):
        for i, r in enumerate(records):
            if type(r) is ConnectRecord and (r.reconnect or (k and i == 0 and not r.rotated)):
                return k, i
    return None


def check_series(parts: list[Part], last_reason: str) -> None:
    """Parts 0..n of one series, each ending where the next begins."""
    assert [h.part for h, _ in parts] == list(range(len(parts)))
    assert len({h.series for h, _ in parts}) == 1
    for (h0, r0), (h1, r1) in zip(parts, parts[1:]):
        end = r0[-1]
        assert type(end) is EndRecord and end.reason == "rotated", end
        # the next part starts where the previous one ended: the previous start + the time elapsed
        assert abs(h1.start - (h0.start + end.t)) < 1e-5, (h0.start, end.t, h1.start)
        first = r1[0]
        assert type(first) is ConnectRecord and not first.reconnect
    last = parts[-1][1][-1]
    assert type(last) is EndRecord and last.reason == last_reason, last
    assert [type(r) for _, records in parts for r in records].count(EndRecord) == len(parts)


def check_carried(parts: list[Part]) -> int:
    """Every part's carried frames are the state before it, and were really received then.
    Returns how many parts carried something."""
    carrying = 0
    received: dict[bytes, list[float]] = {}
    for k, (header, records) in enumerate(parts):
        if k:
            first = records[0]
            assert type(first) is ConnectRecord
            carried = [r for r in records if type(r) is CarriedRecord]
            if not first.rotated:
                assert carried == [], "a part that begins with a new handshake carries nothing"
            for r in carried:
                # a frame received earlier, at its original time (µs rounding on both sides)
                when = header.start + r.original
                assert any(abs(when - t) < 3e-6 for t in received.get(r.data, [])), (k, r)
            originals = [r.original for r in carried]
            assert originals == sorted(originals) and all(o <= 0 for o in originals)
            carrying += bool(carried)
        for r in records:
            if type(r) is FrameRecord:
                received.setdefault(r.data, []).append(header.start + r.t)
    for k, truth, alone, expected, carried in states_at_part_starts(parts):
        # the file read alone starts from the state the whole recording had there, and carries
        # exactly the frames that give it
        assert alone == truth, k
        assert carried == expected, k
    return carrying


def test_a_rotated_recording_equals_an_unrotated_one_of_the_same_session(rotation_cluster: Cluster, tmp_path: Path) -> None:
    cluster = rotation_cluster
    plain, rotated = tmp_path / "plain.icecap", tmp_path / "rotated"
    one = record(cluster, str(plain), "--no-reconnect")
    logged_in(one, plain)
    # (1KB, the least: a part rotates when a batch of frames takes it past the size, and how the
    # scheduler batches its frames varies with the machine's load; with 2KB a quick build once
    # made only three parts)
    series = record(cluster, f"{rotated}/", "--rotate", "1KB", "--no-reconnect")
    logged_in(series, rotated)
    try:
        results = cluster.compile_files(16, tmp_path / "src", jobs=6, tag="rot", with_main=True)
        assert all(r.ok for r in results), [r.stderr for r in results]
        link = cluster.link([r.output for r in results], tmp_path / "prog")
        assert link.ok, link.stderr
        for where in (plain, rotated):
            wait_for(lambda: len(frames(read_parts(where), JOB_DONE)) >= 16 and len(frames(read_parts(where), LOCAL_DONE)) >= 1,
                     "the build in both recordings")
    finally:
        # Both recordings end together, when the scheduler goes away: neither gets a frame the
        # other does not.
        cluster.restart_scheduler()
        out_one, err_one = one.communicate(timeout=30)
        out_series, err_series = series.communicate(timeout=30)
    assert one.returncode == 0 and series.returncode == 0, (err_one, err_series)
    assert "stopped by closed" in err_series and "files (the last" in err_series

    whole = frames(read_parts(plain))
    parts = read_parts(rotated)
    assert len(parts) >= 4, [len(records) for _, records in parts]
    check_series(parts, "closed")
    got = frames(parts)
    # The rotated recorder logged in second: its first frames are the scheduler's login reports
    # (one MON_STATS per host); from then on both recorders were sent the same frames.
    login = 3
    assert {f[4:8] for f in got[:login]} == {STATS.to_bytes(4, "big")}
    assert len({f[8:12] for f in got[:login]}) == login
    assert got[login:] == whole[len(whole) - (len(got) - login):]
    assert len(frames(parts, JOB_DONE)) == 16 and len(frames(parts, GET_CS)) == 16
    assert check_carried(parts) == len(parts) - 1  # every later part carries the hosts at least
    # Each part replays alone, from the hosts it carries.
    for path in rotated.iterdir():
        result = subprocess.run([sys.executable, "-m", "icetools", "replay", "--fast", "--json", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        state = json.loads(result.stdout)
        assert {h["name"] for h in state["hosts"]} == {"node1", "node2", "node3"}, (path, state["hosts"])
    # All the parts together read as one recording: the session's jobs as the unrotated
    # recording has them (times aside: the two recorders stamp frames a little apart), and the
    # cluster at the end the same.
    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def jobs_of(where: Path) -> list[tuple[Any, ...]]:
        rows = [json.loads(line) for line in run("jobs", "--json", str(where)).splitlines()]
        return [(r["id"], r["file"], r["kind"], r["outcome"], r["submitter"], r["server"], r["exit_code"]) for r in rows]

    assert jobs_of(rotated) == jobs_of(plain) and len(jobs_of(plain)) == 17
    together, alone = json.loads(run("stats", "--json", str(rotated))), json.loads(run("stats", "--json", str(plain)))
    assert together["jobs"] == alone["jobs"] and together["gaps"] == []
    end_state = [json.loads(run("replay", "--fast", "--json", str(where))) for where in (rotated, plain)]
    assert [sorted((h["name"], h["online"]) for h in state["hosts"]) for state in end_state] == [
        sorted((h["name"], h["online"]) for h in end_state[1]["hosts"])] * 2
    assert end_state[0]["totals"]["remote_done"] == end_state[1]["totals"]["remote_done"] == 16
    # dump marks the carried frames.
    last = max(rotated.iterdir(), key=lambda p: read_parts(p)[0][0].part or 0)
    dump = subprocess.run([sys.executable, "-m", "icetools", "dump", "--json", str(last)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [json.loads(line) for line in dump.stdout.splitlines()]
    assert lines[0]["type"] == "connect" and lines[0]["rotated"] is True
    assert sum(1 for x in lines if x.get("carried")) == len([r for r in parts[-1][1] if type(r) is CarriedRecord]) >= 3


def test_a_scheduler_restarted_across_rotations_leaves_nothing_stale(rotation_cluster: Cluster, tmp_path: Path) -> None:
    cluster = rotation_cluster
    rotated = tmp_path / "restart"
    rec = record(cluster, f"{rotated}/", "--rotate", "2KB")
    logged_in(rec, rotated)
    slow: list[Any] = []
    try:
        quick = cluster.compile_files(4, tmp_path / "before", tag="before")
        assert all(r.ok for r in quick)
        # A compile still running when the scheduler goes: its end is never reported.
        begun = len(frames(read_parts(rotated), JOB_BEGIN))
        worker = threading.Thread(
            target=lambda: slow.extend(cluster.compile_files(1, tmp_path / "slow", tag="slow", work=2000, timeout=180))
        )
        worker.start()
        wait_for(lambda: len(frames(read_parts(rotated), JOB_BEGIN)) > begun, "the slow compile to begin")
        # The scheduler dies (SIGKILL, as in a crash or a power cut: on SIGTERM it would first
        # end its jobs and hosts for its monitors), then a new one starts on the same port.
        scheduler = cluster._scheduler
        assert scheduler is not None
        os.kill(scheduler.pid, signal.SIGKILL)
        cluster.restart_scheduler()
        wait_for(lambda: restart_point(read_parts(rotated)) is not None, "the recorder to reconnect")
        after = cluster.compile_files(12, tmp_path / "after", jobs=4, tag="after")
        assert all(r.ok for r in after), [r.stderr for r in after]
        wait_for(lambda: len(frames(read_parts(rotated), JOB_DONE)) >= 16, "the jobs after the restart")
        worker.join(180)
    finally:
        rec.send_signal(signal.SIGTERM)
        _, err = rec.communicate(timeout=30)
    assert rec.returncode == 0, err
    parts = read_parts(rotated)
    check_series(parts, "signal")
    # Where the scheduler went away and came back (in the middle of a part, or at the start of
    # one if a rotation fell due meanwhile).
    point = restart_point(parts)
    assert point is not None
    k, i = point
    records = parts[k][1]
    before = records[i - 1] if i else parts[k - 1][1][-2]  # (the previous part's end record is last)
    assert type(before) is DisconnectRecord
    restart = parts[k][0].start + records[i].t
    # Before the restart a job was running (the slow one): state that must not be carried on.
    truth = Monitor()
    for _, earlier in parts[:k]:
        for r in earlier:
            if type(r) is FrameRecord or (type(r) is ConnectRecord and not r.rotated):
                apply_record(truth, r)
    for r in records[:i]:
        if type(r) is FrameRecord:
            apply_record(truth, r)
    assert any(not j.local and j.started is not None for j in truth.jobs.values()), "no job was running at the restart"
    # After it, every carried frame was received after the reconnection, and each part's
    # carried state is what the new scheduler gave.
    later = parts[k + 1 :]
    assert len(later) >= 2
    assert later and any(any(type(r) is CarriedRecord for r in recs) for _, recs in later)
    for header, recs in later:
        for r in recs:
            if type(r) is CarriedRecord:
                assert header.start + r.original >= restart - 1e-6, (header.part, r)
    assert check_carried(parts) >= len(later)
