"""Smoke tests for tests/realcluster.py: a real icecream 1.4 cluster in network namespaces.

Skipped (or failed when CI=true) where root, `ip netns` or Debian's icecc are missing. The tests
share one 3-daemon cluster (node1 in namespace A at -m 0, node2/node3 at -m 2) and run in file
order; the last one stops it and checks that nothing is left. The module takes ~45 s: start-up
~9 s, first compile ~5 s (environment creation), killed compile ~4 s, scheduler restart ~12 s,
daemon restart ~9 s. Run with -s to see the measured timings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import realcluster as rc

# Namespaces that existed before our cluster started (filled by the fixture).
_netns_before: set[str] = set()
# Objects compiled by one test and linked by the next.
_objects: list[Path] = []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rc.Cluster]:
    rc.skip_or_fail_if_unsupported()
    _netns_before.update(rc.list_netns())
    c = rc.Cluster(3, tmpdir=tmp_path_factory.mktemp("realcluster-smoke"))
    t0 = time.monotonic()
    with c:
        print(f"\ncluster start-up: {time.monotonic() - t0:.1f} s")
        yield c
    # The final test already stopped it; stop() is idempotent.


@pytest.fixture
def tap(cluster: rc.Cluster) -> Iterator[rc.MonitorTap]:
    with cluster.monitor() as t:
        yield t


def _count(frames: list[rc.MonFrame], mtype: int) -> int:
    return sum(1 for f in frames if f.type == mtype)


def test_cluster_reports_three_daemons(cluster: rc.Cluster, tap: rc.MonitorTap) -> None:
    # On login the scheduler sends one MON_STATS per logged-in daemon.
    hosts = tap.wait_for(lambda _: len(tap.hosts()) == 3 and tap.hosts(), timeout=10, what="3 hosts")
    assert sorted(f["Name"] for f in hosts.values()) == ["node1", "node2", "node3"]
    assert {f["IP"] for f in hosts.values()} == {"127.0.0.1", "10.77.2.2", "10.77.3.2"}
    by_name = {f["Name"]: f for f in hosts.values()}
    assert by_name["node1"]["MaxJobs"] == "0" and by_name["node2"]["MaxJobs"] == "2"


def test_compiles_run_remotely_and_are_monitored(cluster: rc.Cluster, tap: rc.MonitorTap, tmp_path: Path) -> None:
    t0 = time.monotonic()
    results = cluster.compile_files(6, tmp_path, with_main=True)
    print(f"\n6 compiles (first ones: environment creation + transfer): {time.monotonic() - t0:.1f} s")
    assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
    assert all(r.output is not None and r.output.stat().st_size > 0 for r in results)

    frames = tap.wait_for(lambda fs: _count(fs, rc.MON_JOB_DONE) >= 6 and fs, what="6 MON_JOB_DONE")
    counts = {t: _count(frames, t) for t in (rc.MON_GET_CS, rc.MON_JOB_BEGIN, rc.MON_JOB_DONE)}
    print(f"frame counts: { {rc.TYPE_NAMES[t]: n for t, n in counts.items()} }")
    assert counts == {rc.MON_GET_CS: 6, rc.MON_JOB_BEGIN: 6, rc.MON_JOB_DONE: 6}

    ids = tap.host_ids()
    begun_on = [f.job_begin()["hostid"] for f in frames if f.type == rc.MON_JOB_BEGIN]
    print(f"jobs per host id: {sorted(begun_on)} (node ids {ids})")
    assert set(begun_on) <= {ids["node2"], ids["node3"]}  # node1 runs -m 0: every compile is remote
    assert all(f.get_cs()["clientid"] == ids["node1"] for f in frames if f.type == rc.MON_GET_CS)
    assert [f.job_done()["exitcode"] for f in frames if f.type == rc.MON_JOB_DONE] == [0] * 6

    _objects[:] = [r.output for r in results if r.output is not None]


def test_local_jobs(cluster: rc.Cluster, tap: rc.MonitorTap, tmp_path: Path) -> None:
    objects = _objects or [r.output for r in cluster.compile_files(2, tmp_path, with_main=True)]
    link = cluster.link(objects, tmp_path / "prog")
    assert link.ok, link.stderr
    run = cluster.icerun(["sh", "-c", "echo ran"])
    assert run.ok and run.stdout.strip() == "ran"

    frames = tap.wait_for(lambda fs: _count(fs, rc.JOB_LOCAL_DONE) >= 2 and fs, what="2 JOB_LOCAL_DONE")
    begins = [f.local_job_begin() for f in frames if f.type == rc.MON_LOCAL_JOB_BEGIN]
    dones = [f.local_job_done()["job_id"] for f in frames if f.type == rc.JOB_LOCAL_DONE]
    assert len(begins) == 2 and sorted(b["job_id"] for b in begins) == sorted(dones)
    assert {b["hostid"] for b in begins} == {tap.host_ids()["node1"]}
    assert begins[0]["file"].endswith("/prog")  # shortened to the last 3 path components
    assert begins[1]["file"] == ""  # icerun has no output file


def test_failing_compiles(cluster: rc.Cluster, tap: rc.MonitorTap, tmp_path: Path) -> None:
    results = cluster.compile_failing(3, tmp_path)
    assert all(r.returncode == 1 for r in results), [(r.returncode, r.stderr) for r in results]
    assert all("error:" in r.stderr for r in results)
    frames = tap.wait_for(lambda fs: _count(fs, rc.MON_JOB_DONE) >= 3 and fs, what="3 MON_JOB_DONE")
    codes = sorted(f.job_done()["exitcode"] for f in frames if f.type == rc.MON_JOB_DONE)
    print(f"\nMON_JOB_DONE exit codes for syntax errors: {codes}")
    assert codes and all(c != 0 for c in codes)


def test_killing_a_daemon_mid_compile(cluster: rc.Cluster, tap: rc.MonitorTap, tmp_path: Path) -> None:
    t0 = time.monotonic()
    report = cluster.kill_daemon_while_compiling(3, tmp_path, tap=tap)
    print(f"\nkill: {report.node} (host {report.hostid}, pid {report.pid}) jobs {report.job_ids}; "
          f"client exit codes {[r.returncode for r in report.results]} after {time.monotonic() - t0:.1f} s")

    def lost(frames: list[rc.MonFrame]) -> list[dict[str, int]]:
        offline = any(f.stats() == (report.hostid, {"State": "Offline"}) for f in frames if f.type == rc.MON_STATS)
        done = [d for d in (f.job_done() for f in frames if f.type == rc.MON_JOB_DONE)
                if d["job_id"] in report.job_ids and d["exitcode"] == 255]
        return done if offline and len(done) == len(report.job_ids) else []

    assert tap.wait_for(lost, timeout=15, what="State:Offline and MON_JOB_DONE(255)")
    # icecc recovers by compiling locally, so the build itself still succeeds.
    assert [r.returncode for r in report.results] == [0]
    assert "node3" not in tap.host_ids()


def test_scheduler_restart_and_daemon_restart(cluster: rc.Cluster) -> None:
    t0 = time.monotonic()
    ids = cluster.restart_scheduler()  # waits for the daemons still running (node1, node2)
    print(f"\nscheduler restart: daemons back after {time.monotonic() - t0:.1f} s: {ids}")
    assert ids is not None and set(ids) == {"node1", "node2"}
    t0 = time.monotonic()
    ids = cluster.start_daemon(3)
    print(f"node3 restarted in {time.monotonic() - t0:.1f} s: {ids}")
    assert cluster.host_ids().keys() == {"node1", "node2", "node3"}


def test_stop_leaves_nothing_behind(cluster: rc.Cluster) -> None:
    cluster.stop()
    assert cluster.leftovers() == []
    # Checked against the whole machine, but only for things that can be ours: other test
    # sessions may run their own clusters (other pids in the names) at the same time.
    assert [ns for ns in rc.list_netns() if ns.startswith(cluster.prefix + "-")] == []
    new_netns = set(rc.list_netns()) - _netns_before
    assert not any(ns.startswith(f"{rc.NS_PREFIX}{os.getpid()}-") for ns in new_netns), new_netns
    ours = {pid: cmd for pid, cmd in rc.running_icecream_processes().items() if str(cluster.rundir) in cmd}
    assert ours == {}
    assert not cluster.rundir.exists()
    assert (cluster.tmpdir / "cluster-logs" / "scheduler.log").exists()
