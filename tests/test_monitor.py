"""The Monitor against real recordings, one test per real-cluster case it has to handle."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, ConnectRecord, FrameRecord, Record
from icetools.connection import Connection
from icetools.errors import ConnectionClosed
from icetools.monitor import Event, EventKind, JobState, Monitor, Publisher
from icetools.replay import paced, replay

from .golden import memory_growth
from .scripted import ScriptedScheduler, handshake, recv_exact

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def records(name: str) -> list[Record]:
    with CaptureReader(RECORDINGS / name) as reader:
        return list(reader)


def decoded(record: Record) -> m.Message | None:
    if isinstance(record, FrameRecord):
        return m.decode(record.data, record.protocol)
    return None


def run(recs: list[Record], **kwargs: object) -> Monitor:
    monitor = Monitor(**kwargs)  # type: ignore[arg-type]
    replay(monitor, recs)
    return monitor


class Recorder(Publisher):
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event, monitor: Monitor) -> None:
        self.events.append(event)


def test_a_normal_build() -> None:
    events = Recorder()
    monitor = run(records("build.icecap"), publishers=[events])
    names = {h.name: h for h in monitor.hosts.values()}
    assert set(names) == {"node1", "node2", "node3"}
    assert all(h.online and h.platform == "x86_64" and h.protocol == 43 for h in names.values())
    assert names["node1"].max_jobs == 0 and names["node2"].max_jobs == 2
    assert names["node2"].features == ("env_xz", "env_zstd")
    t = monitor.totals
    assert (t.submitted, t.remote_done, t.remote_failed, t.local_done, t.unseen) == (12, 12, 0, 0, 0)
    assert not monitor.jobs  # everything finished
    assert names["node1"].counters.submitted == 12
    assert names["node2"].counters.compiled + names["node3"].counters.compiled == 12
    jobs = list(monitor.finished)
    assert all(j.state is JobState.DONE and j.exit_code == 0 and j.file.endswith(".c") for j in jobs)
    assert all(j.server_id in (names["node2"].id, names["node3"].id) for j in jobs)
    assert all(j.duration is not None and j.duration >= 0 for j in jobs)
    kinds = Counter(e.kind for e in events.events)
    assert kinds[EventKind.HOST_ADDED] == 3
    assert kinds[EventKind.JOB_SUBMITTED] == kinds[EventKind.JOB_STARTED] == kinds[EventKind.JOB_FINISHED] == 12


def test_failed_remote_jobs_rerun_locally() -> None:
    monitor = run(records("failures-local.icecap"))
    failed = [j for j in monitor.finished if j.state is JobState.FAILED]
    assert sorted(j.file.rsplit("/", 1)[-1] for j in failed) == ["bad_0.c", "bad_1.c", "bad_2.c"]
    # A compile error reports exit 1 from the compile host, or 118 ("client killed") when the
    # submitter's report reaches the scheduler first (flag FROM_SUBMITTER).
    assert all(j.exit_code in (1, 118) and not j.lost for j in failed)
    local = [j for j in monitor.finished if j.local]
    assert all(j.state is JobState.LOCAL_DONE for j in local)
    reruns = {j.rerun_of: j for j in local if j.rerun_of is not None}
    assert set(reruns) == {j.id for j in failed}
    for job in failed:
        assert reruns[job.id].file.endswith(job.file.rsplit("/", 1)[-1].replace(".c", ".o"))
    assert monitor.totals.reruns == 3
    assert any(j.file.endswith("/prog") for j in local)  # the link
    assert any(j.file == "" for j in local)  # the icerun


def test_a_daemon_dies_mid_compile() -> None:
    recs = records("daemon-dies.icecap")
    monitor = run(recs)
    victim = next(h for h in monitor.hosts.values() if not h.online)
    last_report = [
        msg for r in recs if isinstance(msg := decoded(r), m.MonStats)
        and msg.host_id == victim.id and not msg.offline
    ][-1]
    assert victim.name == "node3"
    assert victim.load == int(last_report.stats["Load"])  # its last report is kept
    lost = [j for j in monitor.finished if j.lost]
    assert len(lost) == 2 and monitor.totals.lost == 2
    assert all(j.exit_code == 255 and j.server_id == victim.id for j in lost)
    assert victim.counters.lost == 2 and victim.counters.failed == 2
    assert not victim.jobs_as_server
    # icecc re-ran both locally; those are not re-runs of *compile errors*, but are linked by file.
    assert monitor.totals.local_started == 2


def test_jobs_that_began_before_the_monitor_connected() -> None:
    recs = records("build.icecap")
    # Drop every MON_GET_CS: as if the monitor connected after the jobs were requested.
    cut = [r for r in recs if not (isinstance(decoded(r), m.MonGetCS))]
    monitor = run(cut)
    jobs = list(monitor.finished)
    assert len(jobs) == 12 and all(not j.seen_submit and j.file == "" for j in jobs)
    assert all(j.state is JobState.DONE and j.server_id is not None for j in jobs)
    assert monitor.totals.remote_done == 12 and monitor.totals.unseen == 0


def test_a_job_done_for_a_job_never_seen() -> None:
    recs = records("build.icecap")
    first_done = next(decoded(r) for r in recs if isinstance(decoded(r), m.MonJobDone))
    job_id = first_done.job_id
    cut = [r for r in recs if not (isinstance(msg := decoded(r), (m.MonGetCS, m.MonJobBegin)) and msg.job_id == job_id)]
    monitor = run(cut)
    assert monitor.totals.unseen == 1 and monitor.totals.remote_done == 12
    orphan = next(j for j in monitor.finished if j.id == job_id)
    assert orphan.server_id is None and not orphan.seen_submit and orphan.state is JobState.DONE


def test_offline_ends_the_hosts_local_jobs() -> None:
    """The scheduler sends no JOB_LOCAL_DONE for a host that went away (protocol doc 8.2)."""
    recs = records("failures-local.icecap")
    link = next(i for i, r in enumerate(recs) if isinstance(msg := decoded(r), m.MonLocalJobBegin) and msg.file.endswith("prog"))
    host_id = decoded(recs[link]).host_id
    offline = FrameRecord(recs[link].t, m.encode(m.MonStats(host_id, "State:Offline\n"), 43), 43)
    monitor = run([*recs[: link + 1], offline])
    host = monitor.hosts[host_id]
    assert not host.online and not host.jobs_as_client
    ended = next(j for j in monitor.finished if j.file.endswith("prog"))
    assert ended.state is JobState.LOCAL_DONE and ended.lost


def test_reconnect_starts_over_and_totals_say_so() -> None:
    first = records("build.icecap")
    second = records("protocol-38.icecap")
    end = first[-2].t
    shifted = [r._replace(t=r.t + end) for r in second[1:-1]]
    reconnect = ConnectRecord(end, 38, 43, 38, "127.0.0.1:8765", True)
    monitor = run([*first[:-1], reconnect, *shifted])
    assert monitor.totals.resets == 1
    assert monitor.protocol == 38
    assert monitor.totals.remote_done == 12 + 3  # aggregates span the reconnect
    # Only the second connection's jobs and hosts are in the model now...
    assert all(h.last_seen >= end for h in monitor.hosts.values())
    # ...but per-host history is kept by name across the new host ids.
    by_name = {h.name: h.counters.compiled for h in monitor.hosts.values()}
    assert sum(by_name.values()) == 15


def test_a_host_id_reused_after_a_reconnect_is_a_new_host() -> None:
    stats = lambda host_id, name: FrameRecord(0.0, m.encode(m.MonStats(host_id, f"Name:{name}\nIP:10.0.0.{host_id}\nMaxJobs:4\n"), 43), 43)  # noqa: E731
    recs: list[Record] = [
        ConnectRecord(0.0, 43, 43, 44, "s:1", False),
        stats(2, "alpha"),
        FrameRecord(0.1, m.encode(m.MonGetCS(filename="a.c", job_id=1, client_id=2), 43), 43),
        ConnectRecord(1.0, 43, 43, 44, "s:1", True),
        stats(2, "beta"),
    ]
    monitor = run(recs)
    assert [h.name for h in monitor.hosts.values()] == ["beta"]
    assert not monitor.jobs  # alpha's waiting job belonged to the old scheduler
    assert monitor.host_counters["alpha"].submitted == 1 and monitor.host_counters["beta"].submitted == 0


def test_memory_stays_bounded_on_a_long_stream() -> None:
    frames = sum(isinstance(r, FrameRecord) for r in records("demo.icecap"))
    monitor = Monitor(max_finished=200)
    monitor.connected(43, 0.0)
    early, late = memory_growth(monitor, 60)
    assert monitor.totals.frames == 60 * frames
    assert monitor.totals.remote_done == 60 * 442  # aggregates keep counting
    assert len(monitor.finished) == 200
    assert len(monitor.jobs) < 50
    assert late < early * 1.2 + 200_000, (early, late)


def test_paced_replay_keeps_recorded_time_without_sleeping() -> None:
    recs = records("build.icecap")
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    out = list(paced(recs, 4.0, clock=lambda: now[0], sleep=sleep))
    assert out == recs
    assert sum(slept) == pytest.approx((recs[-1].t - recs[0].t) / 4.0)


def test_until_stops_at_the_given_time() -> None:
    recs = records("demo.icecap")
    monitor = Monitor()
    result = replay(monitor, recs, until=60.0)
    assert result.reached_until and monitor.now == 60.0
    assert all(j.submitted <= 60.0 for j in monitor.jobs.values())
    assert 0 < monitor.totals.remote_done < 442


def test_seed_api_monitor_run_over_a_connection() -> None:
    frames = [r.data for r in records("build.icecap") if isinstance(r, FrameRecord)]

    def script(sock: socket.socket) -> None:
        handshake(sock, 43)
        recv_exact(sock, 8)
        sock.sendall(b"".join(frames))

    events = Recorder()
    with ScriptedScheduler(script) as server:
        monitor = Monitor(Connection("127.0.0.1", server.port), publishers=[events])
        done = threading.Event()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                monitor.run()
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                errors.append(e)
            done.set()

        threading.Thread(target=target, daemon=True).start()
        assert done.wait(20)
    assert isinstance(errors[0], ConnectionClosed)
    assert monitor.totals.remote_done == 12
    assert sum(e.kind is EventKind.JOB_FINISHED for e in events.events) == 12


def test_a_head_scheduler_with_misnumbered_type_words_gives_the_same_model() -> None:
    """icecream master sends MON_GET_CS as 0x47 and MON_JOB_DONE as 0x4D (protocol doc 8.6)."""
    recs = records("demo.icecap")
    renumber = {0x53: 0x47, 0x55: 0x4D}

    def head(record: Record) -> Record:
        if isinstance(record, FrameRecord) and record.data[7] in renumber:
            data = record.data[:7] + bytes([renumber[record.data[7]]]) + record.data[8:]
            return record._replace(data=data)
        return record

    head_recs = [head(r) for r in recs]
    assert sum(isinstance(r, FrameRecord) and r.data[7] == 0x47 for r in head_recs) == 442
    assert run(head_recs).snapshot() == run(recs).snapshot()


def test_paced_replay_skips_the_gaps_between_files() -> None:
    """Over several files read as one, a gap (here 3 hours with nothing recorded) costs a paced
    replay GAP_PAUSE of wall time, not its length; the recorded time around it is kept."""
    from icetools.recordings import GapRecord
    from icetools.replay import GAP_PAUSE

    recs = records("build.icecap")
    last = recs[-1].t
    later = [r._replace(t=r.t + last + 3 * 3600) for r in recs]
    stream = [*recs, GapRecord(last, last + 3 * 3600), *later]
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    out = list(paced(stream, 2.0, clock=lambda: now[0], sleep=sleep))
    assert out == stream
    assert sum(slept) == pytest.approx(2 * (last - recs[0].t) / 2.0 + recs[0].t / 2.0 + GAP_PAUSE)
