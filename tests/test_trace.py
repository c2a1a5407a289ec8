"""``icetools trace``: the output follows the Trace Event Format (JSON object form) and agrees with
``icetools jobs`` and ``dump --json`` of the same recording."""

from __future__ import annotations

import collections
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, CaptureWriter, ConnectRecord, FrameRecord, Record
from icetools.jobs import JobsPublisher, json_line
from icetools.monitor import Event, EventKind, Monitor, Publisher
from icetools.replay import replay
from icetools.feed import pipelined as _pipelined
from icetools.trace import TracePublisher, write_trace

from .formatter import children as _children
from .formatter import evil_capture as _evil_capture
from .formatter import processes_naming as _processes_naming
from .formatter import stop_and_check
from .golden import memory_growth
from .test_jobs import CAPTURES, RECORDINGS, assert_one_line_error, dumped, icetools, jobs_json

#: Keys every event of a phase must have (the format's required fields for what we write).
REQUIRED = {
    "X": {"ph", "name", "cat", "pid", "tid", "ts", "dur", "args"},
    "M": {"ph", "name", "pid", "tid", "args"},
    "C": {"ph", "name", "pid", "ts", "args"},
    "i": {"ph", "name", "pid", "ts", "s"},
}


def trace_of(path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / (path.stem + ".trace.json")
    result = icetools("trace", str(path), "-o", str(out))
    assert result.returncode == 0 and not result.stderr, result.stderr
    document = json.loads(out.read_text())
    assert set(document) == {"traceEvents", "displayTimeUnit"} and document["displayTimeUnit"] == "ms"
    return document["traceEvents"]


def check_format(events: list[dict[str, Any]]) -> None:
    """What a trace viewer needs: known phases with their keys, whole non-negative microseconds,
    named processes and threads, lanes whose slices never overlap, flows with both ends."""
    names: dict[int, str] = {}
    threads: set[tuple[int, int]] = set()
    for e in events:
        assert e["ph"] in REQUIRED, e
        assert REQUIRED[e["ph"]] <= set(e), e
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if "ts" in e:
            assert isinstance(e["ts"], int) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], int) and e["dur"] >= 0, e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index"), e
            if e["name"] == "process_name":
                assert e["pid"] not in names, f"process {e['pid']} named twice"
                names[e["pid"]] = e["args"]["name"]
            elif e["name"] == "thread_name":
                threads.add((e["pid"], e["tid"]))
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, int) and v >= 0 for v in e["args"].values()), e
    lanes: dict[tuple[int, int], list[tuple[int, int]]] = collections.defaultdict(list)
    flows: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        if e["ph"] in "XCi":
            assert e["pid"] in names, f"process {e['pid']} has no name"
        if e["ph"] == "X":
            assert (e["pid"], e["tid"]) in threads, f"thread {e['pid']}/{e['tid']} has no name"
            lanes[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
            if "bind_id" in e:
                flows[e["bind_id"]].append(e)
    for lane, spans in lanes.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"slices overlap on {lane}: one ends at {end}, the next starts at {start}"
    for bind_id, ends in flows.items():
        assert sorted(("flow_out" in e, "flow_in" in e) for e in ends) == [(False, True), (True, False)], ends
        out, into = sorted(ends, key=lambda e: "flow_in" in e)
        assert out["cat"] == "wait" and into["cat"] == "remote" and out["args"]["id"] == into["args"]["id"]
        assert names[out["pid"]] == into["args"]["submitter"] and names[into["pid"]] == into["args"]["server"]
        assert out["ts"] + out["dur"] <= into["ts"]  # from the end of the wait to the compile


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_trace_follows_the_format_and_agrees_with_jobs(path: Path, tmp_path: Path) -> None:
    events = trace_of(path, tmp_path)
    check_format(events)
    rows = jobs_json(path)
    end = round(dumped(path)[-1]["t"] * 1e6)  # the end record
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    jobs = [e for e in events if e["ph"] == "X" and e["cat"] in ("remote", "local")]
    # Every job once, with the times and args of its jobs row.
    assert sorted((e["args"]["id"], e["cat"]) for e in jobs) == sorted((r["id"], r["kind"]) for r in rows)
    by_id = {(e["args"]["id"], e["cat"]): e for e in jobs}
    for row in rows:
        e = by_id[row["id"], row["kind"]]
        assert {k: row[k] for k in e["args"]} == e["args"]
        if row["started"] is not None:
            assert names[e["pid"]] == row["server"]
            assert e["ts"] == round(row["started"] * 1e6)
            stop = end if row["ended"] is None else round(row["ended"] * 1e6)
            assert e["ts"] + e["dur"] == stop
        if row["kind"] == "remote" and row["started"] is not None and row["requested"] is not None:
            assert "bind_id" in e  # an arrow from its submitter's wait
            waits = [w for w in events if w.get("cat") == "wait" and w["args"]["id"] == row["id"]]
            assert len(waits) == 1 and names[waits[0]["pid"]] == row["submitter"]
            assert waits[0]["ts"] == round(row["requested"] * 1e6)
            assert waits[0]["dur"] == pytest.approx(row["wait_ms"] * 1000, abs=1)
            assert waits[0]["ts"] + waits[0]["dur"] == e["ts"]  # the arrow's two ends
    check_counters(events, end)


def check_counters(events: list[dict[str, Any]], end: int) -> None:
    """Each busy-slots / jobs-waiting value is the number of slices running at the end of its
    instant: started at or before it, ending after it."""
    jobs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X" and e["cat"] in ("remote", "local")]
    waits = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X" and (e["cat"] == "wait" or e["tid"] > 1000)]
    counters = [e for e in events if e["ph"] == "C" and e["pid"] == 1]
    assert {e["name"] for e in counters} == {"busy slots", "jobs waiting"}
    for e in counters:
        spans, (value,) = (jobs if e["name"] == "busy slots" else waits), e["args"].values()
        if e["ts"] < end:
            assert value == sum(1 for a, b in spans if a <= e["ts"] < b), e


def test_load_counters_follow_each_hosts_reports(tmp_path: Path) -> None:
    path = RECORDINGS / "demo.icecap"
    events = trace_of(path, tmp_path)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    loads: dict[str, list[int]] = collections.defaultdict(list)
    for e in events:
        if e["ph"] == "C" and e["name"] == "load":
            loads[names[e["pid"]]].append(e["args"]["load"])
    host_names: dict[int, str] = {}
    reported: dict[str, list[int]] = collections.defaultdict(list)
    for msg in dumped(path):
        if msg["type"] == "MON_STATS":
            stats = msg["stats"]
            if "Name" in stats:
                host_names[msg["host_id"]] = stats["Name"]
            if "Load" in stats:
                seq = reported[host_names[msg["host_id"]]]
                if not seq or seq[-1] != int(stats["Load"]):
                    seq.append(int(stats["Load"]))
    assert loads == reported
    assert len(loads) >= 5 and sum(map(len, loads.values())) > 50
    offline = [e for e in events if e["ph"] == "i"]
    assert [(names[e["pid"]], e["name"]) for e in offline] == [
        (host_names[msg["host_id"]], "offline") for msg in dumped(path)
        if msg["type"] == "MON_STATS" and msg["stats"].get("State") == "Offline"
    ]


def test_lanes_are_as_few_as_the_most_jobs_at_once(tmp_path: Path) -> None:
    events = trace_of(RECORDINGS / "demo.icecap", tmp_path)
    check_format(events)
    slots: dict[int, set[int]] = collections.defaultdict(set)
    for e in events:
        if e["ph"] == "X" and e["cat"] in ("remote", "local"):
            slots[e["pid"]].add(e["tid"])
    for pid, tids in slots.items():
        assert tids == set(range(1, len(tids) + 1))  # lowest free lane first: no gaps
        spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X" and e["pid"] == pid and e["tid"] in tids]
        most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
        assert len(tids) <= max(most, 1) + 1  # zero-length jobs at one instant may take one more


def _stream(frames: list[tuple[float, m.Message]], reconnect_at: float) -> list[Record]:
    records: list[Record] = [ConnectRecord(0.0, 43, 43, 44, "s:1", False)]
    for t, message in frames:
        if reconnect_at is not None and t >= reconnect_at:
            records.append(ConnectRecord(reconnect_at, 43, 43, 44, "s:1", True))
            reconnect_at = None  # type: ignore[assignment]
        records.append(FrameRecord(t, m.encode(message, 43), 43))
    return records

def traced(frames: list[tuple[float, m.Message]], *, reconnect_at: float) -> list[dict[str, Any]]:
    """The trace events of a scripted stream (checked against the format)."""
    events: list[dict[str, Any]] = []
    publisher = TracePublisher(lambda text: events.append(json.loads(text)))
    monitor = Monitor(publishers=[publisher])
    replay(monitor, _stream(frames, reconnect_at=reconnect_at))
    publisher.finish(monitor)
    check_format(events)
    return events



def test_a_reconnect_ends_the_jobs_in_flight() -> None:
    node = "Name:node{}\nIP:10.0.0.{}\nMaxJobs:4\n"
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, node.format(1, 1))),
        (0.0, m.MonStats(2, node.format(2, 2))),
        (1.0, m.MonGetCS(filename="old.c", job_id=1, client_id=1)),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (1.6, m.MonGetCS(filename="waits.c", job_id=2, client_id=1)),
        (3.0, m.MonStats(1, node.format(2, 2))),  # node2 is host 1 now
        (3.0, m.MonGetCS(filename="new.c", job_id=1, client_id=1)),
        (3.5, m.MonJobBegin(job_id=1, stime=0, host_id=1)),
        (4.0, m.MonJobDone(job_id=1, exitcode=0)),
    ]
    events = traced(frames, reconnect_at=2.0)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    jobs = {e["name"]: e for e in events if e["ph"] == "X" and e["cat"] == "remote"}
    assert (jobs["old.c"]["ts"], jobs["old.c"]["dur"], names[jobs["old.c"]["pid"]]) == (1_500_000, 500_000, "node2")
    assert jobs["old.c"]["args"]["outcome"] == "unfinished"
    assert (jobs["waits.c"]["ts"], jobs["waits.c"]["dur"], names[jobs["waits.c"]["pid"]]) == (1_600_000, 400_000, "node1")
    assert jobs["waits.c"]["tid"] > 1000  # never started: on its submitter's waiting lane
    # node2 is one process though its host id changed.
    assert names[jobs["new.c"]["pid"]] == "node2" and jobs["new.c"]["pid"] == jobs["old.c"]["pid"]
    assert (jobs["new.c"]["ts"], jobs["new.c"]["dur"], jobs["new.c"]["args"]["outcome"]) == (3_500_000, 500_000, "ok")


def test_memory_stays_bounded_on_a_long_stream() -> None:
    written = 0

    def sink(text: str) -> None:
        nonlocal written
        written += 1

    publisher = TracePublisher(sink)
    monitor = Monitor(max_finished=100, publishers=[publisher])
    monitor.connected(43, 0.0)
    early, late = memory_growth(monitor, 50)
    assert publisher.jobs == 50 * (442 + 34)
    assert late - early < 200_000, (early, late)


def test_stdout_and_file_are_the_same_trace(tmp_path: Path) -> None:
    path = RECORDINGS / "daemon-dies.icecap"
    to_stdout = icetools("trace", str(path), "-o", "-")
    assert to_stdout.returncode == 0, to_stdout.stderr
    buffer = io.StringIO()
    with CaptureReader(path) as reader:
        write_trace(reader, buffer)
    assert to_stdout.stdout == buffer.getvalue()
    assert json.loads(buffer.getvalue())["traceEvents"] == trace_of(path, tmp_path)


def test_bad_input(tmp_path: Path) -> None:
    demo = str(RECORDINGS / "demo.icecap")
    out = tmp_path / "t.json"
    assert_one_line_error(icetools("trace", str(tmp_path / "nope.icecap"), "-o", str(out)), "no such file")
    assert not out.exists()
    assert_one_line_error(icetools("trace", demo, "-o", str(tmp_path / "no" / "such" / "dir.json")), "cannot write")
    assert_one_line_error(icetools("trace", demo, "-o", str(tmp_path)), "is a directory")
    result = icetools("trace", demo)
    assert result.returncode == 2 and "Missing option '-o'" in result.stderr and "Traceback" not in result.stderr


def test_a_damaged_capture_leaves_the_previous_trace_alone(tmp_path: Path) -> None:
    path = tmp_path / "damaged.icecap"
    frames = [
        m.encode(m.MonStats(1, "Name:node1\n"), 43),
        m.encode(m.MonGetCS(filename="a.c", job_id=1, client_id=1), 43),
        m.encode(m.MonGetCS(filename="b.c", job_id=2, client_id=1), 43),
    ]
    with CaptureWriter(path) as writer:
        writer.connected(43, 43, 44, "x:1")
        writer.frames(frames)
    data = bytearray(path.read_bytes())
    data[data.index(frames[2]) - 13] = 0x22
    path.write_bytes(bytes(data))
    out = tmp_path / "t.json"
    out.write_text("previous")
    assert_one_line_error(icetools("trace", str(path), "-o", str(out)), "corrupt capture")
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".t.json")] == []


def test_a_device_is_written_into_not_replaced(tmp_path: Path) -> None:
    import stat

    result = icetools("trace", str(RECORDINGS / "build.icecap"), "-o", "/dev/null")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)
    assert not [p for p in Path("/dev").iterdir() if p.name.startswith(".null.")]


def test_a_job_begun_twice_moves_and_frees_its_first_slot() -> None:
    node = "Name:node{}\nIP:10.0.0.{}\nMaxJobs:4\n"
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, node.format(1, 1))),
        (0.0, m.MonStats(2, node.format(2, 2))),
        (0.0, m.MonStats(3, node.format(3, 3))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (2.0, m.MonJobBegin(job_id=1, stime=0, host_id=3)),  # the scheduler moved it
        (3.0, m.MonJobDone(job_id=1, exitcode=0)),
        (4.0, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
        (4.0, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
        (5.0, m.MonJobDone(job_id=2, exitcode=0)),
    ]
    events = traced(frames, reconnect_at=99.0)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    jobs = {e["name"]: e for e in events if e["ph"] == "X" and e["cat"] == "remote"}
    assert (names[jobs["a.c"]["pid"]], jobs["a.c"]["ts"], jobs["a.c"]["dur"]) == ("node3", 2_000_000, 1_000_000)
    assert (names[jobs["b.c"]["pid"]], jobs["b.c"]["tid"]) == ("node2", 1)  # node2's slot 1 is free again
    busy = [e["args"]["busy"] for e in events if e["name"] == "busy slots"]
    assert busy[-1] == 0 and max(busy) == 1


def test_a_job_the_monitor_dropped_and_met_again_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Monitor keeps at most MAX_ACTIVE_JOBS in flight; the oldest is dropped and, when its
    # end comes, is a new job that never started (its slice cannot start at the first start).
    monkeypatch.setattr("icetools.monitor.MAX_ACTIVE_JOBS", 2)
    node = "Name:node{}\nIP:10.0.0.{}\nMaxJobs:4\n"
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, node.format(1, 1))),
        (0.0, m.MonStats(2, node.format(2, 2))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (2.0, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
        (2.5, m.MonGetCS(filename="c.c", job_id=3, client_id=1)),  # job 1 is dropped here
        (3.0, m.MonJobDone(job_id=1, exitcode=0)),
    ]
    events = traced(frames, reconnect_at=99.0)
    (done,) = [e for e in events if e["ph"] == "X" and e["cat"] == "remote" and e["args"]["id"] == 1]
    assert (done["ts"], done["dur"], done["args"]["started"]) == (3_000_000, 0, None)


def _random_stream(rng: random.Random) -> list[tuple[float, m.Message | None]]:
    """Messages in any order a scheduler could send them, or not: hosts that are named, renamed,
    unnamed, go offline and log in again under a new id; jobs requested, begun (again), done,
    failed or lost with or without a start, local jobs and their re-runs; None: a reset."""
    hosts = rng.randint(1, 5)
    names = [f"n{i}" for i in range(hosts)] + [""]
    t = 0.0
    stream: list[tuple[float, m.Message | None]] = []
    for _ in range(rng.randint(5, 150)):
        t += rng.choice([0.0, 0.0, 0.001, 0.5, 0.123457])  # (the last: times no capture stores)
        host, job, r = rng.randint(1, hosts + 1), rng.randint(1, 12), rng.random()
        message: m.Message | None
        if r < 0.07:
            message = m.MonStats(host, "State:Offline\n")
        elif r < 0.15:
            name, load = rng.choice(names), rng.choice(["0", "500", "x"])
            message = m.MonStats(host, f"Name:{name}\nIP:10.0.0.{host}\nMaxJobs:4\nLoad:{load}\n" if name else f"Load:{load}\n")
        elif r < 0.35:
            message = m.MonGetCS(filename=rng.choice(["a.c", "src/b.cpp", "", "/"]), job_id=job, client_id=host, lang=rng.choice([0, 1, 7]))
        elif r < 0.55:
            message = m.MonJobBegin(job_id=job, stime=0, host_id=host)
        elif r < 0.75:
            message = m.MonJobDone(job_id=job, exitcode=rng.choice([0, 0, 1, 255]), real_msec=rng.choice([0, 5]), in_uncompressed=rng.choice([0, 10]))
        elif r < 0.85:
            message = m.MonLocalJobBegin(host_id=host, job_id=job, stime=0, file=rng.choice(["a.c", "b.c"]))
        elif r < 0.95:
            message = m.JobLocalDone(job_id=job)
        else:
            message = None
        stream.append((t, message))
    return stream


def play_random(monitor: Monitor, stream: list[tuple[float, m.Message | None]], after: Any = None) -> None:
    """Feed a _random_stream to a connected Monitor (None: a reset), calling ``after()`` after
    each message, and move its clock past the last one."""
    for t, message in stream:
        monitor.now = t
        if message is None:
            monitor.reset(t)
        else:
            monitor.feed(message, t)
        if after is not None:
            after()
    monitor.now += 1


_JOB_FIELDS = (
    "id", "file", "lang", "client_id", "server_id", "state", "local", "started", "ended", "seen_submit",
    "rerun_of", "exit_code", "real_msec", "user_msec", "sys_msec", "in_uncompressed", "out_uncompressed", "lost",
)


@pytest.mark.parametrize("max_active", [2, 100_000])
def test_the_builder_knows_what_the_monitor_knows(max_active: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trace is built from the feed's tuples alone, possibly in another process: after every
    # event the builder must know each host's name and whether it is online, and each job in
    # flight as the Monitor has it (whatever the stream; with max_active=2 the Monitor drops jobs).
    from icetools.feed import job_of as _job_of

    monkeypatch.setattr("icetools.monitor.MAX_ACTIVE_JOBS", max_active)
    checked = 0

    class Checker(Publisher):
        def publish(self, event: Event, monitor: Monitor) -> None:
            nonlocal checked
            builder = publisher.builder
            assert builder._names == {h.id: h.name for h in monitor.hosts.values() if h.name}
            for job in monitor.jobs.values():
                told = _job_of(builder._open[job.id].item)
                assert [getattr(told, f) for f in _JOB_FIELDS] == [getattr(job, f) for f in _JOB_FIELDS]
                checked += 1
            job = event.job
            if job is not None and event.kind is EventKind.JOB_FINISHED:
                # Its slice is written now, from what the builder was told.
                written = json.loads(texts[-1])
                assert written["ph"] == "X" and written["args"]["id"] == job.id and job.id not in builder._open
                args = written["args"]
                assert (args["file"], args["kind"], args["started"], args["ended"], args["exit_code"], args["rerun_of"]) == (
                    job.file, "local" if job.local else "remote", job.started, job.ended, job.exit_code, job.rerun_of,
                )

    rng = random.Random(11)
    for _ in range(300):
        texts: list[str] = []
        publisher = TracePublisher(texts.append)
        monitor = Monitor(publishers=[publisher, Checker()])
        monitor.connected(43, 0.0)

        def offline_as_the_monitor_has_it() -> None:
            # (the Monitor tells of a host going offline after it has ended the host's local jobs)
            assert publisher.builder.hosts.offline == {h.id for h in monitor.hosts.values() if not h.online}

        play_random(monitor, _random_stream(rng), offline_as_the_monitor_has_it)
        publisher.finish(monitor)
        assert all(json.loads(text)["ph"] in REQUIRED for text in texts) and publisher.builder._open == {}
    assert checked > 2000


def traced_with_rows(frames: list[tuple[float, m.Message]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The trace events of a scripted stream, and the jobs rows (as ``jobs --json`` writes
    them) of the same replay."""
    events: list[dict[str, Any]] = []
    rows: list[tuple[Any, ...]] = []
    publisher = TracePublisher(lambda text: events.append(json.loads(text)))
    jobs = JobsPublisher(rows.append)
    monitor = Monitor(publishers=[publisher, jobs])
    replay(monitor, _stream(frames, reconnect_at=99.0))
    publisher.finish(monitor)
    jobs.finish(monitor)
    check_format(events)
    return events, [json.loads(json_line(row)) for row in rows]


def _remote_job(t: float, job_id: int, file: str, *, exitcode: int = 0) -> list[tuple[float, m.Message]]:
    return [
        (t, m.MonGetCS(filename=file, job_id=job_id, client_id=1)),
        (t + 0.0009998, m.MonJobBegin(job_id=job_id, stime=0, host_id=2)),
        (t + 0.5000004, m.MonJobDone(job_id=job_id, exitcode=exitcode, real_msec=7, in_uncompressed=9)),
    ]


@pytest.mark.parametrize("exact", [True, False], ids=["whole microseconds", "finer times"])
def test_a_jobs_args_are_its_jobs_row_whatever_its_times(exact: bool) -> None:
    # From a capture every time is a whole number of microseconds, and the trace writes a
    # job's times and durations from those. A stream with finer times (a Monitor fed by other
    # means) must still get its jobs rows exactly: there a wait from 1.0000006 to 1.0010004
    # rounds to 1.0 ms, not to the 0.999 ms between their microseconds.
    node = "Name:node{}\nIP:10.0.0.{}\nMaxJobs:4\n"
    frames: list[tuple[float, m.Message]] = [(0.0, m.MonStats(1, node.format(1, 1))), (0.0, m.MonStats(2, node.format(2, 2)))]
    start = 1.0 if exact else 1.0000006
    frames += _remote_job(start, 1, "a.c") + _remote_job(start + 1, 2, "b.c", exitcode=1)
    frames += _remote_job(start + 2, 3, "a.c")
    if exact:
        frames = [(round(t, 6), msg) for t, msg in frames]
    events, rows = traced_with_rows(frames)
    args = {e["args"]["id"]: e["args"] for e in events if e["ph"] == "X" and e["cat"] == "remote"}
    assert args == {row["id"]: row for row in rows} and len(rows) == 3
    assert [row["outcome"] for row in rows] == ["ok", "failed", "ok"]
    assert [(row["requested"], row["wait_ms"]) for row in rows] == [(start + i, 1.0) for i in range(3)]


def test_names_in_a_remote_jobs_args_are_exact() -> None:
    # Hosts and files with terminal escapes, control characters and an undecodable byte (a lone
    # surrogate), each job twice: the second time its texts come from the trace's caches.
    evil = "evil\x1b]0;pwned\x07\"\\"
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, f"Name:{evil}1\nIP:10.0.0.1\nMaxJobs:4\n")),
        (0.0, m.MonStats(2, f"Name:{evil}\udcff2\nIP:10.0.0.2\nMaxJobs:4\n")),
    ]
    files = [f"src/{evil}\na\udcff.c", f"{evil}/\x01\t.c", "/"]
    for i, file in enumerate(files * 2):
        frames += _remote_job(float(i + 1), i + 1, file)
    events, rows = traced_with_rows([(round(t, 6), msg) for t, msg in frames])  # (as from a capture)
    jobs = [e for e in events if e["ph"] == "X" and e["cat"] == "remote"]
    waits = [e for e in events if e["ph"] == "X" and e["cat"] == "wait"]
    assert [e["args"]["file"] for e in jobs] == [e["args"]["file"] for e in waits] == files * 2
    assert [e["name"] for e in jobs] == [e["name"] for e in waits] == [f"{evil}\na\udcff.c", "\x01\t.c", "(no file)"] * 2
    assert {(e["args"]["submitter"], e["args"]["server"]) for e in jobs} == {(f"{evil}1", f"{evil}\udcff2")}
    assert {e["args"]["server"] for e in waits} == {f"{evil}\udcff2"}
    assert [e["args"] for e in jobs] == rows


# ---- the formatter process (the text made by a second process on big captures) ---------------


def _trace_bytes(path: Path, out: Path, *, pipeline: bool) -> bytes:
    with CaptureReader(path) as reader, open(out, "w", encoding="utf-8", errors="backslashreplace") as f:
        write_trace(reader, f, pipeline=pipeline)
    return out.read_bytes()


def test_the_formatter_process_writes_the_same_bytes(grown: Path, tmp_path: Path) -> None:
    captures = [*CAPTURES, _evil_capture(tmp_path / "evil.icecap"), grown]
    for path in captures:
        alone = _trace_bytes(path, tmp_path / "alone.json", pipeline=False)
        assert _trace_bytes(path, tmp_path / "piped.json", pipeline=True) == alone, path.name
    assert len(alone) > 50_000_000 and alone.count(b'"cat":"remote"') > 100_000
    # The command takes the formatter process for the big capture, to a file and to standard output.
    with CaptureReader(grown) as reader, open(tmp_path / "x", "w") as f:
        assert _pipelined(reader, f)
    result = icetools("trace", str(grown), "-o", str(tmp_path / "cli.json"))
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert (tmp_path / "cli.json").read_bytes() == alone
    to_stdout = subprocess.run([sys.executable, "-m", "icetools", "trace", str(grown), "-o", "-"], capture_output=True, timeout=120)
    assert to_stdout.returncode == 0 and to_stdout.stdout == alone and not to_stdout.stderr


def test_small_outputs_and_streams_without_a_descriptor_stay_in_one_process(grown: Path, tmp_path: Path) -> None:
    with CaptureReader(RECORDINGS / "demo.icecap") as reader, open(tmp_path / "x", "w") as f:
        assert not _pipelined(reader, f)
    with CaptureReader(grown) as reader:
        assert not _pipelined(reader, io.StringIO())


def _trace_until_half_way(capture: Path, out: Path) -> tuple[subprocess.Popen[str], int]:
    """``icetools trace capture -o out`` started (in its own session, as from a terminal), once
    its formatter process has written some of the trace: the command and the formatter's pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "icetools", "trace", str(capture), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        children = _children(process.pid)
        temps = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        if children and temps and temps[0].stat().st_size > 1_000_000:
            return process, children[0]
        time.sleep(0.005)
    process.kill()
    raise AssertionError(f"no formatter at work: {process.communicate()}")


def _assert_nothing_left(out: Path, formatter: int, marker: str) -> None:
    assert out.read_text() == "previous"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []
    assert not Path(f"/proc/{formatter}").exists()
    assert _processes_naming(marker) == []


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C", "formatter killed"])
def test_stopped_half_way_leaves_no_file_and_no_process(how: str, grown: Path, tmp_path: Path) -> None:
    capture = tmp_path / "stopped.icecap"
    capture.symlink_to(grown)
    out = tmp_path / "t.json"
    out.write_text("previous")
    process, formatter = _trace_until_half_way(capture, out)
    stop_and_check(process, formatter, how, "trace")
    _assert_nothing_left(out, formatter, str(capture))


def test_a_damaged_big_capture_stops_the_formatter(grown: Path, tmp_path: Path) -> None:
    data = bytearray(grown.read_bytes())
    middle = len(data) * 6 // 10
    data[middle : middle + 64] = b"\xff" * 64
    capture = tmp_path / "damaged-big.icecap"
    capture.write_bytes(bytes(data))
    out = tmp_path / "t.json"
    out.write_text("previous")
    with CaptureReader(capture) as reader, open(tmp_path / "x", "w") as f:
        assert _pipelined(reader, f)
    assert_one_line_error(icetools("trace", str(capture), "-o", str(out)), "corrupt capture")
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".t.json")] == []
    assert _processes_naming(str(capture)) == []


def test_a_full_disk_is_the_same_error_with_and_without_the_formatter(grown: Path) -> None:
    small = icetools("trace", str(RECORDINGS / "demo.icecap"), "-o", "/dev/full")
    big = icetools("trace", str(grown), "-o", "/dev/full")
    assert_one_line_error(small, "cannot write /dev/full: No space left on device")
    assert_one_line_error(big, "cannot write /dev/full: No space left on device")
    assert _processes_naming(str(grown)) == []


def test_a_failing_formatter_is_one_error(grown: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from icetools import trace
    from icetools.errors import IcetoolsError

    def broken(self: Any, texts: list[str]) -> None:
        raise RuntimeError("boom")

    def our_children() -> set[int]:
        # (of every thread of this process: other tests' fixtures may keep processes of their own)
        return {int(c) for p in Path("/proc").glob(f"{os.getpid()}/task/*/children") for c in p.read_text().split()}

    before = our_children()
    monkeypatch.setattr(trace._TraceText, "write", broken)  # (the forked formatter has it too)
    with CaptureReader(grown) as reader, open(tmp_path / "t.json", "w") as out:
        with pytest.raises(IcetoolsError, match=r"^the trace formatter failed: RuntimeError: boom$"):
            write_trace(reader, out, pipeline=True)
    assert _processes_naming(str(grown)) == [] and our_children() <= before  # the formatter is gone
