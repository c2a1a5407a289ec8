"""A real icecream cluster on this machine, with every packet kept inside network namespaces.

Standard library only (Python 3.11). Import it from tests (``from . import realcluster``), or run
it: ``python tests/realcluster.py demo`` (start a cluster, compile, print where jobs went) and
``python tests/realcluster.py cleanup`` (remove namespaces/run dirs of dead test runs). The
monitor and waker helpers run this same file as child processes inside namespace A.

API summary::

    Cluster(daemons=3, tmpdir=None, *, port=8765, max_jobs=2, local_max_jobs=None,
            ready_timeout=60.0, verbose_logs=True, waker_interval=0.3,
            netname=None)                 # context manager; netname: -n of scheduler and daemons
      .start() / .stop()                      stop() is idempotent; atexit also calls it
      .scheduler_host, .scheduler_port        "127.0.0.1", PORT as seen from namespace A
      .netns_a, .prefix, .rundir, .tmpdir, .scheduler_log, .daemons, .startup_seconds
      .run_in_a(argv, **kw) / .popen_in_a(argv, **kw)   default env: client_env()
      .popen_on(k, argv, **kw)                a client of daemon k, in its namespace
      .client_env(extra=None, *, node=1) -> dict   ICECC_* stripped, ICECC_TEST_SOCKET = daemon node's
      .monitor(version=43) -> MonitorTap      registered raw monitor connection
      .wait_ready(timeout=None, *, nodes=None, require_stats=True) -> {node: hostid}
      .host_ids() -> {node: hostid}
      .compile_files(n, workdir, jobs=None, *, tag, with_main, work, env, cflags, node=1) -> [CompileResult]
      .compile_failing(n, workdir, jobs=None, ...) -> [CompileResult]
      .link(objects, output, *, extra_args=(), node=1) -> CompileResult
      .icerun(argv) -> CompileResult
      .kill_daemon_while_compiling(k, workdir, *, files=1, work=600, tap=None,
                                   hold_clients=True, wait_clients=True) -> KillReport
      .kill_daemon(k, sig=SIGKILL) / .start_daemon(k) / .daemon_pid(k)
      .restart_scheduler(*, wait=True) -> {node: hostid} | None
      .log_tail(lines=25) -> str / .leftovers() -> [str]
    MonitorTap: .frames(*types), .count(t), .wait_for(pred, timeout, what), .wait_quiet(),
                .hosts(), .host_ids(), .offline_hosts(), .close()
    MonFrame: .type, .payload, .t, .t_recv, .name, .stats(), .job_done(), .job_begin(), .get_cs(),
              .local_job_begin(), .local_job_done()
    require_real_cluster_support() -> str | None; skip_or_fail_if_unsupported();
    make_cluster_fixture(name="real_cluster", *, scope="session", daemons=3, **kw);
    cleanup_stale(); list_netns(); running_icecream_processes()

Layout (one instance; ``<p>`` = ``icet-<our pid>-<seq>``)::

    netns <p>-a   icecc-scheduler -p PORT      (listens on 0.0.0.0: TCP PORT, UDP PORT, TCP PORT+1)
                  iceccd node1  -s 127.0.0.1:PORT
                  every client (icecc, icerun, monitors, the icetools recorder)
                  veth k (10.77.k.1/24) ----+
    netns <p>-nk  iceccd nodek -s 10.77.k.1:PORT, eth0 = 10.77.k.2/24   (k = 2..N)

Each spoke has a default route via A and A forwards, so spokes reach each other (a build submitted
from a spoke, :meth:`Cluster.popen_on`, needs to reach the compile hosts in the other spokes).
Nothing runs in the root network namespace and no namespace has a route out, so the scheduler's and
the daemons' broadcasts stay inside the cluster. Every name carries our pid, so parallel runs do not
collide, and namespaces of dead pids are swept on the next start.

Why ``ICECC_TEST_SOCKET`` instead of mount namespaces: a daemon running as root serves local clients
on ``/var/run/icecc/iceccd.socket``, and Unix sockets ignore network namespaces, so several daemons
(or several clusters) would fight over that path. icecream 1.4 honours ``$ICECC_TEST_SOCKET`` in
both ``iceccd`` (daemon/main.cpp: bind there instead) and ``icecc``/``icerun`` (client/main.cpp:
connect there instead, and exit 119 if it cannot). Each daemon therefore gets its own socket in the
cluster's run dir, and :meth:`Cluster.client_env` (the default env of run_in_a/popen_in_a) points
clients at daemon 1's. No mounts, and parallel clusters cannot steal each other's clients. A client
in namespace A *without* the variable still reaches daemon 1: after the socket paths it falls back
to TCP 127.0.0.1:10245. (iceccd started as root still creates ``/var/run/icecc`` itself, owned by
'icecc', and keeps ``iceccd.pid`` there while running; that empty directory is the only trace left
on the host.)

Daemons also get ``ICECC_TESTS=1``: icecream's own test-suite switch, which (1.4) shortens the
reconnect delay after losing the scheduler from 20-51 s to 3 s (needed by
:meth:`Cluster.restart_scheduler`) and stops ignoring ``lo`` for broadcasts (harmless here: every
interface is inside our namespaces). Its third effect only applies to a node named ``remoteice2``.

The scheduler needs a waker (:meth:`Cluster._start_waker`): icecream 1.4 stops polling its listening
socket for 1 s after each accept and may then sleep 36 s in poll(); a helper pokes it with empty
UDP datagrams so connections are accepted within ~1 s.

Where jobs go (measured here): with node1 at ``-m 0`` (the default when N > 1) every
``icecc gcc -c`` is scheduled and compiled on node2..N (6 files: 3 + 3), each giving MON_GET_CS
(clientid = node1's host id), MON_JOB_BEGIN (hostid = compiling node), MON_JOB_DONE. With node1 > 0
the scheduler also picks node1 (4 of 6), and for those the client compiles itself. A daemon is only
eligible after its first STATS (Load < 1000), which :meth:`Cluster.wait_ready` waits for.
``ICECC_PREFERRED_HOST=nodeK`` pins a job to nodeK (the scheduler waits for that host rather than
choosing another). Links (``icecc gcc a.o b.o -o x``) and ``icerun`` are local jobs on node1:
MON_LOCAL_JOB_BEGIN + JOB_LOCAL_DONE. A syntax error gives MON_JOB_DONE exit 1 (sometimes 118 from
the submitter) and icecc re-runs the file locally as a local job; the client exits 1.

Timings here (2 CPUs): start-up to "all daemons logged in and reported stats" ~9 s (the daemons'
own connect timers); the first compile ~5 s (daemon 1 runs icecc-create-env: a 31 MB tarball, then
~0.3 s transfer and ~1 s unpack per remote node); later compiles ~0.1 s; scheduler restart until
all daemons are back ~12 s; a restarted daemon ~9 s.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Protocol constants (icecream 1.4, protocol 43; see docs/icecream-protocol.md sections 2, 3, 8)
# --------------------------------------------------------------------------------------------

PROTOCOL_VERSION = 43
MAX_FRAME = 1 << 20

JOB_LOCAL_DONE = 0x4F
MON_LOGIN = 0x52
MON_GET_CS = 0x53
MON_JOB_BEGIN = 0x54
MON_JOB_DONE = 0x55
MON_LOCAL_JOB_BEGIN = 0x56
MON_STATS = 0x57

TYPE_NAMES = {
    JOB_LOCAL_DONE: "JOB_LOCAL_DONE",
    MON_GET_CS: "MON_GET_CS",
    MON_JOB_BEGIN: "MON_JOB_BEGIN",
    MON_JOB_DONE: "MON_JOB_DONE",
    MON_LOCAL_JOB_BEGIN: "MON_LOCAL_JOB_BEGIN",
    MON_STATS: "MON_STATS",
}

# Names of everything we create: "icet-<pid>-<seq>-a", "icet-<pid>-<seq>-n<k>".
NS_PREFIX = "icet-"
_NS_RE = re.compile(r"^icet-(\d+)-(\d+)-(a|n\d+)$")
TMP_PREFIX = "icet-cluster-"
RUN_BASE = "/tmp"  # explicitly not $TMPDIR: user 'icecc' must be able to reach our run dirs
_TMP_RE = re.compile(r"^icet-cluster-(\d+)-")

REQUIRED_PROGRAMS = ("icecc-scheduler", "iceccd", "icecc", "icerun", "icecc-create-env", "gcc", "ip")


# --------------------------------------------------------------------------------------------
# Environment check and pytest glue
# --------------------------------------------------------------------------------------------


@cache
def require_real_cluster_support() -> str | None:
    """Return a one-line reason why a real cluster cannot run here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"real icecream cluster needs Linux network namespaces (platform is {sys.platform})"
    if os.geteuid() != 0:
        return "real icecream cluster needs root (network namespaces, daemons that drop to 'icecc')"
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    if missing:
        return f"real icecream cluster needs {', '.join(missing)} (Debian: apt-get install icecc gcc iproute2)"
    try:
        pwd.getpwnam("icecc")
    except KeyError:
        return "real icecream cluster needs the 'icecc' system user (created by Debian's icecc package)"
    # Being root is not enough inside some containers: actually create and delete a namespace.
    probe = f"{NS_PREFIX}{os.getpid()}-0-a"
    add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if add.returncode != 0:
        return f"'ip netns add' does not work here: {add.stderr.strip() or add.returncode}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def skip_or_fail_if_unsupported() -> None:
    """pytest rule: fail under CI=true (the cluster is expected there), otherwise skip."""
    import pytest

    reason = require_real_cluster_support()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def make_cluster_fixture(
    name: str = "real_cluster", *, scope: str = "session", daemons: int = 3, **cluster_kwargs: Any
) -> Callable[..., Iterator[Cluster]]:
    """Build a pytest fixture yielding a started :class:`Cluster`.

    Usage in a test module or conftest: ``real_cluster = make_cluster_fixture(daemons=3)``.
    """
    import pytest

    @pytest.fixture(scope=scope, name=name)  # type: ignore[misc]
    def _fixture(tmp_path_factory: Any) -> Iterator[Cluster]:
        skip_or_fail_if_unsupported()
        tmpdir = tmp_path_factory.mktemp(name)
        with Cluster(daemons, tmpdir=tmpdir, **cluster_kwargs) as cluster:
            yield cluster

    return _fixture


# --------------------------------------------------------------------------------------------
# Minimal monitor-protocol decoding (the icetools package is the real implementation)
# --------------------------------------------------------------------------------------------


class _Reader:
    """Field reader for one frame payload; missing trailing fields decode as 0 / '' (doc 3.3)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            return 0
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return value

    def i32(self) -> int:
        value = self.u32()
        return value - (1 << 32) if value & 0x80000000 else value

    def string(self) -> str:
        n = self.u32()
        if n == 0 or self.pos + n > len(self.data):
            return ""
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass(frozen=True)
class MonFrame:
    """One frame received on a monitor connection (type word + payload), with receive time."""

    type: int
    payload: bytes
    t: float  # time.monotonic() in the parent process when the line arrived
    # time.monotonic() in the monitor process when the frame's last byte was read: without the
    # pipe hop and the parent's reader thread, which lag by hundreds of ms on a loaded machine
    # (bench/load.py measures other processes' latency against it). One clock for every netns.
    t_recv: float | None = None

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"0x{self.type:02X}")

    def stats(self) -> tuple[int, dict[str, str]]:
        """MON_STATS -> (hostid, {key: value}); offline hosts give {'State': 'Offline'}."""
        r = _Reader(self.payload)
        hostid = r.u32()
        text = r.string()
        fields: dict[str, str] = {}
        for line in text.split("\n"):
            if ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value
        return hostid, fields

    def job_done(self) -> dict[str, int]:
        """MON_JOB_DONE: exitcode is signed (the scheduler's 'daemon went away' code is 255)."""
        r = _Reader(self.payload)
        out = {"job_id": r.u32(), "exitcode": r.i32()}
        for key in ("real_msec", "user_msec", "sys_msec", "pfaults", "in_compressed",
                    "in_uncompressed", "out_compressed", "out_uncompressed", "flags", "client_count"):
            out[key] = r.u32()
        return out

    def job_begin(self) -> dict[str, int]:
        r = _Reader(self.payload)
        return {"job_id": r.u32(), "stime": r.u32(), "hostid": r.u32()}

    def get_cs(self) -> dict[str, Any]:
        r = _Reader(self.payload)
        return {"filename": r.string(), "lang": r.u32(), "job_id": r.u32(), "clientid": r.u32()}

    def local_job_begin(self) -> dict[str, Any]:
        r = _Reader(self.payload)
        return {"hostid": r.u32(), "job_id": r.u32(), "stime": r.u32(), "file": r.string()}

    def local_job_done(self) -> dict[str, int]:
        return {"job_id": _Reader(self.payload).u32()}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("scheduler closed the connection")
        buf += chunk
    return bytes(buf)


def _monitor_main(host: str, port: int, version: int, connect_timeout: float) -> int:
    """Child-process side of :class:`MonitorTap`: log in as a monitor, print frames as JSON lines.

    Runs inside namespace A (started through ``ip netns exec``), because 127.0.0.1:PORT only
    reaches the scheduler there; Python 3.11 has no os.setns, hence a process rather than a thread.
    """

    def emit(obj: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    deadline = time.monotonic() + connect_timeout
    while True:  # the scheduler may still be starting: retry refused connections until the deadline
        try:
            # The handshake may wait for the scheduler's accept throttle (see Cluster._start_waker).
            sock = socket.create_connection((host, port), timeout=max(5.0, deadline - time.monotonic()))
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                emit({"ev": "error", "msg": f"connect {host}:{port}: {exc}"})
                return 1
            time.sleep(0.1)
    try:
        # Handshake (doc section 2): own version LE32, read peer's, send min LE32, read confirmation.
        sock.sendall(struct.pack("<I", version))
        (peer,) = struct.unpack("<I", _recv_exact(sock, 4))
        agreed = min(peer, version)
        sock.sendall(struct.pack("<I", agreed))
        (confirm,) = struct.unpack("<I", _recv_exact(sock, 4))
        if confirm != agreed:
            emit({"ev": "error", "msg": f"handshake mismatch: sent {agreed}, got {confirm}"})
            return 1
        sock.sendall(struct.pack(">II", 4, MON_LOGIN))
        emit({"ev": "connected", "peer": peer, "protocol": agreed})
        sock.settimeout(None)  # the scheduler stays silent while nothing happens
        while True:
            (length,) = struct.unpack(">I", _recv_exact(sock, 4))
            if length < 4 or length > MAX_FRAME:
                emit({"ev": "error", "msg": f"bad frame length {length}"})
                return 1
            body = _recv_exact(sock, length)
            (mtype,) = struct.unpack_from(">I", body)
            emit({"ev": "frame", "type": mtype, "payload": body[4:].hex(), "t": time.monotonic()})
    except EOFError:
        emit({"ev": "closed"})
        return 0
    except (OSError, BrokenPipeError) as exc:
        emit({"ev": "error", "msg": str(exc)})
        return 1


def _waker_main(host: str, port: int, interval: float) -> int:
    """Child-process side of the scheduler waker (see :meth:`Cluster._start_waker`): send an empty
    UDP datagram to the scheduler's discovery port every ``interval`` seconds, from namespace A.

    The 1.4 scheduler ignores a 0-byte datagram (neither a 1-byte discovery request nor a
    268-byte scheduler announcement): nothing is logged or answered, but its poll() returns.
    Exits when its parent (the test process) goes away, so it cannot outlive a killed test run.
    """
    parent = os.getppid()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while os.getppid() == parent:
        try:
            sock.sendto(b"", (host, port))
        except OSError:
            pass  # scheduler restarting: nothing listens for a moment
        time.sleep(interval)
    return 0


class MonitorTap:
    """A monitor connection to the cluster's scheduler, made from inside namespace A.

    Frames are collected by a reader thread; use :meth:`wait_for` / :meth:`frames` to inspect
    them. The scheduler corks monitor sockets, so frames arrive in bursts up to ~200 ms late.
    """

    def __init__(self, cluster: Cluster, *, version: int = PROTOCOL_VERSION, connect_timeout: float = 30.0):
        self._cond = threading.Condition()
        self._frames: list[MonFrame] = []
        self._events: list[dict[str, Any]] = []
        self.connected = False
        self.closed = False
        self._connected_at = time.monotonic()
        argv = [sys.executable, "-u", os.path.abspath(__file__), "monitor",
                cluster.scheduler_host, str(cluster.scheduler_port),
                "--version", str(version), "--connect-timeout", str(connect_timeout)]
        # popen_in_a registers the process with the cluster, so stop() ends a tap left open.
        self._proc = cluster.popen_in_a(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True, name="icet-monitor")
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if msg["ev"] == "frame":
                    self._frames.append(MonFrame(msg["type"], bytes.fromhex(msg["payload"]), time.monotonic(),
                                                 msg.get("t")))
                else:
                    self._events.append(msg)
                    if msg["ev"] == "connected":
                        self.connected = True
                        self._connected_at = time.monotonic()
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # -- inspection -----------------------------------------------------------------------

    def frames(self, *types: int) -> list[MonFrame]:
        """Snapshot of the frames received so far, optionally only of the given types."""
        with self._cond:
            return [f for f in self._frames if not types or f.type in types]

    def count(self, mtype: int) -> int:
        return len(self.frames(mtype))

    def wait_for(
        self, predicate: Callable[[list[MonFrame]], Any], timeout: float = 30.0, what: str = "condition"
    ) -> Any:
        """Wait until ``predicate(all frames so far)`` is truthy and return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self._frames)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    reason = "connection closed" if self.closed else f"timed out after {timeout:.0f} s"
                    raise TimeoutError(
                        f"monitor: {reason} waiting for {what}; events={self._events[-3:]}, "
                        f"last frames={[f.name for f in self._frames[-20:]]}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.connected:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise TimeoutError(f"monitor could not log in: {self._events}")
                self._cond.wait(remaining)

    def wait_quiet(self, quiet: float = 0.5, timeout: float = 10.0) -> None:
        """Wait until no frame has arrived for ``quiet`` seconds, counted from the later of this
        call and the last frame. The scheduler corks monitor sockets (frames can lag ~200 ms), so
        prefer :meth:`wait_for` with an explicit condition when you know what to expect."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            with self._cond:
                last = max(start, self._frames[-1].t if self._frames else start)
            now = time.monotonic()
            if now - last >= quiet or now >= deadline:
                return
            time.sleep(min(quiet - (now - last), deadline - now))

    def hosts(self) -> dict[int, dict[str, str]]:
        """Live hosts: hostid -> latest MON_STATS fields (hosts seen 'State:Offline' are dropped)."""
        return _live_hosts(self.frames(MON_STATS))

    def host_ids(self) -> dict[str, int]:
        """Live hosts by node name -> host id."""
        return {fields.get("Name", ""): hid for hid, fields in self.hosts().items()}

    def offline_hosts(self) -> list[int]:
        return [hid for hid, fields in (f.stats() for f in self.frames(MON_STATS)) if fields.get("State") == "Offline"]

    def close(self) -> None:
        _terminate(self._proc, grace=2.0)
        self._thread.join(timeout=5)

    def __enter__(self) -> MonitorTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _live_hosts(stats_frames: Iterable[MonFrame]) -> dict[int, dict[str, str]]:
    live: dict[int, dict[str, str]] = {}
    for frame in stats_frames:
        hostid, fields = frame.stats()
        if fields.get("State") == "Offline":
            live.pop(hostid, None)
        else:
            live[hostid] = fields
    return live


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _terminate(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, the process group we created for ``proc`` (start_new_session=True),
    so a daemon's forked job children go with it. Always by id, never by name.

    The group is only signalled while its leader is not yet reaped: until then the kernel cannot
    hand its pid (= the group id) to an unrelated process. Hence waiting with WNOWAIT.
    """
    if proc.returncode is None:
        # The leader first: iceccd stops and reaps its own job children on SIGTERM. Signalling the
        # whole group at once would orphan them as zombies of pid 1 for a while.
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _exited_unreaped(proc.pid):
            time.sleep(0.05)
        _signal_group(proc.pid, signal.SIGKILL)  # also takes children that outlived the leader
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _exited_unreaped(pid: int) -> bool:
    """True once ``pid`` (our child) has exited; leaves the zombie in place so its id stays ours."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process? Zombies count as dead: an owner killed with SIGKILL may sit
    unreaped for a while, and its namespaces should be collectable meanwhile."""
    return _process_state(pid) not in (None, "Z")


def _process_state(pid: int) -> str | None:
    """One-letter state from /proc (R, S, Z, ...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def running_icecream_processes() -> dict[int, str]:
    """pid -> command line of every live (non-zombie) icecream process on the machine, for leak
    checks (filter on a cluster's ``rundir``, which every one of its daemons and its scheduler has
    in argv). Zombies are skipped: finished job children of a stopped daemon are reparented to
    pid 1, which reaps them a few seconds later; they are not ours to reap."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2]
        # comm is truncated to 15 characters: "icecc-create-env" shows as "icecc-create-en".
        if state != "Z" and (comm in ("icecc-scheduler", "iceccd", "icecc", "icerun") or comm.startswith("icecc-create")):
            found[int(entry.name)] = cmdline or comm
    return found


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _netns_pids(ns: str) -> list[int]:
    result = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def list_netns() -> list[str]:
    # "ip netns list" prints "name" or "name (id: N)".
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _destroy_netns(ns: str) -> None:
    """Kill whatever still runs in namespace ``ns`` (only our processes can be in it) and delete it."""
    for _ in range(20):
        pids = [p for p in _netns_pids(ns) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _ip("netns", "delete", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete namespaces and temp dirs left by dead processes of this module. Returns what was removed."""
    removed: list[str] = []
    for ns in list_netns():
        m = _NS_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _destroy_netns(ns)
            removed.append(ns)
    for entry in Path(RUN_BASE).glob(TMP_PREFIX + "*"):
        m = _TMP_RE.match(entry.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


# Every started cluster, so an interpreter exit without stop() (e.g. an uncaught exception outside
# pytest's fixture teardown) still removes processes and namespaces.
_LIVE_CLUSTERS: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _stop_all_clusters() -> None:
    for cluster in list(_LIVE_CLUSTERS):
        cluster.stop()


# --------------------------------------------------------------------------------------------
# Source generation for compile helpers
# --------------------------------------------------------------------------------------------


def _c_source(index: int, tag: str, work: int = 0, with_main: bool = False, total: int = 0) -> str:
    """A small, distinct C translation unit. ``work`` > 0 adds that many optimisable functions,
    making the compile take roughly work/200 seconds at -O2 here (400 -> ~1.8 s)."""
    lines = [f"/* icetools real-cluster test source {tag} #{index} */",
             f"int icet_{tag}_{index}(int x) {{ int s = {index}; for (int i = 0; i < x; i++) s = s * 31 + i; return s; }}"]
    for j in range(work):
        lines.append(
            f"unsigned icet_{tag}_{index}_w{j}(unsigned x) {{ unsigned a = x; for (int k = 0; k < 64; k++) "
            f"{{ a = a * {j + 3}u + (a >> {j % 13 + 1}) ^ {j * 7 + 1}u; if (a % {j + 5}u == 3u) a += k; }} return a; }}"
        )
    if work:
        calls = "".join(f"s += icet_{tag}_{index}_w{j}(x + {j});" for j in range(work))
        lines.append(f"unsigned icet_{tag}_{index}_all(unsigned x) {{ unsigned s = 0; {calls} return s; }}")
    if with_main:
        decls = "".join(f"int icet_{tag}_{i}(int);" for i in range(total) if i != index)
        calls = "+".join(f"icet_{tag}_{i}(3)" for i in range(total))
        lines.append(f"{decls}\nint main(void) {{ return ({calls}) == 42; }}")
    return "\n".join(lines) + "\n"


@dataclass
class CompileResult:
    """Outcome of one client command run in namespace A."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    source: Path | None = None
    output: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class KillReport:
    """What :meth:`Cluster.kill_daemon_while_compiling` did."""

    node: str
    hostid: int
    pid: int
    job_ids: list[int]  # MON_JOB_BEGIN job ids seen on that host before the kill
    results: list[CompileResult] = field(default_factory=list)  # empty if wait_clients=False
    clients: list[subprocess.Popen[str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


@dataclass
class _Daemon:
    index: int  # 1..N
    netns: str
    node: str
    scheduler_ip: str
    max_jobs: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "iceccd.socket"

    @property
    def log(self) -> Path:
        return self.dir / "iceccd.log"


class Cluster:
    """Scheduler + N daemons in network namespaces. Use as a context manager or call start()/stop().

    ``max_jobs`` is the ``-m`` of daemons 2..N. ``local_max_jobs`` is node1's (the daemon in
    namespace A that every client talks to); by default 0 when there are other daemons, so every
    ``icecc gcc -c`` is scheduled on node2..N and compiled there. With node1 > 0 the scheduler
    also picks node1 for some jobs (measured: 4 of 6); those still produce MON_GET_CS /
    MON_JOB_BEGIN(hostid of node1) / MON_JOB_DONE, but the client compiles them itself ("building
    myself, but telling localhost"). node1 at ``-m 0`` still runs local jobs (links, icerun).
    ``ready_timeout`` bounds start-up and reconnection waits; ``waker_interval`` (None disables)
    is explained in :meth:`_start_waker`.

    Files: the scheduler and daemons run as user 'icecc', which cannot enter pytest's 0700 temp
    dirs, so their logs, sockets and environment dirs live in ``rundir``, a fresh world-writable
    directory under /tmp (removed by stop()). ``tmpdir`` is yours (e.g. for compile work dirs); if
    you pass one, stop() copies the logs into ``tmpdir/cluster-logs`` for post-mortems. Without
    one, ``tmpdir`` is ``rundir``. :meth:`log_tail` gives the log tails while running.
    """

    _seq = 0
    _seq_lock = threading.Lock()

    def __init__(
        self,
        daemons: int = 3,
        tmpdir: str | os.PathLike[str] | None = None,
        *,
        port: int = 8765,
        max_jobs: int = 2,
        local_max_jobs: int | None = None,  # None: 0 if daemons > 1 else max_jobs
        ready_timeout: float = 60.0,
        verbose_logs: bool = True,
        waker_interval: float | None = 0.3,
        netname: str | None = None,
    ) -> None:
        if not 1 <= daemons <= 250:
            raise ValueError("daemons must be between 1 and 250")
        with Cluster._seq_lock:
            Cluster._seq += 1
            seq = Cluster._seq
        self.prefix = f"{NS_PREFIX}{os.getpid()}-{seq}"
        self.netns_a = f"{self.prefix}-a"
        self.scheduler_host = "127.0.0.1"
        self.scheduler_port = port
        self.ready_timeout = ready_timeout
        self.verbose_logs = verbose_logs
        self.waker_interval = waker_interval
        self.netname = netname  # None: icecream's default, ICECREAM
        self.rundir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=RUN_BASE))
        _give_to_icecc(self.rundir)  # the scheduler writes its log here after dropping to 'icecc'
        self._own_tmpdir = tmpdir is None
        self.tmpdir = Path(tmpdir) if tmpdir is not None else self.rundir
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if local_max_jobs is None:
            local_max_jobs = 0 if daemons > 1 else max_jobs
        self.daemons: list[_Daemon] = []
        for k in range(1, daemons + 1):
            ns = self.netns_a if k == 1 else f"{self.prefix}-n{k}"
            sched_ip = "127.0.0.1" if k == 1 else f"10.77.{k}.1"
            m = local_max_jobs if k == 1 else max_jobs
            self.daemons.append(_Daemon(k, ns, f"node{k}", sched_ip, m, self.rundir / f"d{k}"))
        self.scheduler_log = self.rundir / "scheduler.log"
        self._scheduler: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[Any]] = []  # every process we started, for stop()
        self._namespaces: list[str] = []
        self._started = False
        self._stopped = False
        self.startup_seconds: float | None = None
        _LIVE_CLUSTERS.add(self)  # from here on, atexit removes at least the run dir

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        """Create namespaces, start scheduler and daemons, wait until all are usable (see wait_ready)."""
        if self._stopped:
            raise RuntimeError("a stopped Cluster cannot be restarted; create a new one")
        if self._started:
            return self
        reason = require_real_cluster_support()
        if reason is not None:
            raise RuntimeError(reason)
        cleanup_stale()
        self._started = True
        t0 = time.monotonic()
        try:
            self._create_network()
            self._start_scheduler()
            if self.waker_interval:
                self._start_waker()
            for d in self.daemons:
                self._start_daemon(d)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop everything by pid, delete the namespaces and the run dir. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE_CLUSTERS.discard(self)
        if self._started:
            # Clients and helpers first (a client whose daemon disappears falls back to compiling
            # locally), then daemons, then the scheduler (daemons would only try to reconnect).
            current = {id(d.proc) for d in self.daemons if d.proc is not None} | {id(self._scheduler)}
            for proc in self._procs:
                if id(proc) not in current:
                    _terminate(proc, grace=1.0)
            for d in self.daemons:
                if d.proc is not None:
                    _terminate(d.proc)
            if self._scheduler is not None:
                _terminate(self._scheduler)
            # Whatever still runs inside our namespaces (e.g. a compiler orphaned by a SIGKILLed
            # daemon) can only be ours.
            for ns in reversed(self._namespaces):
                _destroy_netns(ns)
            if not self._own_tmpdir:
                self._save_logs(self.tmpdir / "cluster-logs")
        shutil.rmtree(self.rundir, ignore_errors=True)

    def _save_logs(self, dest: Path) -> None:
        for path in [*self.rundir.glob("*.log"), *self.rundir.glob("*.out"),
                     *self.rundir.glob("d*/*.log"), *self.rundir.glob("d*/*.out")]:
            target = dest / path.relative_to(self.rundir)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            except OSError:
                pass  # best effort: logs are a debugging aid

    def leftovers(self) -> list[str]:
        """Anything of this instance still around (meant to be empty after stop()): namespaces,
        live (non-zombie) processes we started or that sit in our namespaces, our temp dir."""
        found = [f"netns {ns}" for ns in list_netns() if ns.startswith(self.prefix + "-")]
        for ns in self._namespaces:
            found += [f"pid {pid} in {ns}" for pid in _netns_pids(ns) if _process_state(pid) not in (None, "Z")]
        found += [f"pid {p.pid} {p.args!r}" for p in self._procs
                  if p.returncode is None and _process_state(p.pid) not in (None, "Z")]
        if self.rundir.exists():
            found.append(f"dir {self.rundir}")
        return found

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        self._procs.append(proc)

    def _create_network(self) -> None:
        namespaces = [self.netns_a] + [d.netns for d in self.daemons[1:]]
        for ns in namespaces:
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for d in self.daemons[1:]:
            k = d.index
            # Created inside A with the peer moved straight into namespace k: the pair never exists
            # in the root namespace, so interface names only need to be unique per namespace.
            _ip("-n", self.netns_a, "link", "add", f"veth{k}", "type", "veth", "peer", "name", "eth0", "netns", d.netns)
            _ip("-n", self.netns_a, "addr", "add", f"10.77.{k}.1/24", "dev", f"veth{k}")
            _ip("-n", d.netns, "addr", "add", f"10.77.{k}.2/24", "dev", "eth0")
            _ip("-n", self.netns_a, "link", "set", f"veth{k}", "up")
            _ip("-n", d.netns, "link", "set", "eth0", "up")
            # Spokes reach each other through A (a submitter in a spoke must reach the compile
            # hosts in the other spokes, or its remote jobs fail with exit 118 and run locally).
            # A itself has no route out, so nothing leaves the namespaces.
            _ip("-n", d.netns, "route", "add", "default", "via", f"10.77.{k}.1")
        if len(self.daemons) > 1:
            subprocess.run(["ip", "netns", "exec", self.netns_a, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                           check=True, capture_output=True, timeout=20)

    def _spawn(self, ns: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        # stdout/stderr go to a file next to the program's own log (crash messages, usage errors).
        out = open(log.with_suffix(".out"), "ab")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],  # ip execs the program: proc.pid is its pid
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # own process group, so _terminate can take children too
            )
        finally:
            out.close()
        self._track(proc)
        return proc

    def _start_scheduler(self) -> None:
        argv = ["icecc-scheduler", "-p", str(self.scheduler_port), "-l", str(self.scheduler_log)]
        if self.netname is not None:
            argv += ["-n", self.netname]
        if self.verbose_logs:
            argv.append("-vvv")
        self._scheduler = self._spawn(self.netns_a, argv, self.scheduler_log)

    def _start_waker(self) -> None:
        """Work around the 1.4 scheduler's accept throttle.

        After accepting a TCP connection the scheduler leaves its listening sockets out of poll()
        for the next second (``next_listen = now + 1``), but then sleeps in poll() for up to
        ``prune_servers()``'s timeout (36 s when idle) without them. On a quiet cluster every
        connection that arrives within that second (the second daemon, a monitor, a reconnect)
        waits up to 36 s: measured start-up was ~40 s, daemons logged "no response within
        timeout". Any packet on a polled fd ends the sleep, so a tiny helper in namespace A sends
        an empty UDP datagram to the discovery port a few times per second; then connections are
        accepted within ~1 s. Busy real clusters never notice because daemon STATS wake the loop.
        """
        argv = [sys.executable, "-u", os.path.abspath(__file__), "waker",
                self.scheduler_host, str(self.scheduler_port), "--interval", str(self.waker_interval)]
        self.popen_in_a(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _start_daemon(self, d: _Daemon) -> None:
        d.dir.mkdir(parents=True, exist_ok=True)
        # The daemon drops to user 'icecc' and then (re)creates its env dir itself and chowns it to
        # that user, which fails with EPERM if we pre-created it as root. So only the parent
        # exists, owned by 'icecc'; it also holds the log and the private client socket.
        _give_to_icecc(d.dir)
        env = _base_env()
        env["ICECC_TEST_SOCKET"] = str(d.socket_path)  # private local-client socket, see module doc
        env["ICECC_TESTS"] = "1"  # 3 s scheduler reconnect instead of 20-51 s
        argv = ["iceccd", "-s", f"{d.scheduler_ip}:{self.scheduler_port}", "-N", d.node,
                "-m", str(d.max_jobs), "-b", str(d.dir / "env"), "-l", str(d.log)]
        if self.netname is not None:
            argv += ["-n", self.netname]  # the scheduler's network (moot with -s, but honest)
        if self.verbose_logs:
            argv.append("-vvv")
        d.proc = self._spawn(d.netns, argv, d.log, env)

    # -- readiness --------------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None, *, nodes: Iterable[str] | None = None,
                   require_stats: bool = True) -> dict[str, int]:
        """Block until the scheduler lists every running daemon, as seen by a monitor login.

        With ``require_stats`` also wait for each host's first STATS report (Load below 1000):
        until then the scheduler does not consider the host eligible and a job would just wait.
        Returns node name -> host id.
        """
        timeout = self.ready_timeout if timeout is None else timeout
        wanted = set(nodes) if nodes is not None else {d.node for d in self.daemons if self._daemon_running(d)}

        def ready(frames: list[MonFrame]) -> dict[str, int] | None:
            dead = [d.node for d in self.daemons if d.node in wanted and not self._daemon_running(d)]
            if self._scheduler is None or self._scheduler.poll() is not None:
                dead.append("scheduler")
            if dead:  # no point waiting out the timeout
                raise RuntimeError(f"{', '.join(dead)} exited during start-up\n{self.log_tail()}")
            live = _live_hosts(f for f in frames if f.type == MON_STATS)
            by_name = {fields.get("Name", ""): (hid, fields) for hid, fields in live.items()}
            if not wanted <= by_name.keys():
                return None
            if require_stats and any(int(by_name[n][1].get("Load", "1000") or 1000) >= 1000 for n in wanted):
                return None
            return {name: by_name[name][0] for name in wanted}

        deadline = time.monotonic() + timeout
        tap = MonitorTap(self, connect_timeout=timeout)
        try:
            tap.wait_connected(timeout=max(0.1, deadline - time.monotonic()))
            return tap.wait_for(ready, timeout=max(0.1, deadline - time.monotonic()),
                                what=f"daemons {sorted(wanted)} to log in")
        except TimeoutError as exc:
            raise RuntimeError(f"cluster not ready after {timeout:.0f} s: {exc}\n{self.log_tail()}") from None
        finally:
            tap.close()

    def _daemon_running(self, d: _Daemon) -> bool:
        return d.proc is not None and d.proc.poll() is None

    def host_ids(self, quiet: float = 0.6) -> dict[str, int]:
        """Current live hosts (node name -> host id) from a fresh monitor login."""
        with self.monitor() as tap:
            tap.wait_quiet(quiet)
            return tap.host_ids()

    def monitor(self, version: int = PROTOCOL_VERSION, *, registered: bool = True,
                timeout: float = 30.0) -> MonitorTap:
        """Open a monitor connection (from namespace A) and wait until the scheduler has taken it.

        Sending MON_LOGIN is not enough: the scheduler may handle other connections' messages
        (e.g. a local job from daemon 1) in the same poll round before it reads the login, and a
        monitor only gets what happens after. Its answer to the login, one MON_STATS per daemon,
        proves registration, so with ``registered`` (and at least one daemon running) we wait
        for the first MON_STATS. Seen as missing MON_LOCAL_JOB_BEGINs under load.
        """
        tap = MonitorTap(self, version=version, connect_timeout=timeout)
        try:
            tap.wait_connected(timeout)
            if registered and any(self._daemon_running(d) for d in self.daemons):
                tap.wait_for(lambda fs: any(f.type == MON_STATS for f in fs), timeout=timeout,
                             what="MON_STATS answering our MON_LOGIN")
        except BaseException:
            tap.close()
            raise
        return tap

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the scheduler and daemon logs, for error messages."""
        parts = []
        for path in [self.scheduler_log, *(d.log for d in self.daemons)]:
            for p in (path, path.with_suffix(".out")):
                try:
                    text = p.read_text(errors="replace").splitlines()[-lines:]
                except OSError:
                    continue
                parts.append(f"--- {p} ---\n" + "\n".join(text))
        return "\n".join(parts)

    # -- running things in namespace A -------------------------------------------------------

    def ns_argv(self, argv: Sequence[str], ns: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", ns or self.netns_a, *map(str, argv)]

    def client_env(self, extra: Mapping[str, str] | None = None, *, node: int = 1) -> dict[str, str]:
        """Environment for icecc/icerun clients: talk to daemon ``node`` (default 1) through its
        private socket. Run such a client in that daemon's namespace (:meth:`popen_on`)."""
        env = _base_env()
        env["ICECC_TEST_SOCKET"] = str(self.daemon(node).socket_path)
        if extra:
            env.update(extra)
        return env

    def run_in_a(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside namespace A. Default env is :meth:`client_env`."""
        kwargs.setdefault("env", self.client_env())
        return subprocess.run(self.ns_argv(argv), **kwargs)

    def popen_in_a(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside namespace A (own process group; killed by stop() if still running)."""
        kwargs.setdefault("env", self.client_env())
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.ns_argv(argv), **kwargs)
        self._track(proc)
        return proc

    def popen_on(self, node: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` in daemon ``node``'s namespace, as a client of that daemon (default
        env: ``client_env(node=node)``): a build submitted from that host. Killed by stop()."""
        kwargs.setdefault("env", self.client_env(node=node))
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.ns_argv(argv, self.daemon(node).netns), **kwargs)
        self._track(proc)
        return proc

    # -- work -------------------------------------------------------------------------------

    def _run_clients(self, commands: Sequence[tuple[list[str], Path | None, Path | None]],
                     jobs: int | None, env: Mapping[str, str] | None, timeout: float,
                     node: int = 1) -> list[CompileResult]:
        client_env = self.client_env(env, node=node)

        def one(cmd: tuple[list[str], Path | None, Path | None]) -> CompileResult:
            argv, src, out = cmd
            t0 = time.monotonic()
            proc = self.popen_on(node, argv, env=client_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=str(src.parent) if src else None)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _terminate(proc, grace=1.0)
                stdout, stderr = proc.communicate()
                stderr += f"\n[realcluster: killed after {timeout} s]"
            return CompileResult(argv, proc.returncode, stdout, stderr, time.monotonic() - t0, src, out)

        workers = max(1, jobs or len(commands))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, commands))

    def _write_sources(self, n: int, workdir: Path, tag: str, *, work: int = 0, with_main: bool = False,
                       broken: bool = False) -> list[Path]:
        workdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            path = workdir / f"{tag}_{i}.c"
            text = _c_source(i, tag, work, with_main and i == 0, n)
            if broken:
                text += f"int icet_{tag}_{i}_broken(void) {{ return 1 + ; }}\n"  # syntax error -> gcc exit 1
            path.write_text(text)
            paths.append(path)
        return paths

    def compile_files(self, n: int, workdir: str | os.PathLike[str], jobs: int | None = None, *,
                      tag: str = "src", with_main: bool = False, work: int = 0,
                      env: Mapping[str, str] | None = None, cflags: Sequence[str] = ("-O2",),
                      timeout: float = 120.0, node: int = 1) -> list[CompileResult]:
        """Write ``n`` distinct C files into ``workdir`` and run ``icecc gcc -c`` on them in parallel
        (``jobs`` at a time, default all) from daemon ``node``'s host (default: namespace A).
        ``with_main`` puts a ``main`` calling every file's function into file 0 so the objects
        can be linked into a program."""
        sources = self._write_sources(n, Path(workdir), tag, work=work, with_main=with_main)
        commands = [(["icecc", "gcc", *cflags, "-c", str(s), "-o", str(s.with_suffix(".o"))], s, s.with_suffix(".o"))
                    for s in sources]
        return self._run_clients(commands, jobs, env, timeout, node)

    def compile_failing(self, n: int, workdir: str | os.PathLike[str], jobs: int | None = None, *,
                        tag: str = "bad", env: Mapping[str, str] | None = None,
                        timeout: float = 120.0) -> list[CompileResult]:
        """Like :meth:`compile_files` but every file has a syntax error (each result is non-zero)."""
        sources = self._write_sources(n, Path(workdir), tag, broken=True)
        commands = [(["icecc", "gcc", "-c", str(s), "-o", str(s.with_suffix(".o"))], s, s.with_suffix(".o"))
                    for s in sources]
        return self._run_clients(commands, jobs, env, timeout)

    def link(self, objects: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
             extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
             timeout: float = 60.0, node: int = 1) -> CompileResult:
        """``icecc gcc OBJS -o OUTPUT``: not a compile, so icecc runs it as a local job
        (MON_LOCAL_JOB_BEGIN / JOB_LOCAL_DONE) on daemon ``node``. Use ``extra_args=['-r']`` for
        objects without main."""
        argv = ["icecc", "gcc", *extra_args, *map(str, objects), "-o", str(output)]
        return self._run_clients([(argv, None, Path(output))], 1, env, timeout, node)[0]

    def icerun(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float = 60.0) -> CompileResult:
        """``icerun ARGV`` from namespace A: a local job on node1."""
        return self._run_clients([(["icerun", *map(str, argv)], None, None)], 1, env, timeout)[0]

    # -- faults -----------------------------------------------------------------------------

    def daemon(self, k: int) -> _Daemon:
        return self.daemons[k - 1]

    def daemon_pid(self, k: int) -> int | None:
        d = self.daemon(k)
        return d.proc.pid if d.proc is not None else None

    def kill_daemon(self, k: int, sig: int = signal.SIGKILL) -> None:
        """Signal daemon k's whole process group (the daemon and its job children) by pid."""
        d = self.daemon(k)
        if d.proc is None or d.proc.returncode is not None:
            return
        _signal_group(d.proc.pid, sig)  # leader not reaped yet, so the group id is still ours
        try:
            d.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _terminate(d.proc)

    def start_daemon(self, k: int, *, wait: bool = True) -> dict[str, int] | None:
        """(Re)start daemon k after :meth:`kill_daemon`; it logs in with a new host id."""
        d = self.daemon(k)
        if self._daemon_running(d):
            raise RuntimeError(f"{d.node} is still running")
        self._start_daemon(d)
        return self.wait_ready(nodes=[d.node]) if wait else None

    def kill_daemon_while_compiling(self, k: int, workdir: str | os.PathLike[str], *, files: int = 1,
                                    work: int = 600, tap: MonitorTap | None = None,
                                    hold_clients: bool = True, wait_clients: bool = True,
                                    timeout: float = 60.0) -> KillReport:
        """Start ``files`` slow compiles pinned to node k (ICECC_PREFERRED_HOST), wait until the
        scheduler reports MON_JOB_BEGIN on that host, then SIGKILL daemon k (and its job children).

        The scheduler then sends ``State:Offline`` for the host and MON_JOB_DONE exit 255 for every
        job still attached to it. That races with the clients: a client notices the dead TCP
        connection too, and its local daemon reports JOB_DONE exit 118 (flags FROM_SUBMITTER);
        a job closed that way gets no 255 (measured: with 3 files, one 255 and two 118). With
        ``hold_clients`` (default) the clients are SIGSTOPped around the kill and continued once
        the scheduler has reported the host offline and a MON_JOB_DONE for each begun job, which
        makes the 255s deterministic for the jobs in ``job_ids``.

        The clients then recover by compiling locally (MON_LOCAL_JOB_BEGIN / JOB_LOCAL_DONE on
        node1) and still exit 0. With ``wait_clients`` their results are collected; otherwise the
        running Popen objects are in the report (stop() kills them if left running).
        """
        if k == 1:
            raise ValueError("node1 is the clients' local daemon; kill a remote one (k >= 2)")
        d = self.daemon(k)
        own_tap = tap is None
        tap = tap or self.monitor()
        try:
            hostid: int = tap.wait_for(lambda _: tap.host_ids().get(d.node), timeout=10, what=f"{d.node} host id")
            already = {f.job_begin()["job_id"] for f in tap.frames(MON_JOB_BEGIN)}
            sources = self._write_sources(files, Path(workdir), f"slow{k}", work=work)
            env = self.client_env({"ICECC_PREFERRED_HOST": d.node})
            clients = [self.popen_in_a(["icecc", "gcc", "-O2", "-c", str(s), "-o", str(s.with_suffix(".o"))],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                       for s in sources]
            t0 = time.monotonic()

            def begun(frames: list[MonFrame]) -> list[int]:
                return [j["job_id"] for j in (f.job_begin() for f in frames if f.type == MON_JOB_BEGIN)
                        if j["hostid"] == hostid and j["job_id"] not in already]

            job_ids: list[int] = tap.wait_for(begun, timeout=timeout, what=f"MON_JOB_BEGIN on {d.node}")
            pid = d.proc.pid if d.proc else -1
            # Each client is the leader of its own group (popen_in_a) and not reaped yet, so
            # signalling the group by its id is safe; it also freezes the client's cpp child.
            held = [c for c in clients if hold_clients and not _exited_unreaped(c.pid)]
            for c in held:
                _signal_group(c.pid, signal.SIGSTOP)
            try:
                self.kill_daemon(k, signal.SIGKILL)
                if held:
                    def settled(frames: list[MonFrame]) -> bool:
                        offline = any(f.stats() == (hostid, {"State": "Offline"})
                                      for f in frames if f.type == MON_STATS)
                        done = {f.job_done()["job_id"] for f in frames if f.type == MON_JOB_DONE}
                        return offline and set(job_ids) <= done

                    tap.wait_for(settled, timeout=15, what=f"{d.node} offline and its jobs done")
            finally:
                for c in held:
                    _signal_group(c.pid, signal.SIGCONT)
            report = KillReport(d.node, hostid, pid, job_ids, clients=clients)
            if wait_clients:
                for s, c in zip(sources, clients):
                    try:
                        out, err = c.communicate(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        _terminate(c)
                        out, err = c.communicate()
                    report.results.append(CompileResult(list(map(str, c.args)), c.returncode, out, err,
                                                        time.monotonic() - t0, s, s.with_suffix(".o")))
            return report
        finally:
            if own_tap:
                tap.close()

    def restart_scheduler(self, *, wait: bool = True) -> dict[str, int] | None:
        """Stop the scheduler by pid and start a new one on the same port. Daemons notice the lost
        connection and reconnect after ~3 s (ICECC_TESTS); with ``wait`` block until all running
        daemons are back (host ids restart at 1). Monitors connected before are closed by the old
        scheduler's exit and must reconnect."""
        self.stop_scheduler()
        return self.start_scheduler(wait=wait)

    def stop_scheduler(self) -> None:
        """Stop the scheduler by pid (daemons keep trying to reconnect; see start_scheduler)."""
        if self._scheduler is not None:
            _terminate(self._scheduler)

    def start_scheduler(self, *, wait: bool = True) -> dict[str, int] | None:
        """Start a scheduler on the same port after stop_scheduler; with ``wait`` block until
        all running daemons are back (host ids restart at 1)."""
        self._start_scheduler()
        return self.wait_ready() if wait else None


def _give_to_icecc(path: Path) -> None:
    """Make ``path`` owned by user 'icecc' (0755), as which the scheduler and daemons run."""
    try:
        pw = pwd.getpwnam("icecc")
    except KeyError:  # cannot happen after require_real_cluster_support(); be lenient anyway
        os.chmod(path, 0o777)
        return
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o755)


def _base_env() -> dict[str, str]:
    """Our environment minus any ICECC_* / USE_SCHEDULER the caller happens to have set, so a
    developer's own icecream settings cannot leak into (or out of) the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICECC") and k != "USE_SCHEDULER"}
    env["LC_ALL"] = "C"  # stable compiler diagnostics
    return env


# --------------------------------------------------------------------------------------------
# Script entry points
# --------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mon = sub.add_parser("monitor", help="(internal) log in as a monitor and print frames as JSON lines")
    mon.add_argument("host")
    mon.add_argument("port", type=int)
    mon.add_argument("--version", type=int, default=PROTOCOL_VERSION)
    mon.add_argument("--connect-timeout", type=float, default=30.0)
    wake = sub.add_parser("waker", help="(internal) keep the scheduler's main loop from sleeping")
    wake.add_argument("host")
    wake.add_argument("port", type=int)
    wake.add_argument("--interval", type=float, default=0.3)
    sub.add_parser("cleanup", help="delete namespaces/temp dirs left behind by dead test runs")
    demo = sub.add_parser("demo", help="start a cluster, compile a few files, print what happened")
    demo.add_argument("-n", "--daemons", type=int, default=3)
    args = parser.parse_args(argv)

    if args.cmd == "monitor":
        return _monitor_main(args.host, args.port, args.version, args.connect_timeout)
    if args.cmd == "waker":
        return _waker_main(args.host, args.port, args.interval)
    if args.cmd == "cleanup":
        for item in cleanup_stale():
            print("removed", item)
        return 0
    t0 = time.monotonic()
    with Cluster(args.daemons) as cluster:
        print(f"cluster up in {time.monotonic() - t0:.1f} s: {cluster.host_ids()}")
        with cluster.monitor() as tap:
            t1 = time.monotonic()
            results = cluster.compile_files(6, cluster.tmpdir / "demo")
            print(f"6 compiles in {time.monotonic() - t1:.1f} s, exit codes {[r.returncode for r in results]}")
            tap.wait_quiet()
            names = {hid: fields.get("Name") for hid, fields in tap.hosts().items()}
            print("jobs per node:", [names.get(f.job_begin()["hostid"]) for f in tap.frames(MON_JOB_BEGIN)])
    return 0


if __name__ == "__main__":
    sys.exit(_main())
