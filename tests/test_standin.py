"""replay --as-scheduler with icetools' own recorder as the monitor (real processes, loopback)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, FrameRecord
from icetools.index import state_at

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
JOB_TYPES = {0x53, 0x54, 0x55, 0x56, 0x4F}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    def __init__(self, capture: Path, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icetools", "replay", str(capture), "--as-scheduler",
             "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 20
        while True:  # listening once a connection is accepted
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, self.proc.communicate()[1]
                assert time.monotonic() < deadline, "stand-in did not start"
                time.sleep(0.05)

    def stop(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=20)[1]

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def record(port: int, out: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "icetools", "record", "-s", f"127.0.0.1:{port}", "-o", str(out), "--overwrite", *args],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def frames(path: Path) -> list[FrameRecord]:
    with CaptureReader(path) as reader:
        return [r for r in reader if isinstance(r, FrameRecord)]


@pytest.mark.parametrize("name", ["build.icecap", "daemon-dies.icecap", "failures-local.icecap"])
def test_record_replay_record_is_the_identity_on_frames(tmp_path: Path, name: str) -> None:
    original = frames(RECORDINGS / name)
    with StandIn(RECORDINGS / name, "--speed", "20") as standin:
        record(standin.port, tmp_path / "again.icecap", "--count", str(len(original)))
    again = frames(tmp_path / "again.icecap")
    assert [f.data for f in again] == [f.data for f in original]
    # Recorded pace, scaled by --speed: the last frame came about (t_last / 20) s after the first.
    expected = (original[-1].t - original[0].t) / 20
    assert abs((again[-1].t - again[0].t) - expected) < 0.5 + expected * 0.2


@pytest.mark.parametrize("version", [21, 28, 29, 38, 39])
def test_older_monitors_get_the_real_schedulers_layout(tmp_path: Path, version: int) -> None:
    """layouts-V.icecap: the same real build as seen by a monitor at V. The stand-in playing the
    protocol-43 recording to a monitor at V must send exactly what the real scheduler sent."""
    real = [f.data for f in frames(RECORDINGS / f"layouts-{version}.icecap") if f.data[7] in JOB_TYPES]
    source = frames(RECORDINGS / "layouts-43.icecap")
    with StandIn(RECORDINGS / "layouts-43.icecap", "--speed", "50") as standin:
        record(standin.port, tmp_path / "old.icecap", "--count", str(len(source)), "--protocol", str(version))
    with CaptureReader(tmp_path / "old.icecap") as reader:
        assert reader.header.protocol == version
    ours = [f.data for f in frames(tmp_path / "old.icecap") if f.data[7] in JOB_TYPES]
    assert ours == real


def test_start_sends_the_hosts_first_then_frames_from_t(tmp_path: Path) -> None:
    demo = frames(RECORDINGS / "demo.icecap")
    later = [f for f in demo if f.t > 100.0]
    # At 100 s node6 had died (and not yet come back): five hosts are online.
    online = {h.name: h for h in state_at(RECORDINGS / "demo.icecap", 100.0).hosts.values() if h.online}
    assert sorted(online) == ["node1", "node2", "node3", "node4", "node5"]
    with StandIn(RECORDINGS / "demo.icecap", "--start", "100", "--speed", "50") as standin:
        record(standin.port, tmp_path / "late.icecap", "--count", str(len(online) + len(later)))
    got = frames(tmp_path / "late.icecap")
    login = [m.decode(f.data, 43) for f in got[: len(online)]]
    assert all(isinstance(msg, m.MonStats) for msg in login)
    assert {msg.stats["Name"]: msg.statmsg for msg in login} == {n: h.statmsg for n, h in online.items()}
    assert [f.data for f in got[len(online) :]] == [f.data for f in later]


def test_loop_starts_over(tmp_path: Path) -> None:
    build = frames(RECORDINGS / "build.icecap")
    with StandIn(RECORDINGS / "build.icecap", "--loop", "--speed", "50") as standin:
        record(standin.port, tmp_path / "loop.icecap", "--count", str(2 * len(build) + 3))
    got = [f.data for f in frames(tmp_path / "loop.icecap")]
    original = [f.data for f in build]
    assert got == original + original + original[:3]


def test_end_of_recording_stays_open_and_quiet(tmp_path: Path) -> None:
    build = frames(RECORDINGS / "build.icecap")
    with StandIn(RECORDINGS / "build.icecap", "--speed", "100") as standin:
        record(standin.port, tmp_path / "idle.icecap", "--duration", "3", "--no-reconnect")
        stderr = standin.stop()
    with CaptureReader(tmp_path / "idle.icecap") as reader:
        records = list(reader)
    assert sum(isinstance(r, FrameRecord) for r in records) == len(build)
    assert records[-1].reason == "duration"  # not "closed": the connection stayed open
    assert "logged in (protocol 43)" in stderr


def test_a_monitor_that_stops_reading_is_dropped_without_stalling_others(tmp_path: Path) -> None:
    with StandIn(RECORDINGS / "demo.icecap", "--speed", "1000", "--loop") as standin:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stuck.connect(("127.0.0.1", standin.port))
        stuck.sendall(struct.pack("<I", 43))
        (offered,) = struct.unpack("<I", stuck.recv(4))
        stuck.sendall(struct.pack("<I", min(offered, 43)))
        stuck.recv(4)
        stuck.sendall(m.encode(m.MonLogin(), 43))  # ...and then never reads again
        record(standin.port, tmp_path / "ok.icecap", "--count", "5000")
        stderr = standin.stop()
        stuck.close()
    assert len(frames(tmp_path / "ok.icecap")) == 5000
    assert "monitor is blocking (not reading), dropped as the scheduler would" in stderr


def test_first_message_must_be_mon_login() -> None:
    with StandIn(RECORDINGS / "build.icecap") as standin:
        with socket.create_connection(("127.0.0.1", standin.port), timeout=10) as s:
            s.sendall(struct.pack("<I", 43))
            s.recv(4)
            s.sendall(struct.pack("<I", 43))
            s.recv(4)
            s.sendall(m.encode(m.Login(port=10245, max_kids=4, nodename="daemon"), 43))  # a daemon's LOGIN
            assert s.recv(100) == b""  # closed, no frames
        stderr = standin.stop()
    assert "first message was type 0x50, not MON_LOGIN" in stderr


def test_as_scheduler_errors_are_one_line(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "icetools", "replay", str(RECORDINGS / "build.icecap"), "--as-scheduler",
             "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1 and result.stderr.startswith("icetools: error: cannot listen")
    both = subprocess.run([sys.executable, "-m", "icetools", "replay", "--serve", "--as-scheduler"],
                          capture_output=True, text=True, timeout=30)
    assert both.returncode == 2 and "choose one of --serve and --as-scheduler" in both.stderr
