"""bench/load.py against the real cluster: a --quick run gives sane figures, and an interrupted
run leaves nothing behind.

Skipped (or failed when CI=true) where the real cluster cannot run (root, `ip netns`, icecc).
Each test starts its own cluster through the script, ~20 s each.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from . import realcluster as rc

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "bench" / "load.py"

KEYS = {
    "params": {"jobs", "local_jobs", "remote_jobs", "viewers", "stalled", "daemons"},
    "frames": {"monitor", "recorded", "lost", "identical", "first_mismatch", "recording_total", "monitor_total"},
    "scheduler_drops": {"serve_disconnects", "serve_connects", "monitor_closed"},
    "jobs": {"requested", "done", "done_local", "done_remote", "clients_failed"},
    "viewers": {"reading", "seen_min", "seen_max", "all_saw_all", "closed", "extra_snapshots",
                "messages_per_viewer", "mb_per_viewer", "latency_ms", "process_cpu_seconds"},
    "stalled": {"count", "dropped", "dropped_after_s", "server_states", "max_server_send_queue",
                "max_client_recv_queue"},
    "serve": {"cpu_seconds_burst", "cpu_seconds_total", "cpu_share_burst", "rss_mb_before", "peak_rss_mb",
              "alive_at_end", "exit_status"},
    "seconds": {"burst_clients", "monitor_last_done", "viewers_last_seen", "whole_run"},
}


def _work_folder(stderr: str) -> str:
    match = re.search(r"work folder (\S+);", stderr)
    assert match, stderr
    return match.group(1)


def _leftovers(pid: int, work: str) -> list[str]:
    """Namespaces named after the script's pid, processes started with its work folder in their
    command line (serve, the viewers), and the work folder itself."""
    found = [ns for ns in rc.list_netns() if ns.startswith(f"{rc.NS_PREFIX}{pid}-")]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if work in cmdline:
                found.append(f"pid {entry.name}: {cmdline[:120]}")
    if Path(work).exists():
        found.append(work)
    return found


def test_quick_load_run_gives_sane_figures() -> None:
    rc.skip_or_fail_if_unsupported()
    proc = subprocess.Popen([sys.executable, str(LOAD), "--quick", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = json.loads(out)
    for section, keys in KEYS.items():
        assert keys <= report[section].keys(), (section, keys - report[section].keys())
    assert {"min", "p50", "p99", "max", "samples"} <= report["viewers"]["latency_ms"].keys()

    p = report["params"]
    assert (p["jobs"], p["viewers"], p["stalled"]) == (300, 4, 1)
    assert p["local_jobs"] + p["remote_jobs"] == 300 and p["remote_jobs"] > 0
    jobs = report["jobs"]
    assert (jobs["done"], jobs["done_local"], jobs["done_remote"]) == (300, p["local_jobs"], p["remote_jobs"])
    assert not jobs["clients_failed"]

    # Every frame the independent monitor saw in the burst is in serve's recording, in order.
    frames = report["frames"]
    assert frames["lost"] == 0 and frames["identical"]
    # A local job is 2 frames, a remote one 3, plus stats reports in between.
    assert frames["monitor"] == frames["recorded"] >= 2 * p["local_jobs"] + 3 * p["remote_jobs"]
    drops = report["scheduler_drops"]
    assert (drops["serve_disconnects"], drops["serve_connects"], drops["monitor_closed"]) == (0, 1, False)

    viewers = report["viewers"]
    assert viewers["reading"] == 3 and viewers["closed"] == 0
    assert viewers["all_saw_all"] and viewers["seen_min"] == viewers["seen_max"] == 300
    latency = viewers["latency_ms"]
    assert latency["samples"] == 3 * 300
    # Deltas go out every 100 ms; a viewer seeing a job seconds after the monitor would be a bug.
    # (min may dip below 0 by scheduling noise: the monitor process is not always first to run.)
    assert -100 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"] < 5000

    stalled = report["stalled"]
    assert stalled["count"] == 1
    # The never-reading viewer really backed up: serve has data queued for it.
    assert stalled["max_server_send_queue"] > 0

    serve = report["serve"]
    assert serve["alive_at_end"] and serve["exit_status"] == 0
    assert 0 < serve["cpu_seconds_burst"] <= serve["cpu_seconds_total"]
    assert 10 < serve["rss_mb_before"] <= serve["peak_rss_mb"] < 500
    seconds = report["seconds"]
    assert 0 < seconds["monitor_last_done"] < seconds["viewers_last_seen"] + 0.2 < seconds["whole_run"] < 120


def test_interrupted_load_run_leaves_nothing_behind() -> None:
    rc.skip_or_fail_if_unsupported()
    proc = subprocess.Popen([sys.executable, str(LOAD), "--jobs", "1000000", "--viewers", "3", "--stalled", "1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    burst = threading.Event()

    def read_stderr() -> None:  # progress lines, read to EOF so the test never blocks on them
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "load: burst:" in line:
                burst.set()
        burst.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        burst.wait(timeout=120)
        assert any("load: burst:" in line for line in lines), "".join(lines)
        work = _work_folder("".join(lines))
        assert _leftovers(proc.pid, work)  # the check can see what it looks for
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines)
    assert "load.py: interrupted; everything it started was stopped" in "".join(lines)
    assert _leftovers(proc.pid, work) == []


def test_bad_arguments_are_one_error_line() -> None:
    result = subprocess.run([sys.executable, str(LOAD), "--viewers", "3", "--stalled", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("load.py: error: ") and result.stderr.count("\n") == 1


def test_tcp_table_sees_a_peer_close_its_side() -> None:
    """The stalled-viewer watch reads /proc/net/tcp: a real loopback connection shows both
    ends ESTABLISHED, and once the server side closes, the server's end leaves ESTABLISHED."""
    from bench.load import _tcp_table

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            server, _ = listener.accept()
            cport = client.getsockname()[1]
            server.sendall(b"x" * 1000)  # unread by the client: its receive queue
            table = _tcp_table()
            assert table[(port, cport)][0] == "ESTABLISHED"
            assert table[(cport, port)][0] == "ESTABLISHED" and table[(cport, port)][2] == 1000
            server.close()
            table = _tcp_table()
            assert table.get((port, cport), ("gone",))[0] != "ESTABLISHED"
            assert table[(cport, port)][0] == "CLOSE_WAIT"
