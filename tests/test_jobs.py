"""``icetools jobs``: rows checked against what ``dump --json`` of the same recording says, golden
CSVs, loading into DuckDB and pandas, the order of request while streaming, bad input."""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, CaptureWriter, ConnectRecord, FrameRecord, Record
from icetools.errors import IcetoolsError
from icetools.feed import pipelined
from icetools.jobs import COLUMNS, JobsPublisher, RowWriter, json_line, write_jobs
from icetools.monitor import Monitor
from icetools.replay import replay

from .formatter import children, evil_capture, processes_naming, stop_and_check
from .golden import golden_lines, jobs_csv, memory_growth

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
CAPTURES = sorted(RECORDINGS.glob("*.icecap"))


def icetools(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=60)


def jobs_json(path: Path, *args: str) -> list[dict[str, Any]]:
    result = icetools("jobs", "--json", str(path), *args)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def dumped(path: Path) -> list[dict[str, Any]]:
    """``icetools dump --json PATH``, as data."""
    with CaptureReader(path) as reader:
        return [json.loads(line) for line in golden_lines(reader)]


def expected_rows(path: Path) -> list[dict[str, Any]]:
    """The job rows worked out straight from the dumped messages (no Monitor), for recordings
    without reconnects: every column but rerun_of (the Monitor's matching rule)."""
    names: dict[int, str] = {}
    rows: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for msg in dumped(path):
        t, kind = msg["t"], msg["type"]
        if kind == "MON_STATS":
            if msg["stats"].get("State") == "Offline":
                for row in rows.values():  # local jobs end with their host (no JOB_LOCAL_DONE)
                    if row["kind"] == "local" and row["ended"] is None and row["_host"] == msg["host_id"]:
                        row["ended"], row["outcome"] = t, "lost"
            elif "Name" in msg["stats"]:
                names[msg["host_id"]] = msg["stats"]["Name"]
        elif kind == "MON_GET_CS":
            order.append(msg["job_id"])
            rows[msg["job_id"]] = {
                "id": msg["job_id"], "file": msg["filename"], "lang": m.LANG_NAMES[msg["lang"]],
                "submitter": names.get(msg["client_id"], f"#{msg['client_id']}"), "server": None,
                "kind": "remote", "outcome": "unfinished", "requested": t, "started": None,
                "ended": None, "real_msec": None, "user_msec": None, "sys_msec": None,
                "in_bytes": None, "out_bytes": None, "exit_code": None,
            }
        elif kind == "MON_JOB_BEGIN":
            row = rows[msg["job_id"]]
            row["started"], row["server"] = t, names.get(msg["host_id"], f"#{msg['host_id']}")
        elif kind == "MON_JOB_DONE":
            row = rows[msg["job_id"]]
            code = msg["exitcode"]
            lost = code == 255 and msg["real_msec"] == 0 and msg["in_uncompressed"] == 0
            row.update(
                ended=t, exit_code=code, real_msec=msg["real_msec"], user_msec=msg["user_msec"],
                sys_msec=msg["sys_msec"], in_bytes=msg["in_uncompressed"], out_bytes=msg["out_uncompressed"],
                outcome="ok" if code == 0 else "lost" if lost else "failed",
            )
        elif kind == "MON_LOCAL_JOB_BEGIN":
            order.append(msg["job_id"])
            host = names.get(msg["host_id"], f"#{msg['host_id']}")
            rows[msg["job_id"]] = {
                "id": msg["job_id"], "file": msg["file"], "lang": None, "submitter": host, "server": host,
                "kind": "local", "outcome": "unfinished", "requested": t, "started": t, "ended": None,
                "real_msec": None, "user_msec": None, "sys_msec": None, "in_bytes": None,
                "out_bytes": None, "exit_code": None, "_host": msg["host_id"],
            }
        elif kind == "JOB_LOCAL_DONE":
            rows[msg["job_id"]].update(ended=t, outcome="ok")
        elif kind == "connect":
            assert not msg["reconnect"], "this oracle knows no reconnects"
    for row in rows.values():
        row.pop("_host", None)
        if row["outcome"] == "unfinished":
            row["ended"] = None
    return [rows[job_id] for job_id in order]


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_rows_match_the_dumped_messages(path: Path) -> None:
    rows = jobs_json(path)
    messages = dumped(path)
    assert len(rows) == sum(msg["type"] in ("MON_GET_CS", "MON_LOCAL_JOB_BEGIN") for msg in messages)
    expected = expected_rows(path)
    for row, want in zip(rows, expected, strict=True):
        assert list(row) == list(COLUMNS)
        assert {k: row[k] for k in want} == want
        for ms, a, b in (("wait_ms", "requested", "started"), ("run_ms", "started", "ended")):
            if row[a] is None or row[b] is None:
                assert row[ms] is None
            else:
                assert row[ms] == pytest.approx((row[b] - row[a]) * 1000, abs=0.0015)


def test_failures_local_links_each_local_rerun_to_its_failed_compile() -> None:
    rows = {row["id"]: row for row in jobs_json(RECORDINGS / "failures-local.icecap")}
    assert [rows[i]["outcome"] for i in (17, 18, 19)] == ["failed"] * 3
    assert [rows[i]["exit_code"] for i in (17, 18, 19)] == [1, 1, 118]
    # bad_0.o re-runs bad_0.c (job 18), bad_1.o job 17, bad_2.o job 19; the link is not
    # made for the final link step (prog) or the nameless job.
    assert {i: rows[i]["rerun_of"] for i in range(20, 25)} == {20: 18, 21: 17, 22: 19, 23: None, 24: None}
    assert all(rows[i]["kind"] == "local" and rows[i]["server"] == "node1" for i in range(20, 25))


def test_daemon_dies_has_lost_and_unfinished_jobs() -> None:
    rows = jobs_json(RECORDINGS / "daemon-dies.icecap")
    assert [(r["id"], r["kind"], r["outcome"], r["server"]) for r in rows] == [
        (43, "remote", "lost", "node3"),
        (44, "remote", "lost", "node3"),
        (45, "local", "ok", "node1"),
        (46, "local", "unfinished", "node1"),
    ]
    assert rows[0]["exit_code"] == 255 and rows[0]["ended"] == 2.130599 and rows[0]["run_ms"] == 248.079
    assert rows[3]["ended"] is None and rows[3]["run_ms"] is None and rows[3]["started"] == 5.690557


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_jobs_csv_matches_its_golden(path: Path) -> None:
    golden = path.with_suffix(".jobs.csv")
    assert golden.exists(), f"{golden.name} is missing: run recordings/make_recordings.py --golden-only"
    expected = golden.read_text()
    actual = jobs_csv(path)
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), actual.splitlines(), "golden", "jobs", lineterm=""))
        pytest.fail(f"{path.name}: jobs --csv differs from {golden.name}:\n{diff[:4000]}")


def test_the_three_forms_carry_the_same_rows(tmp_path: Path) -> None:
    path = RECORDINGS / "demo.icecap"
    as_csv = icetools("jobs", "--csv", str(path))
    as_text = icetools("jobs", str(path))
    assert as_csv.returncode == as_text.returncode == 0
    rows = jobs_json(path)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(table) == len(rows) == 442 + 34
    assert [int(r["id"]) for r in table] == [r["id"] for r in rows]
    assert all((r["rerun_of"] or None) == (str(j["rerun_of"]) if j["rerun_of"] else None) for r, j in zip(table, rows))
    lines = as_text.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "kind", "outcome"]
    assert [int(line.split()[0]) for line in lines[1:]] == [r["id"] for r in rows]
    # The demo has 7 failed and 2 lost compiles re-run locally, as stats counts them.
    assert sum(r["rerun_of"] is not None for r in rows) == 9


def test_since_until_select_by_request_time() -> None:
    path = RECORDINGS / "demo.icecap"
    everything = jobs_json(path)
    window = jobs_json(path, "--since", "50", "--until", "60.5")
    assert window == [r for r in everything if 50 <= r["requested"] <= 60.5]
    assert 0 < len(window) < len(everything)
    assert jobs_json(path, "--since", "1000") == []
    assert jobs_json(path, "--until", "20") == [r for r in everything if r["requested"] <= 20]


def test_duckdb_and_pandas_load_the_output_as_it_is(tmp_path: Path) -> None:
    import duckdb  # both in the test extra: missing is a failure, not a skip
    import pandas
    path = RECORDINGS / "demo.icecap"
    csv_file, json_file = tmp_path / "jobs.csv", tmp_path / "jobs.json"
    csv_file.write_text(icetools("jobs", "--csv", str(path)).stdout)
    json_file.write_text(icetools("jobs", "--json", str(path)).stdout)
    rows = jobs_json(path)

    # The query shown in docs/analysis.md.
    query = """
        SELECT server, count(*) AS jobs, round(avg(wait_ms), 1) AS avg_wait_ms,
               count(*) FILTER (WHERE outcome <> 'ok') AS not_ok
        FROM read_csv('{file}') WHERE kind = 'remote' GROUP BY server ORDER BY jobs DESC, server
    """
    want: dict[str, list[Any]] = {}
    for r in rows:
        if r["kind"] == "remote":
            w = want.setdefault(r["server"], [0, [], 0])
            w[0] += 1
            w[1].append(r["wait_ms"])
            w[2] += r["outcome"] != "ok"
    expected = sorted(
        ((s, n, round(sum(ws) / len(ws), 1), bad) for s, (n, ws, bad) in want.items()), key=lambda x: (-x[1], x[0])
    )
    for file in (csv_file, json_file):
        reader = "read_csv" if file == csv_file else "read_json"
        got = duckdb.sql(query.format(file=file).replace("read_csv", reader)).fetchall()
        assert [(s, n, pytest.approx(w, abs=0.051), bad) for s, n, w, bad in got] == expected
        types = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM {reader}('{file}')").fetchall()}
        assert types["requested"] == "DOUBLE" and types["rerun_of"] == "BIGINT" and types["file"] == "VARCHAR"
    frame = pandas.read_csv(csv_file)
    lines = pandas.read_json(json_file, lines=True)
    assert list(frame.columns) == list(COLUMNS) == list(lines.columns)
    assert len(frame) == len(lines) == len(rows)
    assert frame["id"].tolist() == lines["id"].tolist()
    assert frame["requested"].tolist() == pytest.approx(lines["requested"].tolist())
    assert int(frame["rerun_of"].notna().sum()) == 9


# ---- streaming: order of request, bounded memory ----------------------------------------------


def _msg(message: m.Message) -> bytes:
    return m.encode(message, 43)


def _stream(frames: list[tuple[float, m.Message]], *, reconnect_at: float | None = None) -> list[Record]:
    records: list[Record] = [ConnectRecord(0.0, 43, 43, 44, "s:1", False)]
    for t, message in frames:
        if reconnect_at is not None and t >= reconnect_at:
            records.append(ConnectRecord(reconnect_at, 43, 43, 44, "s:1", True))
            reconnect_at = None
        records.append(FrameRecord(t, _msg(message), 43))
    return records


def _run(records: list[Record], **kwargs: Any) -> tuple[list[tuple[Any, ...]], JobsPublisher]:
    rows: list[tuple[Any, ...]] = []
    publisher = JobsPublisher(rows.append, **kwargs)
    monitor = Monitor(publishers=[publisher])
    replay(monitor, records)
    publisher.finish(monitor)
    return rows, publisher


def _col(rows: list[tuple[Any, ...]], name: str) -> list[Any]:
    return [row[COLUMNS.index(name)] for row in rows]


NODE = "Name:node{}\nIP:10.0.0.{}\nMaxJobs:4\n"


def test_rows_come_in_order_of_request_though_jobs_end_in_any_order() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, NODE.format(1, 1))),
        (0.0, m.MonStats(2, NODE.format(2, 2))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.1, m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
        (1.2, m.MonJobBegin(job_id=2, stime=0, host_id=2)),
        (1.3, m.MonJobDone(job_id=2, exitcode=0, real_msec=5)),  # ends first, written second
        (1.4, m.MonLocalJobBegin(host_id=1, job_id=3, stime=0, file="c.o")),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (2.0, m.MonJobDone(job_id=1, exitcode=1, real_msec=7)),
    ]
    written: list[int] = []
    rows, _ = _run(_stream(frames))
    assert _col(rows, "id") == [1, 2, 3]
    assert _col(rows, "outcome") == ["failed", "ok", "unfinished"]
    assert _col(rows, "wait_ms") == [500.0, 100.0, 0.0]
    # Job 2's row waited for job 1's (it was written when job 1 ended, not before).
    publisher = JobsPublisher(lambda row: written.append(row[0]))
    monitor = Monitor(publishers=[publisher])
    records = _stream(frames)
    replay(monitor, records[:7])
    assert written == []
    replay(monitor, records[7:])
    assert written == [1, 2]
    publisher.finish(monitor)
    assert written == [1, 2, 3]


def test_a_job_begun_again_elsewhere_names_its_last_host() -> None:
    # The scheduler moved it: its row (and its trace slice) name the host it compiled on last.
    from icetools.trace import TracePublisher

    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, NODE.format(1, 1))),
        (0.0, m.MonStats(2, NODE.format(2, 2))),
        (0.0, m.MonStats(3, NODE.format(3, 3))),
        (1.0, m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        (1.1, m.MonJobBegin(job_id=1, stime=0, host_id=2)),
        (1.5, m.MonJobBegin(job_id=1, stime=0, host_id=3)),
        (2.0, m.MonJobDone(job_id=1, exitcode=0, real_msec=5)),
    ]
    rows, _ = _run(_stream(frames))
    assert (_col(rows, "server"), _col(rows, "started")) == (["node3"], [1.5])
    texts: list[str] = []
    trace = TracePublisher(texts.append)
    monitor = Monitor(publishers=[trace])
    replay(monitor, _stream(frames))
    (args,) = [e["args"] for e in map(json.loads, texts) if e["ph"] == "X" and e["cat"] == "remote"]
    assert args == json.loads(json_line(rows[0]))


def test_a_job_that_never_ends_does_not_hold_back_the_rest() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, NODE.format(1, 1))),
        (0.5, m.MonGetCS(filename="stuck.c", job_id=1, client_id=1)),
    ]
    for job_id in range(2, 12):
        frames += [
            (job_id, m.MonGetCS(filename=f"f{job_id}.c", job_id=job_id, client_id=1)),
            (job_id, m.MonJobBegin(job_id=job_id, stime=0, host_id=1)),
            (job_id + 0.5, m.MonJobDone(job_id=job_id, exitcode=0)),
        ]
    written: list[int] = []
    publisher = JobsPublisher(lambda row: written.append(row[0]), reorder_limit=3)
    monitor = Monitor(publishers=[publisher])
    replay(monitor, _stream(frames))
    # Job 1 stepped out of the order once 3 jobs waited behind it; the others flow.
    assert written[:8] == list(range(2, 10))
    assert len(publisher.builder._queue) <= 3 and publisher.late_rows == 1
    publisher.finish(monitor)
    assert sorted(written) == list(range(1, 12)) and written.count(1) == 1
    assert publisher.rows == 11


def test_a_reconnect_ends_the_jobs_in_flight_as_unfinished() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, NODE.format(1, 1))),
        (1.0, m.MonGetCS(filename="old.c", job_id=1, client_id=1)),
        (1.0, m.MonJobBegin(job_id=1, stime=0, host_id=1)),
        (3.0, m.MonStats(1, NODE.format(7, 7))),  # the new scheduler numbers from 1 again
        (3.0, m.MonGetCS(filename="new.c", job_id=1, client_id=1)),
        (3.5, m.MonJobBegin(job_id=1, stime=0, host_id=1)),
        (4.0, m.MonJobDone(job_id=1, exitcode=0)),
    ]
    rows, _ = _run(_stream(frames, reconnect_at=2.0))
    assert _col(rows, "file") == ["old.c", "new.c"]
    assert _col(rows, "outcome") == ["unfinished", "ok"]
    assert _col(rows, "server") == ["node1", "node7"]
    assert _col(rows, "ended") == [None, 4.0]


def test_jobs_seen_only_partly_and_unnamed_hosts() -> None:
    frames: list[tuple[float, m.Message]] = [
        (1.0, m.MonJobBegin(job_id=8, stime=0, host_id=5)),  # requested before the recording
        (1.5, m.MonJobDone(job_id=9, exitcode=0, real_msec=3)),  # only its end was seen
        (2.0, m.MonJobDone(job_id=8, exitcode=0, real_msec=4)),
    ]
    rows, _ = _run(_stream(frames), since=1.2)
    # --since selects by first sight for jobs whose request was not seen: job 8 (1.0) is out.
    assert _col(rows, "id") == [9]
    rows, _ = _run(_stream(frames))
    assert _col(rows, "id") == [8, 9]
    assert _col(rows, "requested") == [None, None]
    assert _col(rows, "started") == [1.0, None]
    assert _col(rows, "server") == ["#5", None]
    assert _col(rows, "wait_ms") == [None, None] and _col(rows, "run_ms") == [1000.0, None]
    assert _col(rows, "outcome") == ["ok", "ok"]


def test_memory_stays_bounded_on_a_long_stream() -> None:
    count = 0

    def sink(row: tuple[Any, ...]) -> None:
        nonlocal count
        count += 1

    monitor = Monitor(max_finished=100, publishers=[JobsPublisher(sink)])
    monitor.connected(43, 0.0)
    early, late = memory_growth(monitor, 50)
    assert count == 50 * (442 + 34)
    assert late - early < 200_000, (early, late)


def test_text_escapes_control_characters_in_names() -> None:
    frames: list[tuple[float, m.Message]] = [
        (0.0, m.MonStats(1, "Name:evil\x1b[2Jhost\nIP:1.2.3.4\n")),
        (1.0, m.MonLocalJobBegin(host_id=1, job_id=1, stime=0, file="a\nb\x07.c")),
    ]
    rows, _ = _run(_stream(frames))
    out = io.StringIO()
    writer = RowWriter(out, "text")
    writer.write(rows[0])
    writer.flush()
    line = out.getvalue().splitlines()[1]
    assert "\x1b" not in line and "\x07" not in line and len(out.getvalue().splitlines()) == 2
    assert line.endswith("a\\nb\\x07.c") and "evil\\x1b[2Jho~" in line
    # CSV and JSON keep the names as they are (quoted and escaped by their own rules).
    out = io.StringIO()
    writer = RowWriter(out, "csv")
    writer.write(rows[0])
    writer.flush()
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["file"] == "a\nb\x07.c" and parsed[0]["submitter"] == "evil\x1b[2Jhost"


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icetools: error: ") and text in lines[0], result.stderr


def test_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(icetools("jobs", str(tmp_path / "nope.icecap")), "no such file")
    junk = tmp_path / "junk.icecap"
    junk.write_text("not a capture\n")
    assert_one_line_error(icetools("jobs", str(junk)), "not an icetools capture")
    demo = str(RECORDINGS / "demo.icecap")
    assert_one_line_error(icetools("jobs", demo, "--since", "50", "--until", "40"), "--since 50 is after --until 40")
    assert_one_line_error(icetools("jobs", demo, "--json", "--csv"), "choose one of --json and --csv")


def test_damaged_capture_keeps_the_rows_before_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "damaged.icecap"
    frames = [
        _msg(m.MonStats(1, NODE.format(1, 1))),
        _msg(m.MonGetCS(filename="a.c", job_id=1, client_id=1)),
        _msg(m.MonJobBegin(job_id=1, stime=0, host_id=1)),
        _msg(m.MonJobDone(job_id=1, exitcode=0)),
        _msg(m.MonGetCS(filename="b.c", job_id=2, client_id=1)),
    ]
    with CaptureWriter(path) as writer:
        writer.connected(43, 43, 44, "x:1")
        writer.frames(frames)
    data = bytearray(path.read_bytes())
    data[data.index(frames[4]) - 13] = 0x22  # the last frame's record kind
    path.write_bytes(bytes(data))
    result = icetools("jobs", "--csv", str(path))
    assert_one_line_error(result, "corrupt capture")
    assert [row["file"] for row in csv.DictReader(io.StringIO(result.stdout))] == ["a.c"]


def test_json_lines_are_what_json_dumps_would_write() -> None:
    from icetools.jobs import json_line

    rows = [tuple(r.values()) for r in jobs_json(RECORDINGS / "demo.icecap")]
    rows += [
        (1, 'quo"te\\and\x01ctl ü.c', "C++", "h\u2028ost", None, "remote", "unfinished", None, 1.5, None,
         None, None, None, None, None, None, None, None, None),
        (2, "", None, None, None, "local", "lost", 7, 0.000001, 1e-06, 12345.678901, 0.0, 0.001,
         None, None, None, None, None, None),
    ]
    # json_line remembers the texts of floats and strings: repeated values, 0.0 and -0.0 (equal
    # keys that print differently), ints equal to floats seen before.
    rows += [
        (3, "a.c", None, "n", "n", "remote", "ok", None, 2.5, 2.0, 0.0, -0.0, 0.0, 1, 2, 3, 4, 5, 0),
        (4, "a.c", None, "n", "n", "remote", "ok", None, 2.5, 2, 0, 0.0, -0.0, 1, 2, 3, 4, 5, 0),
        (5, "a.c", None, "n", "n", "remote", "ok", None, 2.0, 2.5, -0.0, 0.0, 0.0, 1, 2, 3, 4, 5, 0),
    ]
    for row in rows + rows:
        assert json_line(row) == json.dumps(dict(zip(COLUMNS, row)), ensure_ascii=False) + "\n"


# ---- the formatter process (icetools.feed): a big capture's rows are made in a second process


def _rows_bytes(path: Path, out: Path, form: str, *, pipeline: bool) -> bytes:
    with CaptureReader(path) as reader, open(out, "w", encoding="utf-8", errors="backslashreplace") as f:
        write_jobs(reader, f, form, pipeline=pipeline)
    return out.read_bytes()


def test_the_formatter_process_writes_the_same_rows(grown: Path, tmp_path: Path) -> None:
    for path in [*CAPTURES, evil_capture(tmp_path / "evil.icecap"), grown]:
        for form in ("json", "csv", "text"):
            alone = _rows_bytes(path, tmp_path / "alone", form, pipeline=False)
            assert _rows_bytes(path, tmp_path / "piped", form, pipeline=True) == alone, (path.name, form)
    # (the last: the grown capture's text table, a line per job and the header)
    assert alone.count(b"\n") > 100_000
    json_rows = _rows_bytes(grown, tmp_path / "alone", "json", pipeline=False)
    with CaptureReader(grown) as reader, open(tmp_path / "x", "w") as f:
        assert pipelined(reader, f)
    to_stdout = subprocess.run([sys.executable, "-m", "icetools", "jobs", "--json", str(grown)], capture_output=True, timeout=120)
    assert to_stdout.returncode == 0 and not to_stdout.stderr and to_stdout.stdout == json_rows


def _damaged(grown: Path, path: Path) -> Path:
    data = bytearray(grown.read_bytes())
    middle = len(data) * 6 // 10
    data[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_big_capture_keeps_the_rows_before_the_damage(grown: Path, tmp_path: Path) -> None:
    capture = _damaged(grown, tmp_path / "damaged-big.icecap")
    written = []
    for pipeline in (False, True):
        out = tmp_path / f"rows-{pipeline}.csv"
        with CaptureReader(capture) as reader, open(out, "w") as f:
            with pytest.raises(IcetoolsError, match="corrupt capture"):
                write_jobs(reader, f, "csv", pipeline=pipeline)
        written.append(out.read_bytes())
    assert written[0] == written[1]
    result = icetools("jobs", "--csv", str(capture))
    assert_one_line_error(result, "corrupt capture")
    assert result.stdout.encode() == written[0]
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    whole = _rows_bytes(grown, tmp_path / "whole.csv", "csv", pipeline=False).decode()
    assert 10_000 < len(rows) < whole.count("\n") * 0.7 and whole.startswith(result.stdout)
    assert processes_naming(str(capture)) == []


def test_a_full_disk_is_the_same_error_with_and_without_the_formatter(grown: Path) -> None:
    for capture in (RECORDINGS / "demo.icecap", grown):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "icetools", "jobs", "--json", str(capture)],
                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
            )
        assert (result.returncode, result.stderr) == (1, "icetools: error: cannot write the output: No space left on device\n")
    assert processes_naming(str(grown)) == []


def test_a_reader_that_goes_away_is_not_an_error(grown: Path) -> None:
    # `icetools jobs big.icecap --json | head`: both processes end, quietly.
    process = subprocess.Popen(
        [sys.executable, "-m", "icetools", "jobs", "--json", str(grown)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert json.loads(first)["id"] >= 1
    assert (process.returncode, stderr) == (0, b"")
    assert processes_naming(str(grown)) == []


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C", "formatter killed"])
def test_stopped_half_way_writes_whole_rows_and_leaves_no_process(how: str, grown: Path, tmp_path: Path) -> None:
    capture = tmp_path / "stopped.icecap"
    capture.symlink_to(grown)
    out = tmp_path / "rows.json"
    with open(out, "w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "icetools", "jobs", "--json", str(capture)],
            stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not (children(process.pid) and out.stat().st_size > 1_000_000):
        assert time.monotonic() < deadline and process.poll() is None, "no formatter at work"
        time.sleep(0.005)
    (formatter,) = children(process.pid)
    stop_and_check(process, formatter, how, "jobs")
    assert processes_naming(str(capture)) == []
    # What was written is the rows up to some job, whole (a killed formatter may leave its
    # last batch cut short: at most one line).
    text = out.read_text()
    whole = _rows_bytes(grown, tmp_path / "whole.json", "json", pipeline=False).decode()
    assert whole.startswith(text) and len(text) < len(whole)
    lines = text.split("\n")
    if how != "formatter killed":
        assert lines[-1] == ""
    assert all(json.loads(line) for line in lines[:-1])


@pytest.mark.parametrize("max_active", [2, 100_000])
def test_every_finished_job_has_its_row_as_the_monitor_ended_it(max_active: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rows are made from the feed's tuples alone (in another process for a big capture):
    # whatever the stream, each job the Monitor ends has one row with the job's fields as the
    # Monitor had them at its end (with max_active=2 the Monitor drops jobs and meets them again).
    from collections import Counter

    from icetools.jobs import job_row
    from icetools.monitor import Event, EventKind, Publisher

    from .test_trace import _random_stream, play_random

    monkeypatch.setattr("icetools.monitor.MAX_ACTIVE_JOBS", max_active)
    # (id, file, lang, kind, outcome, rerun_of, started, ended, run_ms, the host's figures)
    facts = (0, 1, 2, 5, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17, 18)

    class Ended(Publisher):
        def publish(self, event: Event, monitor: Monitor) -> None:
            if event.kind is EventKind.JOB_FINISHED:
                ended.append(job_row(event.job, None, None, None))  # type: ignore[arg-type]

    rng = random.Random(12)
    compared = 0
    for _ in range(300):
        rows: list[tuple[Any, ...]] = []
        ended: list[tuple[Any, ...]] = []
        publisher = JobsPublisher(rows.append)
        monitor = Monitor(publishers=[publisher, Ended()])
        monitor.connected(43, 0.0)
        play_random(monitor, _random_stream(rng))
        publisher.finish(monitor)
        finished = Counter(tuple(row[i] for i in facts) for row in rows if row[6] != "unfinished")
        assert finished == Counter(tuple(row[i] for i in facts) for row in ended)
        assert publisher.rows == len(rows) and all(row[0] is not None for row in rows)
        compared += len(ended)
    assert compared > 3000
