"""The cluster model: one Monitor, fed by decoded messages from a live connection or a recording.

The Monitor keeps hosts, running jobs, a bounded window of finished jobs and aggregates that keep
counting however long it runs. Publishers receive change events (host added/changed/offline, job
submitted/started/finished, reset) rather than whole-state rebuilds; they read whatever else they
need from the Monitor itself.

It copes with what real schedulers do (see the real recordings and the real-cluster tests):

* jobs that began before the monitor connected (a MON_JOB_BEGIN or MON_JOB_DONE for an id it never
  saw submitted) become jobs with an unknown file and submitter;
* a scheduler reports exit code 255 with zero counters for every job of a daemon that went away:
  those jobs end as ``lost``;
* a remote compile that failed is often re-run locally by icecc: the local job is linked to it;
* ``State:Offline`` takes a host offline and ends its local jobs (no JOB_LOCAL_DONE follows);
* after a reconnect the scheduler numbers hosts and jobs from 1 again: the model starts over
  (``reset``), while the aggregates keep counting and say how many resets they span.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from . import messages as m
from .messages import Message

#: How many finished jobs the Monitor keeps by default (aggregates count them all).
DEFAULT_MAX_FINISHED = 1000
#: Active jobs beyond this are assumed lost (a monitor that missed their end) and dropped oldest
#: first, so memory stays bounded even on a stream that never ends its jobs.
MAX_ACTIVE_JOBS = 100_000
#: How long after a failed remote compile a local job of the same file counts as its re-run.
RERUN_WINDOW = 60.0
#: Failed jobs remembered for matching a local re-run (oldest forgotten first).
MAX_PENDING_RERUNS = 1000
LOST_EXIT_CODE = 255


class JobState(enum.Enum):
    WAITING = "waiting"  # requested (MON_GET_CS), no compile host has started it yet
    COMPILING = "compiling"  # MON_JOB_BEGIN seen
    DONE = "done"
    FAILED = "failed"
    LOCAL = "local"  # a local job running on its submitter
    LOCAL_DONE = "local done"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.LOCAL_DONE)


@dataclasses.dataclass(slots=True, eq=False)
class Job:
    """One compile (or local) job as the scheduler reported it."""

    id: int
    file: str = ""
    lang: int | None = None
    client_id: int | None = None  # host id of the submitter
    server_id: int | None = None  # host id of the compiling host
    state: JobState = JobState.WAITING
    local: bool = False
    submitted: float | None = None  # recording/monitor time, seconds
    started: float | None = None
    ended: float | None = None
    stime: int | None = None  # the daemon's Unix time from MON_JOB_BEGIN / MON_LOCAL_JOB_BEGIN
    exit_code: int | None = None
    real_msec: int = 0
    user_msec: int = 0
    sys_msec: int = 0
    pfaults: int = 0
    in_compressed: int = 0
    in_uncompressed: int = 0
    out_compressed: int = 0
    out_uncompressed: int = 0
    #: The scheduler reported it lost with its host (exit 255, nothing measured).
    lost: bool = False
    #: Seen from its start; False for jobs that were running when the monitor connected.
    seen_submit: bool = True
    #: For a local job: the id of the failed remote job it re-runs.
    rerun_of: int | None = None

    @property
    def failed(self) -> bool:
        return self.state is JobState.FAILED

    @property
    def duration(self) -> float | None:
        """Seconds from start (or submission) to end, on the monitor's clock."""
        begin = self.started if self.started is not None else self.submitted
        if begin is None or self.ended is None:
            return None
        return self.ended - begin

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["state"] = self.state.value
        data["lang"] = m.LANG_NAMES.get(self.lang, self.lang) if self.lang is not None else None
        return data


@dataclasses.dataclass(slots=True)
class HostCounters:
    """What a host did since the monitor started (kept across resets, by host name)."""

    compiled: int = 0  # remote jobs it compiled for others (finished as their server)
    submitted: int = 0  # remote jobs it asked for
    local: int = 0  # local jobs it ran
    failed: int = 0  # jobs it compiled that failed (lost ones included)
    lost: int = 0
    compile_msec: int = 0
    in_bytes: int = 0  # uncompressed source it received
    out_bytes: int = 0  # uncompressed objects it sent back


@dataclasses.dataclass(slots=True, eq=False)
class Host:
    id: int
    name: str = ""
    ip: str = ""
    platform: str = ""
    protocol: int | None = None  # the daemon's own (maximum) protocol, "Version:" in MON_STATS
    features: tuple[str, ...] = ()
    max_jobs: int = 0
    no_remote: bool = False
    speed: float = 0.0
    load: int = 1000
    load_avg: tuple[int, int, int] | None = None  # x1000, as sent
    free_mem: int | None = None  # MiB
    online: bool = True
    first_seen: float | None = None
    last_seen: float | None = None
    #: Ids of jobs running here as the compile host, and submitted from here.
    jobs_as_server: set[int] = dataclasses.field(default_factory=set)
    jobs_as_client: set[int] = dataclasses.field(default_factory=set)
    counters: HostCounters = dataclasses.field(default_factory=HostCounters)
    stats: dict[str, str] = dataclasses.field(default_factory=dict)
    statmsg: str = ""  # the last report as sent, to skip re-parsing an identical one

    def update(self, stats: dict[str, str]) -> None:
        """Take the keys a MON_STATS report has; every key is optional (which ones come depends
        on the scheduler's version and on what triggered the report). A malformed number keeps
        the previous value."""
        self.stats = stats
        get = stats.get
        if (v := get("Name")) is not None:
            self.name = v
        if (v := get("IP")) is not None:
            self.ip = v
        if (v := get("Platform")) is not None:
            self.platform = v
        if (v := get("Features")) is not None:
            self.features = () if v in ("", "--") else tuple(v.split())
        if (v := get("NoRemote")) is not None:
            self.no_remote = v == "true"
        try:
            if (v := get("Load")) is not None:
                self.load = int(v)
            if (v := get("MaxJobs")) is not None:
                self.max_jobs = int(v)
            if (v := get("Speed")) is not None:
                self.speed = float(v)
            if (v := get("Version")) is not None:
                self.protocol = int(v)
            if (v := get("FreeMem")) is not None:
                self.free_mem = int(v)
            if (v := get("LoadAvg1")) is not None:
                self.load_avg = (int(v), int(get("LoadAvg5", 0)), int(get("LoadAvg10", 0)))
        except ValueError:
            pass

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ip": self.ip,
            "platform": self.platform,
            "protocol": self.protocol,
            "features": list(self.features),
            "max_jobs": self.max_jobs,
            "no_remote": self.no_remote,
            "speed": self.speed,
            "load": self.load,
            "load_avg": list(self.load_avg) if self.load_avg else None,
            "free_mem": self.free_mem,
            "online": self.online,
            "jobs_as_server": len(self.jobs_as_server),
            "jobs_as_client": len(self.jobs_as_client),
            "counters": dataclasses.asdict(self.counters),
        }


@dataclasses.dataclass(slots=True)
class Totals:
    """Cluster-wide aggregates since the Monitor started, across resets."""

    frames: int = 0
    submitted: int = 0  # remote job requests (MON_GET_CS)
    remote_done: int = 0  # remote jobs that ended, successfully or not
    remote_failed: int = 0
    lost: int = 0  # failed because their host went away
    local_started: int = 0
    local_done: int = 0
    reruns: int = 0  # failed remote jobs re-run locally
    unseen: int = 0  # jobs that ended without the monitor having seen them start
    resets: int = 0  # reconnects: the model started over this many times
    in_bytes: int = 0
    out_bytes: int = 0
    compile_msec: int = 0


# ---- events ---------------------------------------------------------------------------------


class EventKind(enum.Enum):
    HOST_ADDED = "host added"
    HOST_CHANGED = "host changed"
    HOST_OFFLINE = "host offline"
    JOB_SUBMITTED = "job submitted"
    JOB_STARTED = "job started"
    JOB_FINISHED = "job finished"
    RESET = "reset"  # reconnected: hosts and jobs start over


# Plain module names for the hot paths (an enum member looked up on its class costs more).
_HOST_CHANGED = EventKind.HOST_CHANGED
_HOST_OFFLINE = EventKind.HOST_OFFLINE
_JOB_FINISHED = EventKind.JOB_FINISHED
_JOB_STARTED = EventKind.JOB_STARTED
_JOB_SUBMITTED = EventKind.JOB_SUBMITTED
_RESET = EventKind.RESET


class Event(NamedTuple):
    """A change in the cluster. ``host``/``job`` are the live objects (read them at once or
    copy what you keep: they go on changing)."""

    kind: EventKind
    t: float
    host: Host | None = None
    job: Job | None = None


class Publisher:
    """Receives the Monitor's change events. Subclass and override :meth:`publish`.

    ``kinds`` narrows what it receives (None: every kind); a Monitor whose publishers want no
    event of a kind does not even build those events.
    """

    kinds: frozenset[EventKind] | None = None

    def publish(self, event: Event, monitor: Monitor) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ---- the monitor ------------------------------------------------------------------------------


class Monitor:
    """The cluster model.

    Feed it with :meth:`feed` (a decoded message and its time), :meth:`connected` and
    :meth:`disconnected`; or, as in pyicemon, give it a connection and call :meth:`run`::

        Monitor(Connection(host, port)).run()      # or Monitor(host, port).run()

    ``max_finished`` bounds how many finished jobs are kept for inspection.
    """

    def __init__(
        self,
        connection: Any = None,
        port: int | None = None,
        *,
        max_finished: int = DEFAULT_MAX_FINISHED,
        publishers: Iterable[Publisher] = (),
    ) -> None:
        self._connection = connection
        self._port = port
        self.hosts: dict[int, Host] = {}
        self.jobs: dict[int, Job] = {}  # active (not finished) jobs
        self.finished: deque[Job] = deque(maxlen=max_finished)
        self.totals = Totals()
        #: Per host *name* (host ids change when a daemon logs in again).
        self.host_counters: dict[str, HostCounters] = {}
        self.publishers: list[Publisher] = list(publishers)
        self._wanted: frozenset[EventKind] = frozenset()
        self._update_wanted()
        #: Host name -> its latest host id (a daemon that logs in again gets a new one).
        self.host_ids: dict[str, int] = {}
        self.protocol: int | None = None
        self.connected_since: float | None = None
        self.is_connected = False
        self.now = 0.0
        self._failed_for_rerun: dict[tuple[int | None, str], tuple[int, float]] = {}
        #: Message class -> handler (HEAD's misnumbered variants included).
        self.handlers: dict[type[Message], Callable[[Any, float], None]] = {
            m.MonStats: self._on_stats,
            m.MonGetCS: self._on_get_cs,
            m.MonGetCSHead: self._on_get_cs,
            m.MonJobBegin: self._on_job_begin,
            m.MonJobDone: self._on_job_done,
            m.MonJobDoneHead: self._on_job_done,
            m.MonLocalJobBegin: self._on_local_begin,
            m.JobLocalDone: self._on_local_done,
        }

    # -- publishers -----------------------------------------------------------------------

    def add_publisher(self, publisher: Publisher) -> None:
        self.publishers.append(publisher)
        self._update_wanted()

    def _update_wanted(self) -> None:
        wanted: set[EventKind] = set()
        for publisher in self.publishers:
            wanted |= set(EventKind) if publisher.kinds is None else publisher.kinds
        self._wanted = frozenset(wanted)

    def _emit(self, kind: EventKind, t: float, host: Host | None = None, job: Job | None = None) -> None:
        event = tuple.__new__(Event, (kind, t, host, job))
        for publisher in self.publishers:
            if publisher.kinds is None or kind in publisher.kinds:
                publisher.publish(event, self)

    # -- input ----------------------------------------------------------------------------

    def connected(self, protocol: int, t: float) -> None:
        """A (re)connection to a scheduler: a reconnect starts the model over."""
        if self.connected_since is not None:
            self.reset(t)
        self.protocol = protocol
        self.connected_since = t
        self.is_connected = True
        self.now = t

    def disconnected(self, t: float) -> None:
        self.is_connected = False
        self.now = t

    def reset(self, t: float) -> None:
        """Forget hosts and jobs (a new scheduler numbers them from 1 again); keep aggregates."""
        self.hosts.clear()
        self.jobs.clear()
        self._failed_for_rerun.clear()
        self.totals.resets += 1
        if _RESET in self._wanted:
            self._emit(EventKind.RESET, t)

    def feed(self, msg: Message, t: float) -> None:
        """Apply one message that arrived at time ``t`` (seconds)."""
        self.totals.frames += 1
        self.now = t
        handler = self.handlers.get(type(msg))
        if handler is not None:
            handler(msg, t)

    # -- handlers -------------------------------------------------------------------------

    def _host(self, host_id: int | None, t: float) -> Host | None:
        """The host with ``host_id``, created (unnamed) if a job names one we never saw."""
        if host_id is None:
            return None
        host = self.hosts.get(host_id)
        if host is None:
            host = Host(host_id, first_seen=t, last_seen=t)
            self.hosts[host_id] = host
        return host

    def _counters(self, host: Host) -> HostCounters:
        """Counters are kept per host name so that a daemon's new host id continues its history."""
        if not host.name:
            return host.counters
        counters = self.host_counters.get(host.name)
        if counters is None:
            counters = self.host_counters[host.name] = host.counters
        elif counters is not host.counters:
            host.counters = counters
        return counters

    def _on_stats(self, msg: m.MonStats, t: float) -> None:
        host = self.hosts.get(msg.host_id)
        if msg.statmsg.startswith("State:Offline"):
            if host is None:
                return
            host.online = False
            host.last_seen = t
            # The scheduler ends the host's remote jobs (exit 255), but not its local jobs.
            for job_id in [j for j in host.jobs_as_client if j in self.jobs and self.jobs[j].local]:
                self._finish_local(self.jobs[job_id], t, lost=True)
            if _HOST_OFFLINE in self._wanted:
                self._emit(EventKind.HOST_OFFLINE, t, host=host)
            return
        added = host is None
        if host is None:
            host = Host(msg.host_id, first_seen=t)
            self.hosts[msg.host_id] = host
        elif msg.statmsg == host.statmsg and host.online:
            host.last_seen = t  # the same report again (every monitor login repeats them all)
            if _HOST_CHANGED in self._wanted:
                self._emit(EventKind.HOST_CHANGED, t, host=host)
            return
        host.statmsg = msg.statmsg
        host.update(m.parse_statmsg(msg.statmsg))
        host.online = True
        host.last_seen = t
        self._counters(host)
        if host.name:
            self.host_ids[host.name] = host.id
        if added and host.name:
            # A daemon that logged in again gets a new id; its old, offline entry is replaced.
            for old in [h for h in self.hosts.values() if h.name == host.name and not h.online]:
                del self.hosts[old.id]
        if self._wanted:
            self._emit(EventKind.HOST_ADDED if added else EventKind.HOST_CHANGED, t, host=host)

    def _add_job(self, job: Job) -> None:
        jobs = self.jobs
        jobs[job.id] = job
        if len(jobs) > MAX_ACTIVE_JOBS:
            oldest = next(iter(jobs))
            self._drop(jobs.pop(oldest))

    def _drop(self, job: Job) -> None:
        for host_id, ids in ((job.server_id, "jobs_as_server"), (job.client_id, "jobs_as_client")):
            host = self.hosts.get(host_id) if host_id is not None else None
            if host is not None:
                getattr(host, ids).discard(job.id)

    def _on_get_cs(self, msg: m.MonGetCS, t: float) -> None:
        job = Job(msg.job_id, msg.filename, msg.lang, msg.client_id, submitted=t)
        self._add_job(job)
        self.totals.submitted += 1
        client = self._host(msg.client_id, t)
        if client is not None:
            client.jobs_as_client.add(job.id)
            client.counters.submitted += 1
        if _JOB_SUBMITTED in self._wanted:
            self._emit(EventKind.JOB_SUBMITTED, t, job=job)

    def _on_job_begin(self, msg: m.MonJobBegin, t: float) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            # Submitted before we connected.
            job = Job(msg.job_id, seen_submit=False)
            self._add_job(job)
        job.state = JobState.COMPILING
        job.server_id = msg.host_id
        job.started = t
        job.stime = msg.stime
        server = self._host(msg.host_id, t)
        if server is not None:
            server.jobs_as_server.add(job.id)
        if _JOB_STARTED in self._wanted:
            self._emit(EventKind.JOB_STARTED, t, job=job)

    def _on_job_done(self, msg: m.MonJobDone, t: float) -> None:
        job = self.jobs.pop(msg.job_id, None)
        totals = self.totals
        if job is None:
            job = Job(msg.job_id, seen_submit=False)
            totals.unseen += 1
        job.ended = t
        code = job.exit_code = msg.exitcode
        job.real_msec = msg.real_msec
        job.user_msec = msg.user_msec
        job.sys_msec = msg.sys_msec
        job.pfaults = msg.pfaults
        job.in_compressed = msg.in_compressed
        job.in_uncompressed = msg.in_uncompressed
        job.out_compressed = msg.out_compressed
        job.out_uncompressed = msg.out_uncompressed
        totals.remote_done += 1
        totals.in_bytes += msg.in_uncompressed
        totals.out_bytes += msg.out_uncompressed
        totals.compile_msec += msg.real_msec
        if code == 0:
            job.state = JobState.DONE
        else:
            job.state = JobState.FAILED
            totals.remote_failed += 1
            if code == LOST_EXIT_CODE and not msg.real_msec and not msg.in_uncompressed:
                job.lost = True
                totals.lost += 1
            elif job.file:
                pending = self._failed_for_rerun
                pending[(job.client_id, _stem(job.file))] = (job.id, t)
                if len(pending) > MAX_PENDING_RERUNS:
                    del pending[next(iter(pending))]
        hosts = self.hosts
        server = hosts.get(job.server_id) if job.server_id is not None else None
        if server is not None:
            server.jobs_as_server.discard(job.id)
            counters = server.counters
            counters.compiled += 1
            counters.compile_msec += msg.real_msec
            counters.in_bytes += msg.in_uncompressed
            counters.out_bytes += msg.out_uncompressed
            if code != 0:
                counters.failed += 1
                if job.lost:
                    counters.lost += 1
        client = hosts.get(job.client_id) if job.client_id is not None else None
        if client is not None:
            client.jobs_as_client.discard(job.id)
        self.finished.append(job)
        if _JOB_FINISHED in self._wanted:
            self._emit(EventKind.JOB_FINISHED, t, job=job)

    def _on_local_begin(self, msg: m.MonLocalJobBegin, t: float) -> None:
        job = Job(
            msg.job_id, msg.file, None, msg.host_id, msg.host_id, JobState.LOCAL, True,
            submitted=t, started=t, stime=msg.stime,
        )
        self._add_job(job)
        self.totals.local_started += 1
        host = self._host(msg.host_id, t)
        if host is not None:
            host.jobs_as_client.add(job.id)
            host.counters.local += 1
        if self._failed_for_rerun and msg.file:
            key = (msg.host_id, _stem(msg.file))
            failed = self._failed_for_rerun.pop(key, None)
            if failed is not None and t - failed[1] <= RERUN_WINDOW:
                job.rerun_of = failed[0]
                self.totals.reruns += 1
        if _JOB_STARTED in self._wanted:
            self._emit(EventKind.JOB_STARTED, t, job=job)

    def _on_local_done(self, msg: m.JobLocalDone, t: float) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None or not job.local:
            self.totals.unseen += 1
            return
        self._finish_local(job, t)

    def _finish_local(self, job: Job, t: float, *, lost: bool = False) -> None:
        del self.jobs[job.id]
        job.state = JobState.LOCAL_DONE
        job.ended = t
        job.lost = lost
        self.totals.local_done += 1
        host = self.hosts.get(job.client_id) if job.client_id is not None else None
        if host is not None:
            host.jobs_as_client.discard(job.id)
        self.finished.append(job)
        if _JOB_FINISHED in self._wanted:
            self._emit(EventKind.JOB_FINISHED, t, job=job)

    # -- checkpoints (icetools.index) -----------------------------------------------------

    _STATE = (
        "hosts", "jobs", "finished", "totals", "host_counters", "host_ids", "protocol",
        "connected_since", "is_connected", "now", "_failed_for_rerun",
    )

    def export_state(self) -> tuple[Any, ...]:
        """Everything but the publishers, for a checkpoint (pickle it; it shares live objects)."""
        return tuple(getattr(self, name) for name in self._STATE)

    def import_state(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self._STATE, state, strict=True):
            setattr(self, name, value)

    # -- reading the state ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (what `replay --json` prints)."""
        totals = dataclasses.asdict(self.totals)
        running = [j for j in self.jobs.values() if j.state is not JobState.WAITING]
        return {
            "t": round(self.now, 6),
            "connected": self.is_connected,
            "protocol": self.protocol,
            "hosts": [h.to_json() for h in sorted(self.hosts.values(), key=lambda h: h.id)],
            "jobs": {
                "waiting": sum(1 for j in self.jobs.values() if j.state is JobState.WAITING),
                "running": len(running),
                "active": [j.to_json() for j in sorted(self.jobs.values(), key=lambda j: j.id)],
                "recent": [j.to_json() for j in list(self.finished)[-20:]],
            },
            "totals": totals,
        }

    # -- pyicemon's blocking loop ---------------------------------------------------------

    def run(self) -> None:
        """Connect if needed, log in as a monitor and apply messages forever (pyicemon API)."""
        from .connection import Connection

        conn = self._connection
        if isinstance(conn, str):
            conn = Connection(conn, self._port or 8765)
        if conn is None:
            raise TypeError("Monitor.run() needs a Connection or a host and port")
        conn.login()
        clock = time.monotonic
        t0 = clock()
        self.connected(conn.protocol, 0.0)
        while True:
            msg = conn.get_message()
            self.feed(msg, clock() - t0)


def _stem(path: str) -> str:
    """The file name without folder and extension: what links `x/foo.c` and `/abs/x/foo.o`."""
    name = path.rsplit("/", 1)[-1]
    return os.path.splitext(name)[0]
