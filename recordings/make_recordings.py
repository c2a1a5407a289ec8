"""Re-make the real recordings in this folder from a real icecream cluster.

Runs Debian's icecc scheduler and daemons inside network namespaces (tests/realcluster.py), puts
work through them with icecc, and records with ``icetools record`` from inside the cluster. Needs
root, icecc and iproute2. Then writes the goldens beside each recording: its ``dump --json``,
``replay --json`` and ``stats --json`` (``make_recordings.py --golden-only`` rewrites only
those), and copies the demo into the package, where ``icetools replay`` finds it.

    sudo python recordings/make_recordings.py              # all of them
    sudo python recordings/make_recordings.py build demo   # some
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import shutil
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from icetools.capture import CaptureReader, FrameRecord  # noqa: E402
from tests.golden import golden_lines, write_goldens  # noqa: E402
from tests.realcluster import Cluster  # noqa: E402

#: Protocol versions whose monitor layout differs (MON_GET_CS before 29, client_count from 39),
#: each recorded by offering it with --protocol.
LAYOUT_VERSIONS = (21, 28, 29, 38, 39, 43)


def count_type(path: Path, type_word: int) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with CaptureReader(path) as reader:
        return sum(
            1 for r in reader if isinstance(r, FrameRecord) and r.data[4:8] == type_word.to_bytes(4, "big")
        )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


class Recording:
    """``icetools record`` running inside the cluster's namespace A."""

    def __init__(self, cluster: Cluster, path: Path, protocol: int = 44) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.proc = cluster.popen_in_a(
            [sys.executable, "-m", "icetools", "record", "-s",
             f"{cluster.scheduler_host}:{cluster.scheduler_port}", "-o", str(path),
             "--protocol", str(protocol)],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # Logged in once the scheduler has sent the hosts (one MON_STATS per daemon).
        wait_until(lambda: count_type(path, 0x57) >= len(cluster.daemons), "recorder login")

    def stop_when(self, condition: Callable[[Path], bool], what: str) -> None:
        wait_until(lambda: condition(self.path), what)
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        if self.proc.returncode != 0:
            raise SystemExit(f"record failed: {err}")


def jobs_done(n: int) -> Callable[[Path], bool]:
    return lambda p: count_type(p, 0x55) >= n


def make_build(cluster: Cluster, work: Path) -> None:
    rec = Recording(cluster, HERE / "build.icecap")
    results = cluster.compile_files(12, work / "build", jobs=6, tag="build")
    assert all(r.ok for r in results), [r.stderr for r in results if not r.ok]
    rec.stop_when(jobs_done(12), "12 MON_JOB_DONE")


def make_failures_local(cluster: Cluster, work: Path) -> None:
    rec = Recording(cluster, HERE / "failures-local.icecap")
    ok = cluster.compile_files(4, work / "fl", tag="good", with_main=True)
    bad = cluster.compile_failing(3, work / "fl", tag="bad")
    assert all(r.ok for r in ok) and not any(r.ok for r in bad)
    cluster.link([r.output for r in ok], work / "fl" / "prog")
    cluster.icerun(["true"])
    rec.stop_when(lambda p: count_type(p, 0x4F) >= 2 and count_type(p, 0x55) >= 7, "jobs and local jobs")


def make_daemon_dies(cluster: Cluster, work: Path) -> None:
    rec = Recording(cluster, HERE / "daemon-dies.icecap")
    victim = len(cluster.daemons)
    report = cluster.kill_daemon_while_compiling(victim, work / "kill", files=2)
    assert report.job_ids

    def offline_and_failed(p: Path) -> bool:
        with CaptureReader(p) as reader:
            lines = [json.loads(x) for x in golden_lines(reader)]
        offline = any(x["type"] == "MON_STATS" and x["stats"] == {"State": "Offline"} for x in lines)
        return offline and any(x["type"] == "MON_JOB_DONE" and x["exitcode"] == 255 for x in lines)

    rec.stop_when(offline_and_failed, "State:Offline and exit code 255")
    cluster.start_daemon(victim)


def make_protocol(cluster: Cluster, work: Path, version: int) -> None:
    rec = Recording(cluster, HERE / f"protocol-{version}.icecap", protocol=version)
    results = cluster.compile_files(3, work / f"p{version}", tag=f"p{version}")
    assert all(r.ok for r in results)
    rec.stop_when(jobs_done(3), "3 MON_JOB_DONE")


def make_layouts(cluster: Cluster, work: Path) -> None:
    """One build recorded at once by monitors offering each layout version: the same jobs as
    each version's monitor saw them, to check re-encoding against the real scheduler."""
    recordings = [Recording(cluster, HERE / f"layouts-{v}.icecap", protocol=v) for v in (43, *LAYOUT_VERSIONS[:-1])]
    # Every login makes the scheduler send all hosts to every monitor: let them settle first.
    results = cluster.compile_files(4, work / "layouts", tag="lay")
    assert all(r.ok for r in results)
    ok = cluster.compile_files(1, work / "layouts", tag="main", with_main=True)
    cluster.link([r.output for r in ok], work / "layouts" / "prog")
    for rec in recordings:
        rec.stop_when(lambda p: count_type(p, 0x55) >= 5 and count_type(p, 0x4F) >= 1, "jobs at every version")


def make_builds(work: Path) -> None:
    """Two submitters building at once on a 2-slot cluster (node1 from namespace A, node2 from
    its spoke: 4 files each, so jobs wait), a pause longer than the default gap of `stats`
    (30 s), then node1 builds again: three builds (tests/build_sessions.py)."""
    from tests.build_sessions import overlapping_builds, warm_up
    from icetools.stats import DEFAULT_GAP

    with Cluster(daemons=3, tmpdir=work / "buildscluster", max_jobs=1) as cluster:
        warm_up(cluster, work, (1, 2))
        rec = Recording(cluster, HERE / "builds.icecap")
        runs = overlapping_builds(cluster, work / "builds", files=4, weight=80, pause=DEFAULT_GAP + 5)
        rec.stop_when(lambda p: count_type(p, 0x55) >= 12 and count_type(p, 0x4F) >= 3, "12 jobs and 3 links")
        print("builds:", [(r.submitter, len(r.sources)) for r in runs])


DEMO_COMPONENTS = ("parser", "lexer", "net", "http", "json", "render", "sched", "store", "crypto", "ui")


def make_demo(work: Path) -> None:
    """A few minutes of a busy 6-host cluster: waves of compiles of varying weight and width,
    some compile errors (icecc re-runs them locally), links and icerun jobs, idle gaps, and one
    host that dies mid-compile and comes back with a new host id."""
    with Cluster(daemons=6, tmpdir=work / "democluster", max_jobs=3) as cluster:
        rec = Recording(cluster, HERE / "demo.icecap")
        weights = (20, 60, 140, 30, 200, 80)
        for wave in range(12):
            component = DEMO_COMPONENTS[wave % len(DEMO_COMPONENTS)]
            src = work / "src" / component
            files = 24 + 8 * (wave % 4)
            results = cluster.compile_files(files, src, jobs=6 + 2 * (wave % 5), tag=component,
                                            with_main=True, work=weights[wave % len(weights)])
            if wave % 3 == 2:
                cluster.compile_failing(2, src, tag=f"{component}_broken")
            if wave == 6:
                cluster.kill_daemon_while_compiling(6, work / "src" / "slow", files=2, work=300)
            if wave == 9:
                cluster.start_daemon(6)
            cluster.link([r.output for r in results if r.ok], src / component)
            cluster.icerun(["sleep", "0.3"])
            time.sleep(1 + wave % 3)  # idle gaps between waves, as between real builds
        done = count_type(rec.path, 0x55)
        rec.stop_when(lambda p: count_type(p, 0x4F) >= 24, "the last local jobs")
        print(f"demo: {done}+ jobs done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="build failures-local daemon-dies protocols layouts builds demo")
    parser.add_argument("--golden-only", action="store_true")
    args = parser.parse_args()
    which = set(args.which or ["build", "failures-local", "daemon-dies", "protocols", "layouts", "builds", "demo"])
    if not args.golden_only:
        # A fixed work folder, so that file names in the recordings read the same every time.
        work = Path("/tmp/icetools-recordings")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            if which & {"build", "failures-local", "daemon-dies", "protocols", "layouts"}:
                with Cluster(daemons=3, tmpdir=work / "cluster") as cluster:
                    if "build" in which:
                        make_build(cluster, work)
                    if "failures-local" in which:
                        make_failures_local(cluster, work)
                    if "protocols" in which:
                        for version in LAYOUT_VERSIONS:
                            make_protocol(cluster, work, version)
                    if "layouts" in which:
                        make_layouts(cluster, work)
                    if "daemon-dies" in which:
                        make_daemon_dies(cluster, work)
            if "builds" in which:
                make_builds(work)
            if "demo" in which:
                make_demo(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    shutil.copyfile(HERE / "demo.icecap", ROOT / "icetools" / "data" / "demo.icecap")
    for path in sorted(HERE.glob("*.icecap")):
        write_goldens(path)
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
