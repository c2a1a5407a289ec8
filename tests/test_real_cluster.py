"""icetools against the real thing: Debian's icecc scheduler and daemons, in network namespaces.

Every test records with ``icetools record`` (a real process inside the cluster's namespace A)
while real ``icecc`` compiles run, then checks with ``icetools dump --json`` that what the
scheduler said matches what really happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from icetools.capture import CaptureReader, FrameRecord

from .realcluster import Cluster, make_cluster_fixture

real_cluster = make_cluster_fixture("real_cluster", daemons=3)
ROOT = Path(__file__).resolve().parent.parent
JOB_DONE, STATS, LOCAL_DONE = 0x55, 0x57, 0x4F


def count_frames(path: Path, type_word: int) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    want = type_word.to_bytes(4, "big")
    with CaptureReader(path) as reader:
        return sum(1 for r in reader if isinstance(r, FrameRecord) and r.data[4:8] == want)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return result


def dump_json(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "icetools", "dump", "--json", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


class Recorder:
    """``icetools record`` inside namespace A, logged in once every daemon's MON_STATS is on disk."""

    def __init__(self, cluster: Cluster, path: Path, *extra: str, hosts: int | None = None) -> None:
        self.path = path
        self.proc = cluster.popen_in_a(
            [sys.executable, "-m", "icetools", "record", "-s",
             f"{cluster.scheduler_host}:{cluster.scheduler_port}", "-o", str(path), *extra],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        expected = len(cluster.daemons) if hosts is None else hosts
        wait_for(lambda: count_frames(path, STATS) >= expected or self.proc.poll() is not None, "login")
        assert self.proc.poll() is None, self.proc.communicate()

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return dump_json(self.path)


def live_hosts(lines: list[dict[str, Any]]) -> dict[str, int]:
    """Node name -> host id from MON_STATS lines."""
    return {x["stats"]["Name"]: x["host_id"] for x in lines if x["type"] == "MON_STATS" and "Name" in x["stats"]}


def of_type(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["type"] == name]


@pytest.mark.parametrize("protocol", [21, 28, 29, 38, 39, 43])
def test_build_at_each_monitor_layout(real_cluster: Cluster, tmp_path: Path, protocol: int) -> None:
    path = tmp_path / f"p{protocol}.icecap"
    rec = Recorder(real_cluster, path, "--protocol", str(protocol))
    results = real_cluster.compile_files(4, tmp_path / "src", tag=f"p{protocol}")
    assert all(r.ok for r in results), [r.stderr for r in results]
    wait_for(lambda: count_frames(path, JOB_DONE) >= 4, "4 MON_JOB_DONE")
    lines = rec.stop()

    assert lines[0]["type"] == "connect" and lines[0]["protocol"] == protocol
    assert lines[0]["peer_version"] == 43  # Debian's icecream 1.4
    hosts = live_hosts(lines)
    assert set(hosts) == {"node1", "node2", "node3"}
    get_cs, begins, dones = (of_type(lines, t) for t in ("MON_GET_CS", "MON_JOB_BEGIN", "MON_JOB_DONE"))
    assert len(get_cs) == len(begins) == len(dones) == 4
    job_ids = {x["job_id"] for x in get_cs}
    assert {x["job_id"] for x in begins} == job_ids == {x["job_id"] for x in dones}
    # icecream shortens file names (to their last three components); the source names remain.
    assert {x["filename"].rsplit("/", 1)[-1] for x in get_cs} == {r.source.name for r in results if r.source}
    assert all(x["filename"].count("/") <= 2 for x in get_cs)
    assert {x["client_id"] for x in get_cs} == {hosts["node1"]}  # submitted from namespace A
    # node1 runs with -m 0, so every job compiled on node2 or node3.
    assert {x["host_id"] for x in begins} <= {hosts["node2"], hosts["node3"]}
    assert all(x["exitcode"] == 0 and x["real_msec"] < 60000 for x in dones)
    assert all(x["in_uncompressed"] > 0 and x["out_uncompressed"] > 0 for x in dones)
    # The layouts of the negotiated version:
    assert all(("versions" in x) == (protocol < 29) for x in get_cs)
    if protocol < 29:
        assert all(x["count"] == 1 and x["target"] for x in get_cs)
    assert all(("client_count" in x) == (protocol >= 39) for x in dones)


def test_failures_links_and_icerun(real_cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "fail.icecap"
    rec = Recorder(real_cluster, path)
    good = real_cluster.compile_files(2, tmp_path / "ok", tag="ok", with_main=True)
    bad = real_cluster.compile_failing(2, tmp_path / "bad", tag="bad")
    assert all(r.ok for r in good) and not any(r.ok for r in bad)
    link = real_cluster.link([r.output for r in good], tmp_path / "prog")
    assert link.ok, link.stderr
    assert real_cluster.icerun(["true"]).ok

    def settled() -> bool:
        # Not just a count of local jobs: icecc re-runs the failed compiles locally, and those
        # can be the first two local jobs to end. The link itself, and every local job's end.
        if count_frames(path, JOB_DONE) < 4 or count_frames(path, LOCAL_DONE) < 2:
            return False
        lines = dump_json(path)
        begins = {x["job_id"]: x for x in of_type(lines, "MON_LOCAL_JOB_BEGIN")}
        ended = {x["job_id"] for x in of_type(lines, "JOB_LOCAL_DONE")}
        return any(x["file"].endswith("prog") for x in begins.values()) and set(begins) <= ended

    wait_for(settled, "the link and every local job to end")
    lines = rec.stop()

    get_cs = {x["job_id"]: x for x in of_type(lines, "MON_GET_CS")}
    dones = {x["job_id"]: x for x in of_type(lines, "MON_JOB_DONE")}
    failed = {j for j, x in dones.items() if x["exitcode"] != 0}
    assert {get_cs[j]["filename"].rsplit("/", 1)[-1] for j in failed} == {"bad_0.c", "bad_1.c"}
    assert all(dones[j]["exitcode"] == 0 for j in dones if j not in failed)
    # The link and the icerun are local jobs: begin and end with the same scheduler job id.
    local_begins = of_type(lines, "MON_LOCAL_JOB_BEGIN")
    local_dones = of_type(lines, "JOB_LOCAL_DONE")
    begun = {x["job_id"]: x for x in local_begins}
    assert {x["job_id"] for x in local_dones} <= set(begun)
    assert any(x["file"].endswith("prog") for x in local_begins)
    assert len(local_begins) >= 2
    hosts = live_hosts(lines)
    assert all(x["host_id"] == hosts["node1"] for x in local_begins)
    # Local jobs share the job id counter with remote jobs.
    assert not set(begun) & set(get_cs)


def test_daemon_killed_mid_compile(real_cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "kill.icecap"
    rec = Recorder(real_cluster, path)
    report = real_cluster.kill_daemon_while_compiling(3, tmp_path / "kill", files=2)
    assert report.job_ids
    wait_for(lambda: count_frames(path, JOB_DONE) >= len(report.job_ids), "exit 255 jobs")
    lines = rec.stop()
    real_cluster.start_daemon(3)

    hosts = live_hosts(lines)
    victim = hosts["node3"]
    offline = [x for x in of_type(lines, "MON_STATS") if x["stats"] == {"State": "Offline"}]
    assert [x["host_id"] for x in offline] == [victim]
    dones = {x["job_id"]: x for x in of_type(lines, "MON_JOB_DONE")}
    for job_id in report.job_ids:
        done = dones[job_id]
        assert done["exitcode"] == 255
        assert done["real_msec"] == 0 and done["in_uncompressed"] == 0  # synthesized by the scheduler
    # The clients recovered by compiling locally.
    assert all(r.ok for r in report.results)


def test_scheduler_restart_during_record(real_cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "restart.icecap"
    rec = Recorder(real_cluster, path)
    real_cluster.restart_scheduler()
    # After the restart every daemon logs in again: three more MON_STATS with names.
    wait_for(lambda: count_frames(path, STATS) >= 6, "hosts after the restart")
    results = real_cluster.compile_files(2, tmp_path / "after", tag="after")
    assert all(r.ok for r in results)
    wait_for(lambda: count_frames(path, JOB_DONE) >= 2, "jobs after the restart")
    lines = rec.stop()
    types = [x["type"] for x in lines]
    assert types.count("connect") == 2
    second = [x for x in lines if x["type"] == "connect"][1]
    assert second["reconnect"] is True and second["protocol"] == 43
    assert types.index("disconnect") < types.index("connect", 1) < types.index("MON_JOB_DONE")


def test_discovery_finds_the_real_scheduler_by_broadcast(real_cluster: Cluster, tmp_path: Path) -> None:
    """From daemon 2's namespace, with no -s and no environment, record broadcasts for ICECREAM
    on that namespace's own veth and the real scheduler answers."""
    path = tmp_path / "discovered.icecap"
    env = {k: v for k, v in os.environ.items() if k not in ("ICECC_SCHEDULER", "USE_SCHEDULER")}
    namespace = real_cluster.daemon(2).netns
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "icetools", "record",
         "-n", "ICECREAM", "-o", str(path), "--count", "3"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = dump_json(path)
    assert lines[0]["type"] == "connect" and lines[0]["scheduler"] == f"10.77.2.1:{real_cluster.scheduler_port}"
    assert len(of_type(lines, "MON_STATS")) == 3
    wrong = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "icetools", "record",
         "-n", "NOSUCHNET", "-o", str(tmp_path / "none.icecap")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    assert wrong.returncode == 1 and "no scheduler for network 'NOSUCHNET'" in wrong.stderr


def test_serve_follows_the_real_scheduler_across_a_restart_and_records(real_cluster: Cluster, tmp_path: Path) -> None:
    """icetools serve inside the cluster: live state over HTTP, 'retrying' while the scheduler
    is gone, live again after it restarted, and --record keeps it all."""
    record_to = tmp_path / "served.icecap"
    port = 18770
    serve = real_cluster.popen_in_a(
        [sys.executable, "-m", "icetools", "serve", "-s", f"127.0.0.1:{real_cluster.scheduler_port}",
         "--listen", f"127.0.0.1:{port}", "--record", str(record_to)],
        cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    fetch = (
        "import json, sys, urllib.request; "
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/api/state', timeout=5).read().decode())"
    )
    states: list[dict[str, Any]] = []

    def state() -> dict[str, Any] | None:
        result = real_cluster.run_in_a([sys.executable, "-c", fetch], capture_output=True, text=True, timeout=20)
        if result.returncode != 0:
            return None
        states.append(json.loads(result.stdout))
        return states[-1]

    try:
        first = wait_for(lambda: (s := state()) and s["status"]["state"] == "live" and len(s["hosts"]) == 3 and s, "live state")
        assert first["status"]["protocol"] == 43 and first["status"]["mode"] == "live"
        assert {h["name"] for h in first["hosts"]} == {"node1", "node2", "node3"}
        results = real_cluster.compile_files(2, tmp_path / "served", tag="served")
        assert all(r.ok for r in results)
        wait_for(lambda: (s := state()) and s["totals"]["remote_done"] >= 2, "jobs in the served state")
        real_cluster.restart_scheduler(wait=False)
        wait_for(lambda: any(s["status"]["state"] == "retrying" for s in states) or
                 ((s := state()) and s["status"]["state"] == "retrying"), "the page being told it retries")
        real_cluster.wait_ready()
        again = wait_for(lambda: (s := state()) and s["status"]["state"] == "live" and s["totals"]["resets"] == 1
                         and len(s["hosts"]) == 3 and s, "live again after the restart")
        assert again["totals"]["remote_done"] >= 2  # totals span the reconnect
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    lines = dump_json(record_to)
    assert [x["type"] for x in lines].count("connect") == 2
    assert len(of_type(lines, "MON_JOB_DONE")) >= 2
