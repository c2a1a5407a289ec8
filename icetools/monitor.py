"""The cluster model: one Monitor, fed by decoded messages from a live connection or a recording.

The Monitor keeps hosts, running jobs, a bounded window of finished jobs and aggregates that keep
counting however long it runs (per host: jobs, failures, bytes and a histogram of compile times;
for the cluster: totals, the peak of jobs per second, the slowest compiles), in memory that does
not grow with the number of jobs. Publishers receive change events (host added/changed/offline,
job submitted/started/finished, reset) rather than whole-state rebuilds; they read whatever else
they need from the Monitor itself.

A busy cluster sends a frame every few microseconds of replay, so the handlers are written for
speed (see bench/README.md): they unpack messages by position, jobs are plain instances, events
nobody listens to are not built, and hosts apply their load reports only when read.

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
import heapq
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from . import messages as m
from .messages import Message, parse_statmsg

#: How many finished jobs the Monitor keeps by default (aggregates count them all).
DEFAULT_MAX_FINISHED = 1000
#: Active jobs beyond this are assumed lost (a monitor that missed their end) and dropped oldest
#: first, so memory stays bounded even on a stream that never ends its jobs.
MAX_ACTIVE_JOBS = 100_000
#: How long after a failed remote compile a local job of the same file counts as its re-run.
RERUN_WINDOW = 60.0
#: Failed jobs remembered for matching a local re-run (oldest forgotten first).
MAX_PENDING_RERUNS = 1000
#: How many of the slowest compiles the Monitor keeps.
SLOWEST_JOBS = 10
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


@dataclasses.dataclass(eq=False, init=False)
class Job:
    """One compile (or local) job as the scheduler reported it.

    Not slotted, on purpose: a busy cluster makes a job per frame or so, and a plain instance
    sets only what its start says (defaults stay on the class), in under half the time of a
    24-field ``__init__``. Memory is bounded by the Monitor's job limits, not by this.
    """

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

    def __init__(
        self,
        id: int,
        file: str = "",
        lang: int | None = None,
        client_id: int | None = None,
        submitted: float | None = None,
    ) -> None:
        # What a job's submission says; everything else is set as it happens.
        self.id = id
        self.file = file
        self.lang = lang
        self.client_id = client_id
        self.submitted = submitted

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
        data = {name: getattr(self, name) for name in _JOB_FIELD_ORDER}
        data["state"] = self.state.value
        data["lang"] = m.LANG_NAMES.get(self.lang, self.lang) if self.lang is not None else None
        return data


_JOB_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(Job))


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
    #: Compile time in ms -> how many of its compiles took that long (lost jobs left out): exact
    #: means and percentiles, in memory that grows with the distinct times, not with the jobs.
    compile_times: dict[int, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        return {
            "compiled": self.compiled,
            "submitted": self.submitted,
            "local": self.local,
            "failed": self.failed,
            "lost": self.lost,
            "compile_msec": self.compile_msec,
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
        }


@dataclasses.dataclass(slots=True, eq=False)
class Host:
    """A daemon of the cluster. ``ip``, ``platform``, ``protocol`` (the daemon's own maximum,
    "Version:"), ``features``, ``max_jobs``, ``no_remote``, ``speed``, ``load``, ``load_avg``
    (x1000, as sent) and ``free_mem`` (MiB) come from its MON_STATS reports and are read through
    properties: reports arrive by the thousand and most are superseded before anyone looks, so
    the values of the last ones are only worked out when read (see :meth:`report`)."""

    id: int
    name: str = ""
    _ip: str = ""
    _platform: str = ""
    _protocol: int | None = None
    _features: tuple[str, ...] = ()
    _max_jobs: int = 0
    _no_remote: bool = False
    _speed: float = 0.0
    _load: int = 1000
    _load_avg: tuple[int, int, int] | None = None
    _free_mem: int | None = None
    online: bool = True
    first_seen: float | None = None
    last_seen: float | None = None
    #: Ids of jobs running here as the compile host, and submitted from here.
    jobs_as_server: set[int] = dataclasses.field(default_factory=set)
    jobs_as_client: set[int] = dataclasses.field(default_factory=set)
    counters: HostCounters = dataclasses.field(default_factory=HostCounters)
    statmsg: str = ""  # the last report as sent
    #: The lines this host's reports have kept unchanged (None: not known yet), and the shapes
    #: of the lines after them seen lately (see :meth:`report`).
    _prefix: str | None = dataclasses.field(default=None, repr=False)
    _prefix_keys: frozenset[str] = dataclasses.field(default=frozenset(), repr=False)
    _shapes: list[_Shape] = dataclasses.field(default_factory=list, repr=False)
    #: Reports read but not applied yet, in order: (shape, lines after the prefix). None of them
    #: has only keys that a later one has too (that one would supersede it).
    _pending: list[tuple[_Shape, str]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def stats(self) -> dict[str, str]:
        """The last report's ``Key:Value`` pairs, unknown keys included."""
        return parse_statmsg(self.statmsg)

    def report(self, statmsg: str) -> None:
        """Take a MON_STATS report. A host's reports repeat their first lines (name, address,
        limits, features) and change only the last few (speed, load, memory); so once two
        reports have shown which lines stay, only the lines after them are read, by a regex of
        their shape (:class:`_Shape`). Those are not even applied until a field is read: a
        report whose keys a later one has too is simply dropped. The values read are exactly
        those of :meth:`update` with every whole report in turn: the skipped lines are the same
        text the host was already updated from, and a missing key keeps its previous value."""
        prefix = self._prefix
        if prefix is not None and statmsg.startswith(prefix):
            tail = statmsg[len(prefix) :]
            for shape in self._shapes:
                if shape.fullmatch(tail) is not None:
                    self.statmsg = statmsg
                    pending = self._pending
                    if shape.sets_name:  # the Monitor needs the name at once
                        if pending:
                            self._apply_pending()
                        shape.apply(self, *shape.fullmatch(tail).groups())
                    elif not pending:
                        pending.append((shape, tail))
                    elif len(pending) == 1 and pending[0][0].keyset <= shape.keyset:
                        pending[0] = (shape, tail)
                    else:
                        pending[:] = [p for p in pending if not p[0].keyset <= shape.keyset]
                        pending.append((shape, tail))
                    return
            stats = parse_statmsg(tail)
            if not self._prefix_keys.isdisjoint(stats):
                # A key of the stable lines comes again after them (see below): only a whole
                # parse is exact for such reports.
                self._prefix = None
                stats = parse_statmsg(statmsg)
            elif (shape := _shape_of(tail, stats)) is not None and shape not in self._shapes:
                self._shapes.insert(0, shape)
                del self._shapes[MAX_SHAPES:]
        else:
            stats = parse_statmsg(statmsg)
            if self.statmsg:
                prefix = _common_lines(self.statmsg, statmsg)
                prefix_keys = frozenset(parse_statmsg(prefix))
                # Skipping the stable lines is exact only if no key of theirs comes again after
                # them (the later value wins); icecream never does that.
                if prefix_keys.isdisjoint(parse_statmsg(statmsg[len(prefix) :])):
                    self._prefix, self._prefix_keys = prefix, prefix_keys
                else:
                    self._prefix = None
                self._shapes.clear()
        self.update(stats)
        self.statmsg = statmsg

    def update(self, stats: Mapping[str, str]) -> None:
        """Take the keys a MON_STATS report has; every key is optional (which ones come depends
        on the scheduler's version and on what triggered the report). A malformed number keeps
        the previous value; unknown keys are only kept in :attr:`statmsg`."""
        if self._pending:
            self._apply_pending()
        _applier(tuple(stats))(self, *stats.values())

    def remote_slots(self) -> int:
        """How many remote jobs the host accepts (MaxJobs, 0 with NoRemote), read without
        applying pending reports unless one of them sets those keys (most only change the load):
        for readers that ask at every report."""
        for shape, _ in self._pending:
            if not _SLOT_KEYS.isdisjoint(shape.keyset):
                self._apply_pending()
                break
        return 0 if self._no_remote else max(0, self._max_jobs)

    def reported_load(self) -> int:
        """:attr:`load`, read without applying pending reports: only their ``Load`` line is
        looked at (the last report with one holds it), for readers that ask at every report
        (``trace``'s load counter). A malformed value applies them all, which is exact."""
        pending = self._pending
        for i in range(len(pending) - 1, -1, -1):
            shape, tail = pending[i]
            line = shape.load_line
            if line < 0:
                continue
            text = tail[5 : tail.index("\n")] if line == 0 else tail.split("\n", line + 1)[line][5:]
            try:
                return int(text)
            except ValueError:
                self._apply_pending()
                break
        return self._load

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        for shape, tail in pending:
            shape.apply(self, *shape.fullmatch(tail).groups())  # type: ignore[union-attr]

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
            "counters": self.counters.to_json(),
        }


def _reported(name: str) -> property:
    """The public face of the Host slot ``_name``: applies pending reports first."""
    slot = Host.__dict__["_" + name]
    get, put = slot.__get__, slot.__set__

    def getter(self: Host) -> Any:
        if self._pending:
            self._apply_pending()
        return get(self)

    def setter(self: Host, value: Any) -> None:
        if self._pending:
            self._apply_pending()
        put(self, value)

    return property(getter, setter)


for _name in (
    "ip", "platform", "protocol", "features", "max_jobs", "no_remote", "speed", "load", "load_avg",
    "free_mem",
):
    setattr(Host, _name, _reported(_name))


#: How each known MON_STATS key updates a host: a statement, or (attribute, conversion) for
#: numbers, which keep their previous value when malformed. LoadAvg1/5/10 make one tuple.
_STAT_KEYS: dict[str, str | tuple[str, str]] = {
    "Name": "host.name = {v}",
    "IP": "host._ip = {v}",
    "Platform": "host._platform = {v}",
    "Features": "host._features = () if {v} in ('', '--') else tuple({v}.split())",
    "NoRemote": "host._no_remote = {v} == 'true'",
    "Load": ("_load", "int"),
    "MaxJobs": ("_max_jobs", "int"),
    "Speed": ("_speed", "_finite_float"),
    "Version": ("_protocol", "int"),
    "FreeMem": ("_free_mem", "int"),
}
_LOAD_AVG_KEYS = ("LoadAvg1", "LoadAvg5", "LoadAvg10")


def _finite_float(text: str) -> float:
    """A reported number that JSON can carry: "inf" or "nan" (or "1e400") is malformed."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


_APPLIERS: dict[tuple[str, ...], Callable[..., None]] = {}


def _applier(keys: tuple[str, ...]) -> Callable[..., None]:
    """``apply(host, *values)`` for reports with exactly these keys, in this order: generated
    once per set of keys (a report has a handful of shapes), so that applying one is straight-line
    code rather than a look-up per known key."""
    apply = _APPLIERS.get(keys)
    if apply is not None:
        return apply
    names = [f"v{i}" for i in range(len(keys))]
    lines = [f"def apply(host{''.join(', ' + n for n in names)}):", "    pass"]
    for key, v in zip(keys, names):
        code = _STAT_KEYS.get(key)
        if isinstance(code, str):
            lines.append("    " + code.format(v=v))
        elif code is not None:
            attr, convert = code
            lines += ["    try:", f"        host.{attr} = {convert}({v})", "    except ValueError:", "        pass"]
    if any(key in keys for key in _LOAD_AVG_KEYS):
        lines.append("    old = host._load_avg or (0, 0, 0)")
        for i, key in enumerate(_LOAD_AVG_KEYS):
            if key in keys:
                v = names[keys.index(key)]
                lines += ["    try:", f"        a{i} = int({v})", "    except ValueError:", f"        a{i} = old[{i}]"]
            else:
                lines.append(f"    a{i} = old[{i}]")
        lines.append("    host._load_avg = (a0, a1, a2)")
    namespace: dict[str, Any] = {"_finite_float": _finite_float}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from our own table; keys are only compared
    apply = namespace["apply"]
    if len(_APPLIERS) >= 1024:  # a stream of ever new keys: forget rather than grow
        _APPLIERS.clear()
    _APPLIERS[keys] = apply
    return apply


#: The report keys that say how many remote jobs a host accepts (Host.remote_slots).
_SLOT_KEYS = frozenset({"MaxJobs", "NoRemote"})

#: Report shapes a host remembers (icecream sends two: with and without load averages).
MAX_SHAPES = 4


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """The keys of the changing lines of a report, in order, and a regex matching exactly such
    lines: for a text it matches, ``dict(zip(keys, groups))`` is what :func:`parse_statmsg`
    returns, in a fifth of the time."""

    keys: tuple[str, ...]
    fullmatch: Callable[[str], re.Match[str] | None]
    apply: Callable[..., None]  # apply(host, *groups)
    keyset: frozenset[str]
    sets_name: bool
    load_line: int  # the index of the "Load" line (-1: none), for Host.reported_load

    def __reduce__(self) -> tuple[Any, ...]:
        return _shape_for, (self.keys,)  # (for checkpoints) rebuilt from its keys


def _shape_for(keys: tuple[str, ...]) -> _Shape:
    shape = _SHAPES.get(keys)
    if shape is None:
        pattern = "".join(f"{re.escape(key)}:({_VALUE_PATTERNS.get(key, _ANY_VALUE)})\n" for key in keys)
        if len(_SHAPES) >= 1024:  # a stream of ever new keys: forget rather than grow
            _SHAPES.clear()
        shape = _SHAPES[keys] = _Shape(
            keys, re.compile(pattern).fullmatch, _applier(keys), frozenset(keys), "Name" in keys,
            keys.index("Load") if "Load" in keys else -1,
        )
    return shape


_SHAPES: dict[tuple[str, ...], _Shape] = {}

_ANY_VALUE = r"[^\n]*"
#: What a shape matches for the numbers of a report: only values their conversion takes. A
#: report with another value (malformed: the number keeps its previous value) does not match
#: its shape and is applied whole, at once; matched, it could supersede a pending report whose
#: value it would then have to fall back to.
_INT_VALUE = r"-?[0-9]{1,18}"
_VALUE_PATTERNS = {
    **{key: _INT_VALUE for key in ("Load", "MaxJobs", "Version", "FreeMem", *_LOAD_AVG_KEYS)},
    "Speed": r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?",
}


def _shape_of(text: str, stats: dict[str, str]) -> _Shape | None:
    """The shape of ``text`` (``stats`` is its parse), or None when a regex would not read it
    exactly as parse_statmsg does (a key twice, a line without ':', no final newline)."""
    keys = tuple(stats)
    if not text.endswith("\n") or text.count("\n") != len(keys) or "\n\n" in text:
        return None
    if any("\n" in key for key in keys):
        return None
    return _shape_for(keys)


def _common_lines(a: str, b: str) -> str:
    """The longest run of whole lines (each ending in a newline) that ``a`` and ``b`` start with."""
    n = 0
    for x, y in zip(a.split("\n")[:-1], b.split("\n")[:-1]):
        if x != y:
            break
        n += len(x) + 1
    return a[:n]


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
    #: Most jobs (remote and local) that finished within one whole second, and that second
    #: (the first, on a tie).
    peak_jobs_per_second: int = 0
    peak_second: int | None = None
    #: When the first host turned up: where the story of a recording starts.
    first_host_seen: float | None = None


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
_HOST_ADDED = EventKind.HOST_ADDED
_HOST_CHANGED = EventKind.HOST_CHANGED
_HOST_OFFLINE = EventKind.HOST_OFFLINE
_JOB_FINISHED = EventKind.JOB_FINISHED
_JOB_STARTED = EventKind.JOB_STARTED
_JOB_SUBMITTED = EventKind.JOB_SUBMITTED
_RESET = EventKind.RESET
_COMPILING = JobState.COMPILING
_DONE = JobState.DONE
_FAILED = JobState.FAILED


_new_tuple = tuple.__new__  # builds an Event without NamedTuple's Python-level __new__


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

    def receiver(self, kind: EventKind) -> Callable[[Event, Monitor], None] | None:
        """What the Monitor calls with the events of ``kind`` (None: it wants none of them).

        :meth:`publish` for the kinds in ``kinds``. A publisher that receives events from
        nearly every frame can return one method per kind instead, so that it does not test
        the kind again on each event the Monitor has already told apart."""
        if self.kinds is None or kind in self.kinds:
            return self.publish
        return None


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
        #: Attach publishers with :meth:`add_publisher` (it works out who receives which events).
        self.publishers: list[Publisher] = list(publishers)
        self._update_routes()
        #: Host name -> its latest host id (a daemon that logs in again gets a new one).
        self.host_ids: dict[str, int] = {}
        self.protocol: int | None = None
        self.connected_since: float | None = None
        self.is_connected = False
        self.now = 0.0
        self._failed_for_rerun: dict[tuple[int | None, str], tuple[int, float]] = {}
        #: The counts at the last connect (see carried_settled).
        self._carried_mark: tuple[Any, ...] | None = None
        #: The slowest remote compiles so far, a min-heap of (real ms, job id, file, host name).
        self.slowest: list[tuple[int, int, str, str]] = []
        self._second = -1  # the whole second whose finished jobs are being counted, and how many
        self._in_second = 0
        #: Message class -> handler (HEAD's misnumbered variants included). A handler takes
        #: the message or the plain tuple of its field values, and the time.
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
        self._update_routes()

    def _update_routes(self) -> None:
        """Who receives each kind of event, as one tuple of receivers (see
        :meth:`Publisher.receiver`) per kind in a plain attribute: the handlers test it for emptiness (an enum in a set would cost a
        Python-level hash per frame) and build no event nobody wants."""
        routes = {
            kind: tuple(r for p in self.publishers if (r := p.receiver(kind)) is not None)
            for kind in EventKind
        }
        self._to_host_added = routes[EventKind.HOST_ADDED]
        self._to_host_changed = routes[EventKind.HOST_CHANGED]
        self._to_host_offline = routes[EventKind.HOST_OFFLINE]
        self._to_job_submitted = routes[EventKind.JOB_SUBMITTED]
        self._to_job_started = routes[EventKind.JOB_STARTED]
        self._to_job_finished = routes[EventKind.JOB_FINISHED]
        self._to_reset = routes[EventKind.RESET]

    def _emit(
        self,
        to: tuple[Callable[[Event, Monitor], None], ...],
        kind: EventKind,
        t: float,
        host: Host | None = None,
        job: Job | None = None,
    ) -> None:
        event = _new_tuple(Event, (kind, t, host, job))
        for publish in to:
            publish(event, self)

    # -- input ----------------------------------------------------------------------------

    def connected(self, protocol: int, t: float) -> None:
        """A (re)connection to a scheduler: a reconnect starts the model over."""
        if self.connected_since is not None:
            self.reset(t)
        self.protocol = protocol
        self.connected_since = t
        self.is_connected = True
        self.now = t
        # What the file's carried frames (if any follow) will be measured against: see
        # carried_settled. (Once a connection: a few counters per host name.)
        tot = self.totals
        self._carried_mark = (
            tot.submitted, tot.local_started, tot.reruns, tot.first_host_seen,
            {name: (c.submitted, c.local) for name, c in self.host_counters.items()},
        )
        for publisher in self.publishers:
            mark = getattr(publisher, "carried_mark", None)
            if mark is not None:
                mark(t)

    def carried_settled(self, t: float) -> None:
        """A file's carried frames (format 2: the state the scheduler had given before the file
        began, applied at the times they were really received) are all applied; ``t`` is the
        file's first connect record. They are the state at the file's start, not events of the
        file (docs/analysis.md, "Carried frames"): the requests and local jobs they repeat are not
        counted again as jobs (totals and host counters go back to what they were at the
        connect), the first host is seen no earlier than ``t``, and the publishers that measure
        time (WhyAnalysis) count nothing before ``t``. The readers call it once, after the last
        carried frame (pump's ``on_settled``; :func:`icetools.replay.replay`)."""
        mark = self._carried_mark
        if mark is None:
            return
        self._carried_mark = None
        submitted, local, reruns, first, names = mark
        tot = self.totals
        tot.submitted, tot.local_started, tot.reruns = submitted, local, reruns
        if first is None and tot.first_host_seen is not None and tot.first_host_seen < t:
            tot.first_host_seen = t
        for name, c in self.host_counters.items():
            c.submitted, c.local = names.get(name, (0, 0))
        for host in self.hosts.values():
            if not host.name:  # (known by id only: all its counts came with the carried frames)
                host.counters.submitted = host.counters.local = 0
        for publisher in self.publishers:
            settled = getattr(publisher, "carried_settled", None)
            if settled is not None:
                settled(t, self)

    def disconnected(self, t: float) -> None:
        self.is_connected = False
        self.now = t

    def reset(self, t: float) -> None:
        """Forget hosts and jobs (a new scheduler numbers them from 1 again); keep aggregates."""
        self.totals.resets += 1
        self._forget(t)

    def _forget(self, t: float) -> None:
        self.hosts.clear()
        self.jobs.clear()
        self._failed_for_rerun.clear()
        if self._to_reset:
            self._emit(self._to_reset, _RESET, t)

    def gap(self, t: float) -> None:
        """Nothing was recorded from ``t`` on (between two files of a recording that do not
        continue each other, see icetools.recordings): what the cluster did meanwhile is
        unknown, so the model forgets hosts and jobs at ``t`` (publishers see a reset there, not
        hours later at the next connect, which then starts afresh). Not counted as a reconnect."""
        self.is_connected = False
        if self.connected_since is not None:
            self._forget(t)
            self.connected_since = None
        self.now = t

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
            if self.totals.first_host_seen is None:
                self.totals.first_host_seen = t
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
        host_id, statmsg = msg
        host = self.hosts.get(host_id)
        if statmsg.startswith("State:Offline"):
            if host is None:
                return
            host.online = False
            host.last_seen = t
            # The scheduler ends the host's remote jobs (exit 255), but not its local jobs.
            for job_id in [j for j in host.jobs_as_client if j in self.jobs and self.jobs[j].local]:
                self._finish_local(self.jobs[job_id], t, lost=True)
            if self._to_host_offline:
                self._emit(self._to_host_offline, _HOST_OFFLINE, t, host=host)
            return
        added = host is None
        if host is None:
            host = Host(host_id, first_seen=t)
            self.hosts[host_id] = host
            if self.totals.first_host_seen is None:
                self.totals.first_host_seen = t
        elif statmsg == host.statmsg and host.online:
            host.last_seen = t  # the same report again (every monitor login repeats them all)
            to = self._to_host_changed
            if to:  # (_emit, inlined: it runs for nearly every frame)
                event = _new_tuple(Event, (_HOST_CHANGED, t, host, None))
                for publish in to:
                    publish(event, self)
            return
        name = host.name
        came_back = not host.online
        host.report(statmsg)
        host.online = True
        host.last_seen = t
        if added or came_back or host.name != name:
            self._counters(host)
            if host.name:
                self.host_ids[host.name] = host.id
        if added and host.name:
            # A daemon that logged in again gets a new id; its old, offline entry is replaced.
            for old in [h for h in self.hosts.values() if h.name == host.name and not h.online]:
                del self.hosts[old.id]
        if added:
            if self._to_host_added:
                self._emit(self._to_host_added, _HOST_ADDED, t, host=host)
        else:
            to = self._to_host_changed
            if to:  # (_emit, inlined: it runs for nearly every frame)
                event = _new_tuple(Event, (_HOST_CHANGED, t, host, None))
                for publish in to:
                    publish(event, self)

    def _add_job(self, job: Job) -> None:
        jobs = self.jobs
        jobs[job.id] = job
        if len(jobs) > MAX_ACTIVE_JOBS:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        job = self.jobs.pop(next(iter(self.jobs)))
        for host_id, ids in ((job.server_id, "jobs_as_server"), (job.client_id, "jobs_as_client")):
            host = self.hosts.get(host_id) if host_id is not None else None
            if host is not None:
                getattr(host, ids).discard(job.id)

    # The handlers run for nearly every frame of a busy cluster: they unpack their message in
    # one step (see _check_layout at the end of this module) and touch each object once. So
    # they take a message or just the tuple of its field values (see pump(fields=True)).

    def _on_get_cs(self, msg: m.MonGetCS, t: float) -> None:
        _, filename, lang, _, _, _, _, _, job_id, client_id = msg
        job = Job(job_id, filename, lang, client_id, t)
        jobs = self.jobs
        jobs[job_id] = job
        if len(jobs) > MAX_ACTIVE_JOBS:
            self._drop_oldest()
        self.totals.submitted += 1
        client = self.hosts.get(client_id) or self._host(client_id, t)
        client.jobs_as_client.add(job_id)
        client.counters.submitted += 1
        to = self._to_job_submitted
        if to:  # (_emit, inlined: it runs for nearly every frame)
            event = _new_tuple(Event, (_JOB_SUBMITTED, t, None, job))
            for publish in to:
                publish(event, self)

    def _on_job_begin(self, msg: m.MonJobBegin, t: float) -> None:
        job_id, stime, host_id = msg
        job = self.jobs.get(job_id)
        if job is None:
            # Submitted before we connected.
            job = Job(job_id)
            job.seen_submit = False
            self._add_job(job)
        job.state = _COMPILING
        job.server_id = host_id
        job.started = t
        job.stime = stime
        server = self.hosts.get(host_id) or self._host(host_id, t)
        server.jobs_as_server.add(job_id)
        to = self._to_job_started
        if to:  # (_emit, inlined: it runs for nearly every frame)
            event = _new_tuple(Event, (_JOB_STARTED, t, None, job))
            for publish in to:
                publish(event, self)

    def _on_job_done(self, msg: m.MonJobDone, t: float) -> None:
        job_id, code, real_msec, user_msec, sys_msec, pfaults, in_c, in_u, out_c, out_u, _, _ = msg
        job = self.jobs.pop(job_id, None)
        totals = self.totals
        if job is None:
            job = Job(job_id)
            job.seen_submit = False
            totals.unseen += 1
        job.ended = t
        job.exit_code = code
        job.real_msec = real_msec
        job.user_msec = user_msec
        job.sys_msec = sys_msec
        job.pfaults = pfaults
        job.in_compressed = in_c
        job.in_uncompressed = in_u
        job.out_compressed = out_c
        job.out_uncompressed = out_u
        totals.remote_done += 1
        totals.in_bytes += in_u
        totals.out_bytes += out_u
        totals.compile_msec += real_msec
        if code == 0:
            job.state = _DONE
        else:
            job.state = _FAILED
            totals.remote_failed += 1
            if code == LOST_EXIT_CODE and not real_msec and not in_u:
                job.lost = True
                totals.lost += 1
            # A lost compile is re-run locally like a failed one: the client's connection to the
            # compiling host broke, and icecc falls back to compiling on its own machine.
            if job.file:
                pending = self._failed_for_rerun
                pending[(job.client_id, _stem(job.file))] = (job_id, t)
                if len(pending) > MAX_PENDING_RERUNS:
                    del pending[next(iter(pending))]
        hosts = self.hosts
        server = hosts.get(job.server_id)
        if server is not None:
            server.jobs_as_server.discard(job_id)
            counters = server.counters
            counters.compiled += 1
            counters.compile_msec += real_msec
            counters.in_bytes += in_u
            counters.out_bytes += out_u
            if code != 0:
                counters.failed += 1
                if job.lost:
                    counters.lost += 1
            if not job.lost:
                times = counters.compile_times
                times[real_msec] = times.get(real_msec, 0) + 1
        if job.server_id is not None:
            slowest = self.slowest
            if len(slowest) < SLOWEST_JOBS or real_msec >= slowest[0][0]:
                self._note_slow(job, server)
        client = hosts.get(job.client_id)
        if client is not None:
            client.jobs_as_client.discard(job_id)
        second = int(t)
        if second == self._second:
            in_second = self._in_second = self._in_second + 1
        else:
            self._second = second
            in_second = self._in_second = 1
        if in_second > totals.peak_jobs_per_second:
            totals.peak_jobs_per_second = in_second
            totals.peak_second = second
        self.finished.append(job)
        to = self._to_job_finished
        if to:  # (_emit, inlined: it runs for nearly every frame)
            event = _new_tuple(Event, (_JOB_FINISHED, t, None, job))
            for publish in to:
                publish(event, self)

    def _note_slow(self, job: Job, server: Host | None) -> None:
        name = server.name if server is not None and server.name else f"#{job.server_id}"
        entry = (job.real_msec, job.id, job.file, name)
        if len(self.slowest) < SLOWEST_JOBS:
            heapq.heappush(self.slowest, entry)
        elif entry > self.slowest[0]:
            heapq.heapreplace(self.slowest, entry)

    def _count_finished(self, t: float) -> None:
        """Count a finished job in its whole second (what _on_job_done does inline)."""
        second = int(t)
        if second == self._second:
            self._in_second += 1
        else:
            self._second = second
            self._in_second = 1
        totals = self.totals
        if self._in_second > totals.peak_jobs_per_second:
            totals.peak_jobs_per_second = self._in_second
            totals.peak_second = second

    def _on_local_begin(self, msg: m.MonLocalJobBegin, t: float) -> None:
        host_id, job_id, stime, file = msg
        job = Job(job_id, file, None, host_id, t)
        job.server_id = host_id
        job.state = JobState.LOCAL
        job.local = True
        job.started = t
        job.stime = stime
        self._add_job(job)
        self.totals.local_started += 1
        host = self._host(host_id, t)
        if host is not None:
            host.jobs_as_client.add(job_id)
            host.counters.local += 1
        if self._failed_for_rerun and file:
            key = (host_id, _stem(file))
            failed = self._failed_for_rerun.pop(key, None)
            if failed is not None and t - failed[1] <= RERUN_WINDOW:
                job.rerun_of = failed[0]
                self.totals.reruns += 1
        to = self._to_job_started
        if to:  # (_emit, inlined: it runs for nearly every frame)
            event = _new_tuple(Event, (_JOB_STARTED, t, None, job))
            for publish in to:
                publish(event, self)

    def _on_local_done(self, msg: m.JobLocalDone, t: float) -> None:
        (job_id,) = msg
        job = self.jobs.get(job_id)
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
        self._count_finished(t)
        self.finished.append(job)
        to = self._to_job_finished
        if to:  # (_emit, inlined: it runs for nearly every frame)
            event = _new_tuple(Event, (_JOB_FINISHED, t, None, job))
            for publish in to:
                publish(event, self)

    # -- checkpoints (icetools.index) -----------------------------------------------------

    _STATE = (
        "hosts", "jobs", "finished", "totals", "host_counters", "host_ids", "protocol",
        "connected_since", "is_connected", "now", "_failed_for_rerun", "slowest", "_second",
        "_in_second",
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


def _check_layout(cls: type[Message], names: tuple[str, ...]) -> None:
    """The hot handlers unpack messages by position: fail at import, not with wrong numbers,
    if a message's fields are ever reordered."""
    actual = tuple(f.name for f in cls.FIELDS)
    if actual != names:
        raise ImportError(f"{cls.__name__} fields are {actual}, the Monitor expects {names}")


_check_layout(m.MonGetCS, (
    "versions", "filename", "lang", "count", "target", "arg_flags", "request_client_id",
    "preferred_host", "job_id", "client_id",
))
_check_layout(m.MonJobBegin, ("job_id", "stime", "host_id"))
_check_layout(m.MonStats, ("host_id", "statmsg"))
_check_layout(m.MonLocalJobBegin, ("host_id", "job_id", "stime", "file"))
_check_layout(m.JobLocalDone, ("job_id",))
_check_layout(m.MonJobDone, (
    "job_id", "exitcode", "real_msec", "user_msec", "sys_msec", "pfaults", "in_compressed",
    "in_uncompressed", "out_compressed", "out_uncompressed", "flags", "client_count",
))
