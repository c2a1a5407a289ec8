"""`record` and `serve` against schedulers that misbehave on purpose (tests/scripted.py's
hostile peers), and the connection classes under the same resets: real processes, real TCP,
real signals. Whatever the peer does: no traceback, no hot loop, every complete frame kept, and
SIGTERM ends the process promptly with the end record written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, DisconnectRecord, EndRecord, FrameRecord
from icetools.connection import AsyncConnection, Connection
from icetools.errors import ConnectionClosed

from . import scripted
from .netns import require
from .scripted import ScriptedScheduler
from .test_browser import Tab, browser, tab  # noqa: F401 - pytest fixtures for the page
from .test_cli import BUILD, assert_one_line_error, frames_in, icetools, serve, start_icetools, wait_for

T = TypeVar("T")

#: A scheduler that was fine for the first connection (two frames, then it "restarted")...
GOOD_ONCE = serve(BUILD[:2], then="close")
#: ...and is hostile from then on.
HOSTILE = {
    "reset-after-handshake": scripted.reset_after_handshake,
    "close-after-login": scripted.close_after_login,
    "huge-length": scripted.frames_then_huge_length(BUILD[2:3]),
}

#: Seconds over which reconnections are counted. With the backoff (0.5, 1, 2, 4 s ...) a
#: recorder tries at most 3 times in it; without one it tried thousands of times.
WINDOW = 2.0
MAX_IN_WINDOW = 3


def records_of(path: Path) -> tuple[list[Any], CaptureReader]:
    with CaptureReader(path) as reader:
        return list(reader), reader


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> tuple[str, float]:
    """Signal ``proc`` and wait for it (generously); return its stderr and how long it took."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"{sig.name} did not end the process within 10 s: {stderr[-2000:]}") from None
    return stderr, time.monotonic() - started


def assert_reconnects_are_bounded(server: ScriptedScheduler) -> None:
    wait_for(lambda: server.connections >= 3, what="the hostile reconnections")
    start = time.monotonic()
    time.sleep(WINDOW)  # a window of time to count in, not a condition to wait for
    seen = server.connections_since(start)
    assert seen <= MAX_IN_WINDOW, f"{seen} connections in {WINDOW} s: no backoff"


# ---- record --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostile", "sig"),
    [(kind, signal.SIGTERM) for kind in HOSTILE] + [("close-after-login", signal.SIGINT)],
    ids=[*HOSTILE, "close-after-login-ctrl-c"],
)
def test_record_backs_off_from_a_hostile_scheduler_and_stops_on_a_signal(
    tmp_path: Path, hostile: str, sig: signal.Signals
) -> None:
    out = tmp_path / "hostile.icecap"
    with ScriptedScheduler(scripted.first_then(GOOD_ONCE, HOSTILE[hostile])) as server:
        proc = start_icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out))
        try:
            assert_reconnects_are_bounded(server)
        finally:
            stderr, took = stop(proc, sig)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert took < 5, f"{sig.name} took {took:.1f} s"
    # The repeated failure is told (one line per attempt, not silence)...
    retries = [line for line in stderr.splitlines() if "retrying in" in line]
    assert len(retries) >= 2 and "failures in a row" in retries[-1], stderr
    assert retries[0].startswith("icetools: ")
    # ...and the recording has everything, ends with its end record, and holds no flood of
    # connect/disconnect records.
    records, reader = records_of(out)
    assert reader.ended and isinstance(records[-1], EndRecord) and records[-1].reason == "signal"
    frames = [r.data for r in records if isinstance(r, FrameRecord)]
    assert frames[:2] == BUILD[:2]
    if hostile == "huge-length":
        assert set(frames[2:]) == {BUILD[2]}  # the whole frame before the bad length, each time
    assert sum(isinstance(r, DisconnectRecord) for r in records) <= server.connections
    assert out.stat().st_size < 20_000


def test_reset_after_the_handshake_on_the_first_connection(tmp_path: Path) -> None:
    """Where the reset lands is up to the kernels: in the login (then the first connection
    failed: an error, no file) or in the first read (a recording of one connection). Both are
    clean; neither is a traceback or an empty file."""
    out = tmp_path / "reset.icecap"
    for _ in range(5):
        with ScriptedScheduler(scripted.reset_after_handshake) as server:
            result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--no-reconnect")
        assert "Traceback" not in result.stderr
        if result.returncode == 1:
            assert_one_line_error(result, "connection reset by peer")
            assert not out.exists()
        else:
            assert result.returncode == 0, result.stderr
            records, reader = records_of(out)
            assert [type(r).__name__ for r in records] == ["ConnectRecord", "DisconnectRecord", "EndRecord"]
            out.unlink()


def test_frames_before_a_bad_length_in_the_same_read_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "huge.icecap"
    with ScriptedScheduler(scripted.frames_then_huge_length(BUILD[:2])) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--no-reconnect")
    assert result.returncode == 0, result.stderr
    assert "recorded 2 frames" in result.stderr
    records, _ = records_of(out)
    assert [r.data for r in records if isinstance(r, FrameRecord)] == BUILD[:2]
    disconnect = next(r for r in records if isinstance(r, DisconnectRecord))
    assert "declares 2147483648 bytes" in disconnect.reason


# ---- serve ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(*args: str) -> tuple[subprocess.Popen[str], int]:
    """``icetools serve`` on a free port; returns the process and the port it announced."""
    proc = start_icetools("serve", "--listen", f"127.0.0.1:{free_port()}", *args)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if found is None:
        proc.kill()
        raise AssertionError(f"serve did not announce its port: {line}{proc.communicate()[1]}")
    return proc, int(found.group(1))


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, path: str) -> str:
    with _NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float | None:
    # (one scheduler: its label is its address, whatever it is)
    found = re.search(rf'^{name}{{scheduler="[^"]*"}} (\S+)$', text, re.MULTILINE)
    return None if found is None else float(found.group(1))


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_serve_backs_off_shows_the_failures_and_stops_on_sigterm(tmp_path: Path, hostile: str) -> None:
    out = tmp_path / "served.icecap"
    with ScriptedScheduler(scripted.first_then(GOOD_ONCE, HOSTILE[hostile])) as server:
        proc, port = start_serve("-s", f"127.0.0.1:{server.port}", "--record", str(out))
        try:
            assert_reconnects_are_bounded(server)
            # Between two short-lived connections the page says it is retrying, why, and how
            # often it failed (read from the same answer: the next connection may have begun by
            # the next request; right after a disconnect it says "scheduler gone" before the
            # count comes with the wait).
            seen: list[dict] = []

            def retrying() -> bool:
                seen.append(json.loads(get(port, "/api/state"))["status"])
                return seen[-1]["state"] == "retrying" and "failures in a row" in seen[-1]["message"]

            wait_for(retrying, what="the page to say retrying, with the failures in a row")
            status = seen[-1]
            assert status["failures"] >= 2, status
            assert status["recording"] == "recording"
            metrics = get(port, "/metrics")
            assert (metric(metrics, "icetools_monitor_failures") or 0) >= 2, metrics
            assert (metric(metrics, "icetools_monitor_connections_total") or 0) >= 1
            assert metric(metrics, "icetools_recording") == 1
        finally:
            stderr, took = stop(proc)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert sum("retrying in" in line for line in stderr.splitlines()) >= 2, stderr
    records, reader = records_of(out)
    assert reader.ended and records[-1].reason == "signal"
    assert [r.data for r in records if isinstance(r, FrameRecord)][:2] == BUILD[:2]


# ---- the connection classes ------------------------------------------------------------------


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(main()) in a thread of its own: the page test's Playwright keeps an event
    loop running in this one for the rest of the module."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the event loop did not finish within 60 s"
    if errors:
        raise errors[0]
    return result[0]



def test_blocking_connection_turns_resets_into_connection_closed() -> None:
    """A reset peer ends a blocking Connection with ConnectionClosed wherever it lands: in the
    handshake, in a send, in a read. Never a bare OSError."""
    for _ in range(10):
        with ScriptedScheduler(scripted.reset_after_handshake) as server:
            try:
                conn = Connection("127.0.0.1", server.port)
            except ConnectionClosed:
                continue
            with conn, pytest.raises(ConnectionClosed):
                for _ in range(1000):  # the first send may still succeed; later ones cannot
                    conn.login()
                    time.sleep(0.001)
                conn.get_frame(timeout=5)


def test_async_connection_turns_resets_into_connection_closed() -> None:
    async def main() -> None:
        for _ in range(10):
            with ScriptedScheduler(scripted.reset_after_handshake) as server:
                try:
                    conn = await AsyncConnection.open("127.0.0.1", server.port)
                except ConnectionClosed:
                    continue
                with pytest.raises(ConnectionClosed):
                    for _ in range(1000):
                        await conn.send_message(m.MonLogin())
                        await asyncio.sleep(0.001)
                    await conn.read_frames()
                await conn.close()

    run_async(main)



# ---- a full disk ---------------------------------------------------------------------------

DISK_KB = 192
#: Far more than fits: the same MON_STATS frame, again and again.
FLOOD = [BUILD[0]] * 4000


def small_disk_unsupported() -> str | None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "a small tmpfs in a private mount namespace needs Linux and root"
    if shutil.which("unshare") is None:
        return "needs unshare (Debian: apt-get install util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "--", "sh", "-c", 'mount -t tmpfs -o size=64k icetools-probe "$0"', "/mnt"],
        capture_output=True, text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}"
    return None


def on_small_disk(disk: Path, *command: str, after: str = "") -> list[str]:
    """``command`` run with a DISK_KB tmpfs mounted on ``disk``, in a mount namespace of its
    own (nothing is mounted where the rest of the machine sees it, and it vanishes with the
    process); ``after`` is shell run once the command has ended, in that namespace."""
    disk.mkdir()
    script = f'mount -t tmpfs -o size={DISK_KB}k icetools-test "$0" || exit 99; '
    script += '"$@"; rc=$?; ' + after + "; exit $rc" if after else 'exec "$@"'
    return ["unshare", "-m", "--", "sh", "-c", script, str(disk), sys.executable, "-m", "icetools", *command]


def flood_then(gate: threading.Event, later: list[bytes]) -> scripted.Script:
    def script(sock: socket.socket) -> None:
        scripted.handshake(sock)
        scripted.recv_exact(sock, 8)
        sock.sendall(b"".join(FLOOD))
        gate.wait(60)
        sock.sendall(b"".join(later))
        scripted.wait_closed(sock, 60)

    return script


def assert_whole_records(path: Path) -> list[bytes]:
    records, reader = records_of(path)
    assert reader.torn_bytes == 0, "a record cut short: the failed write was not taken back"
    frames = [r.data for r in records if isinstance(r, FrameRecord)]
    assert frames and set(frames) == {BUILD[0]}
    return frames


def test_record_on_a_full_disk_ends_with_one_line_and_whole_records(tmp_path: Path) -> None:
    require(small_disk_unsupported())
    disk, kept = tmp_path / "disk", tmp_path / "kept.icecap"
    gate = threading.Event()
    with ScriptedScheduler(flood_then(gate, [])) as server:
        result = subprocess.run(
            on_small_disk(disk, "record", "-s", f"127.0.0.1:{server.port}", "-o", str(disk / "full.icecap"),
                          after=f'cp "$0/full.icecap" "{kept}"'),
            capture_output=True, text=True, timeout=60,
        )
        gate.set()
    assert_one_line_error(result, "No space left on device")
    assert result.returncode == 1
    frames = assert_whole_records(kept)
    assert f"({len(frames)} frames recorded before are kept)" in result.stderr
    assert 0 < len(frames) < len(FLOOD)


def test_serve_goes_on_when_its_recording_fills_the_disk(tmp_path: Path, tab: Tab) -> None:
    require(small_disk_unsupported())
    disk = tmp_path / "disk"
    gate = threading.Event()
    with ScriptedScheduler(flood_then(gate, BUILD[1:2])) as server:
        port = free_port()
        proc = subprocess.Popen(
            on_small_disk(disk, "serve", "-s", f"127.0.0.1:{server.port}", "--listen", f"127.0.0.1:{port}",
                          "--record", str(disk / "full.icecap")),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            def status() -> dict[str, Any]:
                try:
                    return json.loads(get(port, "/api/state"))["status"]
                except OSError:
                    assert proc.poll() is None, f"serve ended: {proc.communicate()[1]}"
                    return {}

            wait_for(lambda: status().get("recording") == "failed", what="the recording to fail")
            assert "No space left on device" in status()["recording_error"]
            metrics = get(port, "/metrics")
            assert metric(metrics, "icetools_recording") == 0
            # The page says so (in chromium, from the status it is sent).
            tab.page.goto(f"http://127.0.0.1:{port}/")
            tab.wait("() => document.getElementById('status-message').textContent"
                     ".includes('recording stopped: cannot write')")
            tab.assert_clean()
            # The page goes on: what the scheduler says next still arrives.
            gate.set()
            wait_for(lambda: any(h["name"] == "node2" for h in json.loads(get(port, "/api/state"))["hosts"]),
                     what="the next host on the page")
            assert status()["state"] == "live"
            # The capture (seen through the process's own mount namespace) has whole records.
            assert_whole_records(Path(f"/proc/{proc.pid}/root") / disk.relative_to("/") / "full.icecap")
        finally:
            stderr, _ = stop(proc)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "icetools: recording stopped: cannot write" in stderr and "serving goes on" in stderr


# ---- replacing a file (--overwrite) --------------------------------------------------------


def test_record_overwrite_keeps_the_old_file_until_the_scheduler_answers(tmp_path: Path) -> None:
    out = tmp_path / "old.icecap"
    out.write_bytes(b"an old recording")
    result = icetools("record", "-s", f"127.0.0.1:{free_port()}", "-o", str(out), "--overwrite")
    assert_one_line_error(result, "connection refused")
    assert out.read_bytes() == b"an old recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.icecap"]  # no temporary file left
    with ScriptedScheduler(serve(BUILD)) as server:
        result = icetools("record", "-s", f"127.0.0.1:{server.port}", "-o", str(out), "--overwrite", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert [r.data for r in records_of(out)[0] if isinstance(r, FrameRecord)] == BUILD[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.icecap"]


def test_serve_record_refuses_an_existing_file_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "old.icecap"
    out.write_bytes(b"an old recording")
    with ScriptedScheduler(serve(BUILD)) as server:
        refused = icetools("serve", "-s", f"127.0.0.1:{server.port}", "--listen", f"127.0.0.1:{free_port()}",
                           "--record", str(out))
        assert_one_line_error(refused, "already exists (use --overwrite to replace it)")
        assert out.read_bytes() == b"an old recording"
        proc, port = start_serve("-s", f"127.0.0.1:{server.port}", "--record", str(out), "--overwrite")
        try:
            # The old file stays until the new recording replaces it, whole, at once.
            wait_for(lambda: out.read_bytes() != b"an old recording" and frames_in(out) == len(BUILD),
                     what="the new recording")
        finally:
            stderr, _ = stop(proc)
    assert proc.returncode == 0, stderr
    assert records_of(out)[1].ended
    usage = icetools("serve", "--overwrite", "-s", "127.0.0.1:1")
    assert usage.returncode == 2 and "--overwrite goes with --record" in usage.stderr


def test_a_slow_rediscovery_does_not_hold_up_stopping() -> None:
    """Finding the scheduler again by broadcast takes seconds; stopping must not wait for it."""
    from icetools.record import RecordStatus, follow_scheduler

    entered: list[float] = []

    async def main() -> float:
        with ScriptedScheduler(GOOD_ONCE) as server:

            def locate() -> tuple[str, int]:
                entered.append(time.monotonic())
                if len(entered) > 1:
                    time.sleep(5)  # as long as a broadcast might take, and more
                return "127.0.0.1", server.port

            follow = asyncio.create_task(follow_scheduler(
                locate, offer=44, reconnect=True, on_connect=lambda conn, address: None,
                on_frames=lambda frames: None, on_disconnect=lambda reason: None, status=RecordStatus(),
            ))
            while len(entered) < 2:
                await asyncio.sleep(0.01)
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            return time.monotonic()

    stopped = run_async(main)
    assert stopped - entered[1] < 2, f"stopping waited {stopped - entered[1]:.1f} s for the rediscovery"


def test_the_backoff_starts_over_once_a_connection_has_stayed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures in a row count up until a connection stays up PROVEN_AFTER seconds (shortened
    here); then a drop is retried at once and the count is 0 again."""
    from icetools import record
    from icetools.record import RecordStatus, follow_scheduler

    monkeypatch.setattr(record, "PROVEN_AFTER", 0.3)
    hold = serve(BUILD[:1], then="close")

    def script(sock: socket.socket) -> None:
        n = server.connections
        if n == 1:
            scripted.close_after_login(sock)  # fails at once
        elif n == 2:
            scripted.handshake(sock)
            scripted.recv_exact(sock, 8)
            sock.sendall(BUILD[0])
            time.sleep(1.0)  # up long enough to prove itself, then gone
        else:
            hold(sock)

    failures_at_connect: list[int] = []
    retries: list[str] = []

    async def main() -> str:
        status = RecordStatus()
        return await follow_scheduler(
            lambda: ("127.0.0.1", server.port), offer=44, reconnect=True,
            on_connect=lambda conn, address: failures_at_connect.append(status.failures),
            on_frames=lambda frames: "done" if len(failures_at_connect) == 3 else None,
            on_disconnect=lambda reason: None, status=status, on_retry=retries.append,
        )

    with ScriptedScheduler(script) as server:
        assert run_async(main) == "done"
    assert failures_at_connect == [0, 1, 0]
    assert "retrying in 0.5 s" in retries[0]
    assert retries[1].startswith("scheduler gone (") and retries[1].endswith("reconnecting")
