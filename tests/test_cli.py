"""`icetools record` and `icetools dump` as a user runs them: real processes, real TCP, real
signals, against a scheduler scripted inside the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, CaptureWriter, FrameRecord

from . import scripted
from .scripted import ScriptedScheduler, handshake, recv_exact, wait_closed

BUILD = [
    scripted.mon_stats(1, "Name:node1\nIP:10.77.1.2\nMaxJobs:2\nNoRemote:false\nPlatform:x86_64\nSpeed:0.000000\nLoad:1000\n"),
    scripted.mon_stats(2, "Name:node2\nIP:10.77.2.2\nMaxJobs:4\nNoRemote:false\nPlatform:x86_64\nSpeed:0.000000\nLoad:1000\n"),
    scripted.mon_get_cs(1, 1, "tmp/src/f1.c"),
    scripted.mon_job_begin(1, 1700000000, 2),
    scripted.mon_job_done(1, 0, real_msec=120),
    scripted.frame(0x56, bytes.fromhex("00000001 00000002 65000000") + scripted.string("a.out")),
    scripted.frame(0x4F, bytes.fromhex("00000002")),
    scripted.mon_stats(2, "State:Offline\n"),
]


def icetools(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icetools", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )


def start_icetools(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "icetools", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def serve(frames: list[bytes], version: int = 43, then: str = "hold") -> Callable[[socket.socket], None]:
    def script(sock: socket.socket) -> None:
        negotiated = handshake(sock, version)
        assert recv_exact(sock, 8) == m.encode(m.MonLogin(), negotiated)
        sock.sendall(b"".join(frames))
        if then == "hold":
            wait_closed(sock, 60)

    return script


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def frames_in(path: Path) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with CaptureReader(path) as reader:
        return sum(isinstance(r, FrameRecord) for r in reader)


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("icetools: error: "), lines
    assert text in lines[0], lines
    assert "Traceback" not in result.stderr


def test_record_then_dump_json(tmp_path: Path) -> None:
    out = tmp_path / "build.icecap"
    with ScriptedScheduler(serve(BUILD)) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--count", str(len(BUILD)))
    assert result.returncode == 0, result.stderr
    assert f"recorded {len(BUILD)} frames" in result.stderr
    dumped = icetools("dump", "--json", str(out))
    assert dumped.returncode == 0, dumped.stderr
    lines = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert [line["type"] for line in lines] == [
        "connect", "MON_STATS", "MON_STATS", "MON_GET_CS", "MON_JOB_BEGIN", "MON_JOB_DONE",
        "MON_LOCAL_JOB_BEGIN", "JOB_LOCAL_DONE", "MON_STATS", "end",
    ]
    assert lines[0]["protocol"] == 43 and lines[0]["offered"] == 44
    assert lines[1]["host_id"] == 1 and lines[1]["stats"]["Name"] == "node1"
    assert lines[3] == {"t": lines[3]["t"], "type": "MON_GET_CS", "filename": "tmp/src/f1.c", "lang": 0, "job_id": 1, "client_id": 1}
    assert {k: lines[4][k] for k in ("job_id", "stime", "host_id")} == {"job_id": 1, "stime": 1700000000, "host_id": 2}
    done = lines[5]
    assert set(done) == {
        "t", "type", "job_id", "exitcode", "real_msec", "user_msec", "sys_msec", "pfaults",
        "in_compressed", "in_uncompressed", "out_compressed", "out_uncompressed", "flags", "client_count",
    }
    assert done["real_msec"] == 120 and done["in_uncompressed"] == 200
    assert {k: lines[6][k] for k in ("host_id", "job_id", "stime", "file")} == {
        "host_id": 1, "job_id": 2, "stime": 0x65000000, "file": "a.out",
    }
    assert lines[7]["job_id"] == 2
    assert lines[8]["stats"] == {"State": "Offline"}
    assert all(isinstance(line["t"], float) for line in lines)
    assert lines[-1]["reason"] == "count"

    text = icetools("dump", str(out), "--type", "MON_JOB_DONE,MON_GET_CS")
    assert text.returncode == 0
    assert len(text.stdout.splitlines()) == 2
    assert "job 1  exit 0  real 120 ms" in text.stdout
    assert "tmp/src/f1.c" in text.stdout


def test_record_at_an_older_protocol_gets_the_older_layout(tmp_path: Path) -> None:
    old_done = scripted.mon_job_done(5, 1, client_count=None)  # no client_count below 39
    out = tmp_path / "old.icecap"
    with ScriptedScheduler(serve([old_done], version=43)) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--count", "1", "--protocol", "38")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in icetools("dump", "--json", str(out)).stdout.splitlines()]
    assert lines[0]["protocol"] == 38 and lines[0]["offered"] == 38
    assert lines[1]["type"] == "MON_JOB_DONE" and "client_count" not in lines[1] and lines[1]["exitcode"] == 1


def test_sigkill_keeps_every_complete_frame(tmp_path: Path) -> None:
    out = tmp_path / "killed.icecap"
    sent = threading.Event()
    half = scripted.mon_stats(9, "Name:half\n")

    def script(sock: socket.socket) -> None:
        handshake(sock)
        recv_exact(sock, 8)
        sock.sendall(b"".join(BUILD) + half[:10])  # the last frame stops half way
        sent.set()
        wait_closed(sock, 60)

    with ScriptedScheduler(script) as server:
        proc = start_icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out))
        try:
            wait_for(lambda: frames_in(out) == len(BUILD), what="all complete frames on disk")
        finally:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with CaptureReader(out) as reader:
        frames = [r.data for r in reader if isinstance(r, FrameRecord)]
    assert frames == BUILD
    assert not reader.ended  # no end record: it was killed
    dumped = icetools("dump", str(out))
    assert dumped.returncode == 0
    assert dumped.stdout.count("\n") == len(BUILD) + 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_with_everything_flushed(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "stopped.icecap"
    with ScriptedScheduler(serve(BUILD)) as server:
        proc = start_icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out))
        wait_for(lambda: frames_in(out) == len(BUILD), what="frames on disk")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    with CaptureReader(out) as reader:
        records = list(reader)
    assert reader.ended and records[-1].reason == "signal" and records[-1].frames == len(BUILD)


def test_duration_ends_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "timed.icecap"
    with ScriptedScheduler(serve(BUILD[:2])) as server:
        started = time.monotonic()
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--duration", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "stopped by duration" in result.stderr
    assert frames_in(out) == 2
    assert elapsed < 30  # it ended by itself rather than hanging


def test_no_reconnect_ends_with_exit_0_when_the_scheduler_closes(tmp_path: Path) -> None:
    out = tmp_path / "closed.icecap"
    with ScriptedScheduler(serve(BUILD, then="close")) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--no-reconnect")
    assert result.returncode == 0, result.stderr
    assert "stopped by closed" in result.stderr
    lines = [json.loads(x) for x in icetools("dump", "--json", str(out)).stdout.splitlines()]
    assert [x["type"] for x in lines][-2:] == ["disconnect", "end"]
    assert len([x for x in lines if x["type"].startswith(("MON_", "JOB_"))]) == len(BUILD)


def test_reconnects_after_a_scheduler_restart(tmp_path: Path) -> None:
    out = tmp_path / "restart.icecap"
    once = serve(BUILD[:2], then="close")
    served: list[bool] = []

    def going_down(sock: socket.socket) -> None:
        # The first connection gets two frames; later attempts find a scheduler shutting down.
        if not served:
            served.append(True)
            once(sock)

    first = ScriptedScheduler(going_down)
    port = first.port
    proc = start_icetools("record", "-s", f"127.0.0.1:{port}", "-o", str(out), "--count", "3")
    try:
        wait_for(lambda: frames_in(out) == 2, what="frames of the first connection")
        first.stop()
        # The "restarted" scheduler, on the same port, at another version.
        with ScriptedScheduler(serve(BUILD[2:3], version=42), port=port):
            _, stderr = proc.communicate(timeout=30)
    finally:
        first.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(x) for x in icetools("dump", "--json", str(out)).stdout.splitlines()]
    types = [x["type"] for x in lines]
    assert types == ["connect", "MON_STATS", "MON_STATS", "disconnect", "connect", "MON_GET_CS", "end"]
    assert lines[4]["reconnect"] is True and lines[4]["protocol"] == 42


# ---- bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(icetools("dump", str(tmp_path / "nope.icecap")), "no such file")


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just text\n")
    assert_one_line_error(icetools("dump", str(path)), "not an icetools capture")


def test_corrupt_capture_prints_what_it_could_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "c.icecap"
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1")
        w.frames(BUILD[:3])
    data = bytearray(path.read_bytes())
    at = data.index(BUILD[1]) - 13
    data[at] = 0x22
    path.write_bytes(bytes(data))
    result = icetools("dump", str(path))
    assert_one_line_error(result, "corrupt capture")
    assert len(result.stdout.splitlines()) == 2  # connect and the first frame came out


def test_torn_capture_warns_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "t.icecap"
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1")
        w.frames(BUILD)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    result = icetools("dump", str(path))
    assert result.returncode == 0
    assert "warning: " in result.stderr and "trailing bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_undecodable_frame_is_shown_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "u.icecap"
    bad = scripted.frame(0x54, b"\x00\x00")  # MON_JOB_BEGIN needs 12 bytes
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1")
        w.frames([BUILD[0], bad, BUILD[1]])
    result = icetools("dump", "--json", str(path))
    assert result.returncode == 0
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert lines[2]["type"] == "UNDECODABLE" and lines[2]["type_word"] == 0x54 and lines[2]["hex"] == bad.hex()
    assert lines[3]["type"] == "MON_STATS"
    assert "1 frames of 3 could not be decoded" in result.stderr


def test_unreachable_scheduler(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        result = icetools("record", "-s", f"127.0.0.1:{port}", "-o", str(tmp_path / "x.icecap"))
    assert_one_line_error(result, "connection refused")
    assert not (tmp_path / "x.icecap").exists()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (lambda sock: sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "not a plausible icecream version"),
        (lambda sock: sock.sendall(b"\x2b\x00"), "during the version handshake"),
        (lambda sock: sock.sendall(struct_le(20)) or wait_closed(sock, 5), "below icecream's minimum"),
        (lambda sock: wait_closed(sock, 20), "did not answer the icecream handshake"),
    ],
    ids=["http-server", "closes-mid-handshake", "too-old", "silent"],
)
def test_peers_that_are_not_schedulers(tmp_path: Path, script: Callable[[socket.socket], None], message: str) -> None:
    with ScriptedScheduler(script) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(tmp_path / "x.icecap"))
    assert_one_line_error(result, message)


def test_peer_closing_mid_frame_with_no_reconnect(tmp_path: Path) -> None:
    def script(sock: socket.socket) -> None:
        handshake(sock)
        recv_exact(sock, 8)
        sock.sendall(BUILD[0] + BUILD[1][:9])

    out = tmp_path / "mid.icecap"
    with ScriptedScheduler(script) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--no-reconnect")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in icetools("dump", "--json", str(out)).stdout.splitlines()]
    assert lines[2]["type"] == "disconnect" and "middle of a frame (9 bytes" in lines[2]["reason"]


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    result = icetools("record", "-s", "127.0.0.1:99999", "-o", str(tmp_path / "x.icecap"))
    assert_one_line_error(result, "out of range")
    result = icetools("dump", "x", "--type", "NOPE")
    assert result.returncode == 2 and "unknown type 'NOPE'" in result.stderr
    result = icetools("record", "--protocol", "20", "-s", "127.0.0.1")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_refuses_to_overwrite_a_recording(tmp_path: Path) -> None:
    out = tmp_path / "keep.icecap"
    out.write_bytes(b"old recording")
    with ScriptedScheduler(serve(BUILD)) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--count", "1")
    assert_one_line_error(result, "already exists")
    assert out.read_bytes() == b"old recording"


def test_version_and_help() -> None:
    from icetools import __version__

    assert icetools("--version").stdout.strip() == f"icetools, version {__version__}"
    for command in ("record", "dump"):
        result = icetools(command, "--help")
        assert result.returncode == 0 and "Examples:" in result.stdout


def test_environment_variable_names_the_scheduler(tmp_path: Path) -> None:
    out = tmp_path / "env.icecap"
    with ScriptedScheduler(serve(BUILD)) as server:
        env = {**os.environ, "ICECC_SCHEDULER": "", "USE_SCHEDULER": f"127.0.0.1:{server.port}"}
        result = icetools("record", "-o", str(out), "--count", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert frames_in(out) == 2


def struct_le(value: int) -> bytes:
    return value.to_bytes(4, "little")


# ---- replay and stats ------------------------------------------------------------------------

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def test_replay_without_a_file_plays_the_shipped_demo() -> None:
    result = icetools("replay", "--fast", "--json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    expected = json.loads((RECORDINGS / "demo.replay.json").read_text())
    assert state == expected
    assert result.stderr == ""  # no progress bar when not on a terminal


def test_replay_text_shows_hosts_and_totals() -> None:
    result = icetools("replay", "--fast", str(RECORDINGS / "daemon-dies.icecap"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cluster at ")
    node3 = next(line for line in lines if " node3 " in line)
    assert " offline " in node3
    assert "2 lost with their host" in result.stdout


def test_replay_until_in_recorded_time_with_speed(tmp_path: Path) -> None:
    # Recorded time scaled by --speed: the first 20 s of the demo at 200x take 0.1 s.
    result = icetools("replay", str(RECORDINGS / "demo.icecap"), "--speed", "200", "--until", "20", "--json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["t"] == 20.0
    assert 0 < state["totals"]["remote_done"] < 442


def test_stats_json_document() -> None:
    result = icetools("stats", "--json", str(RECORDINGS / "failures-local.icecap"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["jobs"]["remote"] == 7 and report["jobs"]["failed"] == 3 and report["jobs"]["local"] == 5
    assert all(isinstance(report["jobs"][k], int) for k in ("remote", "local", "failed"))
    by_name = {h["name"]: h for h in report["hosts"]}
    assert set(by_name) == {"node1", "node2", "node3"}
    assert by_name["node1"]["submitted"] == 7 and by_name["node1"]["local"] == 5
    assert by_name["node2"]["compiled"] + by_name["node3"]["compiled"] == 7
    assert all({"id", "name", "compiled", "submitted", "local", "failed"} <= set(h) for h in report["hosts"])
    text = icetools("stats", str(RECORDINGS / "failures-local.icecap"))
    assert "7 remote jobs (3 failed" in text.stdout and "slowest compiles:" in text.stdout


def test_replay_and_stats_report_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.icecap"
    junk.write_bytes(b"\x00" * 100)
    for command in ("replay", "stats"):
        assert_one_line_error(icetools(command, str(junk)), "not an icetools capture")


def test_dump_follow_prints_a_recording_as_it_is_written(tmp_path: Path) -> None:
    out = tmp_path / "live.icecap"
    gate = threading.Event()

    def script(sock: socket.socket) -> None:
        handshake(sock)
        recv_exact(sock, 8)
        sock.sendall(b"".join(BUILD[:3]))
        gate.wait(30)  # the rest only once dump is already following
        sock.sendall(b"".join(BUILD[3:]))
        wait_closed(sock, 30)

    with ScriptedScheduler(script) as server:
        recorder = start_icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--count", str(len(BUILD)))
        wait_for(lambda: frames_in(out) == 3, what="the first frames")
        follower = start_icetools("dump", "--follow", "--json", str(out))
        assert follower.stdout is not None
        first = [json.loads(follower.stdout.readline()) for _ in range(4)]
        assert [x["type"] for x in first] == ["connect", "MON_STATS", "MON_STATS", "MON_GET_CS"]
        gate.set()
        rest, err = follower.communicate(timeout=30)  # ends by itself at the end record
        recorder.wait(30)
    lines = first + [json.loads(x) for x in rest.splitlines()]
    assert len(lines) == len(BUILD) + 2 and lines[-1]["type"] == "end"
    assert follower.returncode == 0, err


def test_record_shows_a_status_line_on_a_terminal(tmp_path: Path) -> None:
    import pty

    out = tmp_path / "tty.icecap"
    with ScriptedScheduler(serve(BUILD)) as server:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "icetools", "record", "-s", f"127.0.0.1:{server.port}", "-o", str(out),
             "--duration", "1.5"],
            stdout=subprocess.DEVNULL, stderr=slave,
        )
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        os.close(master)
        assert proc.wait(30) == 0
    text = screen.decode()
    assert f"recording {out}: {len(BUILD)} frames" in text
    assert "protocol 43, connected" in text and "0:00:01" in text
    assert text.rstrip().endswith("stopped")


@pytest.mark.parametrize(
    "args",
    [["replay", "--fast", "--speed", "nan"], ["replay", "--serve", "--speed", "inf"],
     ["replay", "--until", "nan"], ["replay", "--as-scheduler", "--start", "inf"]],
    ids=["speed-nan", "serve-speed-inf", "until-nan", "start-inf"],
)  # fmt: skip
def test_times_and_speeds_are_finite(args: list[str]) -> None:
    """click's FloatRange lets nan and inf through; a NaN speed ended up in the page's JSON."""
    result = icetools(*args)
    assert result.returncode == 2, result.stderr
    assert "is not a finite number" in result.stderr and "Traceback" not in result.stderr


def test_web_options() -> None:
    result = icetools("replay", "--serve", "--allow-host", "a b", "--listen", "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["icetools: error: --allow-host 'a b': not a host name"]
    result = icetools("replay", "--fast", "--max-clients", "5")
    assert result.returncode == 2 and "go with --serve" in result.stderr
    result = icetools("serve", "--max-clients", "0", "-s", "127.0.0.1:1")
    assert result.returncode == 2 and "--max-clients" in result.stderr


@pytest.mark.parametrize("args", [("dump",), ("dump", "--json"), ("stats",), ("jobs", "--csv"), ("trace", "-o", "-")])
def test_a_full_standard_output_is_one_line_not_a_traceback(args: tuple[str, ...]) -> None:
    """`icetools jobs x > /dev/full`: the output it was handed cannot be written (a full disk
    under a redirect): one line, exit 1 (it was a traceback)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "icetools", *args, str(RECORDINGS / "demo.icecap")],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr == "icetools: error: cannot write the output: No space left on device\n"
