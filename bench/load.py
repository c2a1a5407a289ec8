"""icetools serve under load, against a real icecream cluster: the figures to watch.

    python bench/load.py                  # 11,000 jobs, 50 viewers (10 never read): ~2-3 minutes
    python bench/load.py --quick          # 300 jobs, 4 viewers (1 never reads): well under a minute
    python bench/load.py --jobs 3000 --viewers 20 --stalled 5 --json

Needs root, Debian's icecc and iproute2 (the cluster of tests/realcluster.py: a scheduler and
daemons in network namespaces, nothing in the root namespace, no route out). It starts:

* the cluster (3 daemons; node2 and node3 compile, node1 is every client's local daemon);
* ``icetools serve --record FILE`` from this checkout, inside namespace A, listening on
  127.0.0.1 there;
* an independent raw monitor (realcluster's MonitorTap: its own scheduler login, every frame
  as received);
* a viewer process inside namespace A with V websocket viewers: V - S read everything (the
  ``websockets`` client, with the Origin and Host a browser would send), S complete the
  websocket handshake on a raw socket with a tiny receive buffer and then never read again;
* a burst of N jobs: ``icerun true`` local jobs and tiny ``icecc gcc -c`` remote compiles
  (``--remote-share``), through ``xargs -P`` inside namespace A.

Then it prints, side by side, what icetools recorded and what the independent monitor saw
(frames lost, byte-identical), drops by the scheduler, the viewers' latency and coverage, serve's
CPU and peak memory, and what became of the stalled viewers. bench/README.md defines every
figure. It asserts nothing (tests/test_load_bench.py checks a --quick run); the exit status is 0
when the run completed, whatever the figures, and 1 with one ``load.py: error: ...`` line when
it could not run. Everything it started is stopped by pid and the namespaces removed, also on
Ctrl-C, SIGTERM or an error.

Progress goes to stderr, the report (or with --json one JSON document) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVE_PORT = 18771
#: Job done frames: remote (MON_JOB_DONE) and local (JOB_LOCAL_DONE) jobs.
MON_JOB_DONE, JOB_LOCAL_DONE = 0x55, 0x4F
#: Frames that start a job: its first appearance in the stream (alignment point).
JOB_START_TYPES = (0x53, 0x56)  # MON_GET_CS, MON_LOCAL_JOB_BEGIN
#: A never-reading viewer's receive buffer: the kernel rounds it up to its minimum (~2.3 KiB),
#: so the server's sends back up into its own socket within the first few messages.
STALLED_RCVBUF = 1024
TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}


def log(message: str) -> None:
    print(f"load: {message}", file=sys.stderr, flush=True)


def job_key(local: bool, job_id: int) -> str:
    """One name for a job on both sides: local and remote job ids are separate counters."""
    return f"{'L' if local else 'R'}{job_id}"


# ------------------------------------------------------------------------------------------
# The viewer process: `python bench/load.py _viewers PORT READERS STALLED RESULTS`, run inside
# namespace A (Python 3.11 has no os.setns, so a process rather than a thread). Talks to the
# parent by JSON lines: it prints {"ev": "ready"} once every viewer is connected, then waits for
# {"cmd": "finish", "expect": [keys], "timeout": s} on stdin, waits until every reading viewer has
# seen every expected job finish (or the timeout), writes RESULTS and prints {"ev": "done"}.


def _tcp_table() -> dict[tuple[int, int], tuple[str, int, int]]:
    """(local port, remote port) -> (state, tx_queue, rx_queue) of IPv4 TCP sockets on
    127.0.0.1 in this process's network namespace (/proc/net is per namespace)."""
    table: dict[tuple[int, int], tuple[str, int, int]] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state, queues = parts[1], parts[2], parts[3], parts[4]
            tx, rx = queues.split(":")
            table[(int(local.split(":")[1], 16), int(remote.split(":")[1], 16))] = (
                TCP_STATES.get(state, state), int(tx, 16), int(rx, 16))
    return table


def _wait_served(port: int, hosts: int, timeout: float) -> None:
    """Until serve's /api/state says live with every host (serve logs in, then reports them)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5) as r:
                state = json.loads(r.read())
            last = state["status"]
            if state["status"]["state"] == "live" and len(state["hosts"]) >= hosts:
                return
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise SystemExit(f"serve not live with {hosts} hosts after {timeout:.0f} s (last: {last})")


def _stalled_viewer(port: int) -> socket.socket:
    """A real websocket client that completes the handshake and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect(), so the tiny window is what the SYN announces (no window scaling).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
         f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         "Sec-WebSocket-Version: 13\r\nUser-Agent: icetools-load-bench (stalled)\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:  # the snapshot may follow in the same segment: it stays unread
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit(f"stalled viewer: connection closed during the handshake: {head!r}")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise SystemExit(f"stalled viewer: handshake refused: {status.decode(errors='replace')}")
    return sock


class _Reader:
    """One reading viewer: when it first saw each job finished, and what it received."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.messages = 0
        self.bytes = 0
        self.snapshots = 0
        self.closed: str | None = None


async def _read_viewer(port: int, reader: _Reader, connected: asyncio.Event) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    from websockets.typing import Origin

    try:
        async with connect(f"ws://127.0.0.1:{port}/ws", origin=Origin(f"http://127.0.0.1:{port}"),
                           compression=None, max_size=None, open_timeout=30,
                           user_agent_header="icetools-load-bench") as ws:
            async for text in ws:
                t = time.monotonic()
                data = json.loads(text)
                reader.messages += 1
                reader.bytes += len(text)
                if data["type"] == "delta":
                    finished = data["finished"]
                elif data["type"] == "snapshot":
                    reader.snapshots += 1
                    finished = data["state"]["recent"]
                    connected.set()
                else:
                    continue
                seen = reader.seen
                for job in finished:
                    key = job_key(job["local"], job["id"])
                    if key not in seen:
                        seen[key] = t
    except ConnectionClosed as e:
        reader.closed = f"closed by server: {e}"
    except OSError as e:
        reader.closed = f"{type(e).__name__}: {e}"
    finally:
        connected.set()


async def _viewers_main(port: int, readers_n: int, stalled_n: int, results: Path) -> None:
    loop = asyncio.get_running_loop()
    readers = [_Reader() for _ in range(readers_n)]
    events = [asyncio.Event() for _ in readers]
    tasks = [asyncio.create_task(_read_viewer(port, r, e)) for r, e in zip(readers, events)]
    for e in events:
        await e.wait()
    stalled = [await loop.run_in_executor(None, _stalled_viewer, port) for _ in range(stalled_n)]
    ports = [s.getsockname()[1] for s in stalled]
    # Watch the stalled connections from both ends: the server-side socket leaving ESTABLISHED
    # (or vanishing) is the server dropping that viewer.
    watch: list[dict[str, Any]] = [{"port": p, "dropped_at": None, "server_state": "ESTABLISHED",
                                    "client_state": "ESTABLISHED", "max_server_txq": 0, "max_client_rxq": 0}
                                   for p in ports]

    async def watch_stalled() -> None:
        while True:
            table = _tcp_table()
            now = time.monotonic()
            for w in watch:
                server = table.get((port, w["port"]))
                client = table.get((w["port"], port))
                w["server_state"] = server[0] if server else "gone"
                w["client_state"] = client[0] if client else "gone"
                if server:
                    w["max_server_txq"] = max(w["max_server_txq"], server[1])
                if client:
                    w["max_client_rxq"] = max(w["max_client_rxq"], client[2])
                if w["dropped_at"] is None and w["server_state"] != "ESTABLISHED":
                    w["dropped_at"] = now
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_stalled())
    print(json.dumps({"ev": "ready", "readers": sum(r.closed is None for r in readers),
                      "stalled": len(stalled), "t": time.monotonic()}), flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        return  # parent gone
    command = json.loads(line)
    expect = set(command["expect"])
    deadline = time.monotonic() + command["timeout"]
    while time.monotonic() < deadline:
        if all(expect <= r.seen.keys() or r.closed for r in readers):
            break
        await asyncio.sleep(0.1)
    watcher.cancel()
    out = {
        "readers": [{"seen": {k: v for k, v in r.seen.items() if k in expect}, "messages": r.messages,
                     "bytes": r.bytes, "snapshots": r.snapshots, "closed": r.closed} for r in readers],
        "stalled": watch,
        "cpu_seconds": sum(os.times()[:2]),
    }
    results.write_text(json.dumps(out))
    print(json.dumps({"ev": "done"}), flush=True)
    for t in tasks:
        t.cancel()
    for s in stalled:
        s.close()


# ------------------------------------------------------------------------------------------
# The driver (root namespace).


class ProcSampler(threading.Thread):
    """CPU seconds and memory of one process, from /proc, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="load-sampler")
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu s, VmRSS kB)
        self.hwm_kb = 0
        self._stop = threading.Event()

    def read(self) -> tuple[float, int, int] | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{self.pid}/status") as f:
                status = {k: v for k, _, v in (line.partition(":") for line in f)}
        except OSError:
            return None
        cpu = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime: fields 14, 15
        return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])

    def sample(self) -> tuple[float, float, int] | None:
        got = self.read()
        if got is None:
            return None
        cpu, rss, hwm = got
        self.hwm_kb = max(self.hwm_kb, hwm)
        self.samples.append((time.monotonic(), cpu, rss))
        return self.samples[-1]

    def run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0-100) of values, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def read_recording(path: Path) -> tuple[list[bytes], int, int]:
    """The recording's frames (type word + payload, as the monitor tap sees them), its
    disconnect records and its connect records."""
    sys.path.insert(0, str(ROOT))
    from icetools.capture import CaptureReader, ConnectRecord, DisconnectRecord, FrameRecord

    frames: list[bytes] = []
    disconnects = connects = 0
    with CaptureReader(path) as reader:
        for record in reader:
            if type(record) is FrameRecord:
                frames.append(record.data[4:])  # drop the length word
            elif type(record) is DisconnectRecord:
                disconnects += 1
            elif type(record) is ConnectRecord:
                connects += 1
    return frames, disconnects, connects


def compare_frames(tapped: list[bytes], recorded: list[bytes]) -> dict[str, Any]:
    """Compare the two streams over the burst's span: from the first job frame the monitor saw
    in the burst to its last done frame (the span is cut there because the two logins happened
    at different moments, and stats reports keep coming after the burst)."""
    first = next((i for i, f in enumerate(tapped) if int.from_bytes(f[:4], "big") in JOB_START_TYPES), None)
    last = max((i for i, f in enumerate(tapped) if int.from_bytes(f[:4], "big") in (MON_JOB_DONE, JOB_LOCAL_DONE)),
               default=None)
    if first is None or last is None:
        return {"span_frames": 0, "recorded_in_span": 0, "lost": 0, "identical": False,
                "note": "the monitor saw no job in the burst"}
    span = tapped[first:last + 1]
    try:
        start = recorded.index(span[0])
    except ValueError:
        return {"span_frames": len(span), "recorded_in_span": 0, "lost": len(span), "identical": False,
                "note": "the burst's first frame is not in the recording"}
    theirs = recorded[start:start + len(span)]
    mismatch = next((i for i, (a, b) in enumerate(zip(span, theirs)) if a != b), None)
    # Frames lost: those of the monitor's span that the recording does not have, matched as a
    # multiset (so a reordering would not count as loss; it shows as not identical instead).
    remaining: dict[bytes, int] = {}
    for f in recorded[start:]:
        remaining[f] = remaining.get(f, 0) + 1
    lost = 0
    for f in span:
        if remaining.get(f):
            remaining[f] -= 1
        else:
            lost += 1
    return {"span_frames": len(span), "recorded_in_span": len(span) - lost, "lost": lost,
            "identical": mismatch is None and len(theirs) == len(span),
            "first_mismatch": mismatch}


def burst_script(local: int, remote: int, parallel_local: int, parallel_remote: int, workdir: Path) -> str:
    """Shell for namespace A: both kinds of job at once, each through its own xargs pool."""
    # Exit status: xargs says 123 when one of its commands failed; the script ORs both.
    local_cmd = f"seq {local} | xargs -P {parallel_local} -n 1 icerun true" if local else "true"
    remote_cmd = (f"seq {remote} | xargs -P {parallel_remote} -I@ icecc gcc -c tiny.c -o o/@.o"
                  if remote else "true")
    # `icerun true N`: a local job on node1 (MON_LOCAL_JOB_BEGIN + JOB_LOCAL_DONE); true ignores N.
    # A one-line C file compiled on node2..N: MON_GET_CS, MON_JOB_BEGIN, MON_JOB_DONE.
    return (f"cd {workdir} && mkdir -p o || exit 1; {local_cmd} & l=$!; {remote_cmd} & r=$!; "
            "wait $l; a=$?; wait $r; b=$?; exit $((a | b))")


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests import realcluster
    from tests.realcluster import Cluster, MonitorTap

    reason = realcluster.require_real_cluster_support()
    if reason is not None:
        raise RuntimeError(reason)
    work = Path(tempfile.mkdtemp(prefix="icet-load-", dir="/tmp"))
    remote = round(args.jobs * args.remote_share)
    local = args.jobs - remote
    readers_n = args.viewers - args.stalled
    report: dict[str, Any] = {
        "params": {"jobs": args.jobs, "local_jobs": local, "remote_jobs": remote, "viewers": args.viewers,
                   "stalled": args.stalled, "daemons": args.daemons, "parallel_local": args.parallel_local,
                   "parallel_remote": args.parallel_remote},
    }
    cluster = Cluster(args.daemons, tmpdir=work / "cluster", max_jobs=args.max_jobs, verbose_logs=False)
    tap: MonitorTap | None = None
    serve: subprocess.Popen[str] | None = None
    viewers: subprocess.Popen[str] | None = None
    sampler: ProcSampler | None = None
    try:
        t_start = time.monotonic()
        log(f"work folder {work}; starting a {args.daemons}-daemon cluster in network namespaces")
        cluster.start()
        log(f"cluster up in {cluster.startup_seconds:.1f} s; warming up (node1 builds the compiler environment)")
        warm = cluster.compile_files(2, work / "warm", tag="warm")
        if not all(r.ok for r in warm):
            raise RuntimeError(f"warm-up compile failed: {warm[0].stderr.strip()[-300:]}")
        (work / "burst").mkdir()
        (work / "burst" / "tiny.c").write_text("int tiny(int x) { return x + 1; }\n")

        tap = cluster.monitor()
        tap.wait_connected()
        env = cluster.client_env({"PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
        recording = work / "served.icecap"
        with open(work / "serve.err", "w") as err:
            serve = cluster.popen_in_a(
                [sys.executable, "-m", "icetools", "serve", "-s", f"127.0.0.1:{cluster.scheduler_port}",
                 "--listen", f"127.0.0.1:{args.port}", "--record", str(recording)],
                cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True)
        sampler = ProcSampler(serve.pid)  # `ip netns exec` execs: this is serve's own pid
        sampler.start()
        with open(work / "viewers.err", "w") as err:
            viewers = cluster.popen_in_a(
                [sys.executable, "-u", str(Path(__file__).resolve()), "_viewers", str(args.port), str(readers_n),
                 str(args.stalled), str(args.daemons), str(work / "viewers.json")],
                cwd=str(ROOT), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        assert viewers.stdin is not None and viewers.stdout is not None
        ready_line = viewers.stdout.readline()
        if not ready_line:
            raise RuntimeError(f"viewers could not connect: {(work / 'viewers.err').read_text().strip()[-500:]}"
                               f"; serve: {(work / 'serve.err').read_text().strip()[-300:]}")
        ready = json.loads(ready_line)
        log(f"serve live; {ready['readers']} reading and {ready['stalled']} stalled viewers connected")
        tap.wait_for(lambda fr: len(tap.hosts()) >= args.daemons, 30, "every host on the monitor")

        before = len(tap.frames())
        cpu0 = sampler.sample()
        t_burst = time.monotonic()
        log(f"burst: {local} local jobs (icerun, {args.parallel_local} at a time) and {remote} remote "
            f"compiles (icecc, {args.parallel_remote} at a time)")
        burst = cluster.run_in_a(["sh", "-c", burst_script(local, remote, args.parallel_local,
                                                           args.parallel_remote, work / "burst")],
                                 capture_output=True, text=True, timeout=args.timeout)
        t_clients = time.monotonic()
        if burst.returncode != 0:
            log(f"some burst clients failed (exit {burst.returncode}): {burst.stderr.strip()[-300:]}")

        def done_frames(frames: list[Any]) -> list[Any]:
            return [f for f in frames[before:] if f.type in (MON_JOB_DONE, JOB_LOCAL_DONE)]

        try:
            tap.wait_for(lambda fr: len(done_frames(fr)) >= args.jobs, 60, f"{args.jobs} jobs done on the monitor")
        except TimeoutError as e:
            log(str(e).splitlines()[0][:200])
        tap.wait_quiet(1.0, 10.0)
        t_done = time.monotonic()
        done_at: dict[str, float] = {}
        for f in done_frames(tap.frames()):
            key = job_key(f.type == JOB_LOCAL_DONE, int.from_bytes(f.payload[:4], "big"))
            done_at.setdefault(key, f.t_recv if f.t_recv is not None else f.t)
        log(f"{len(done_at)} jobs done in {t_done - t_burst:.1f} s; waiting for the viewers to see them")
        viewers.stdin.write(json.dumps({"cmd": "finish", "expect": sorted(done_at), "timeout": args.settle}) + "\n")
        viewers.stdin.flush()
        done_line = viewers.stdout.readline()
        if not done_line:
            raise RuntimeError(f"viewer process died: {(work / 'viewers.err').read_text().strip()[-500:]}")
        cpu1 = sampler.sample()
        sampler.stop()
        if cpu0 is None or cpu1 is None:
            raise RuntimeError(f"serve exited early: {(work / 'serve.err').read_text().strip()[-500:]}")
        serve_alive = serve.poll() is None
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass  # stop() below kills it; the report says so
        tapped = [f.type.to_bytes(4, "big") + f.payload for f in tap.frames()]
        tap_closed = tap.closed
        vr = json.loads((work / "viewers.json").read_text())
        frames, disconnects, connects = read_recording(recording)

        # ---- figures
        cmp = compare_frames(tapped[before:], frames)
        latencies: list[float] = []
        seen_counts: list[int] = []
        last_seen: list[float] = []
        for r in vr["readers"]:
            seen = r["seen"]
            seen_counts.append(len(seen))
            last_seen += seen.values()
            latencies += [(t - done_at[k]) * 1000 for k, t in seen.items()]
        stalled = vr["stalled"]
        report.update({
            "frames": {"monitor": cmp["span_frames"], "recorded": cmp["recorded_in_span"], "lost": cmp["lost"],
                       "identical": cmp["identical"], "first_mismatch": cmp.get("first_mismatch"),
                       "recording_total": len(frames), "monitor_total": len(tapped)},
            "scheduler_drops": {"serve_disconnects": disconnects, "serve_connects": connects,
                                "monitor_closed": tap_closed},
            "jobs": {"requested": args.jobs, "done": len(done_at),
                     "done_local": sum(k[0] == "L" for k in done_at),
                     "done_remote": sum(k[0] == "R" for k in done_at),
                     "clients_failed": burst.returncode != 0},
            "viewers": {"reading": len(vr["readers"]),
                        "seen_min": min(seen_counts, default=0), "seen_max": max(seen_counts, default=0),
                        "all_saw_all": all(c == len(done_at) for c in seen_counts),
                        "closed": sum(r["closed"] is not None for r in vr["readers"]),
                        "extra_snapshots": sum(r["snapshots"] - 1 for r in vr["readers"]),
                        "messages_per_viewer": round(statistics.mean([r["messages"] for r in vr["readers"]]), 1)
                        if vr["readers"] else 0,
                        "mb_per_viewer": round(statistics.mean([r["bytes"] for r in vr["readers"]]) / 1e6, 2)
                        if vr["readers"] else 0,
                        "latency_ms": {"min": _round(min(latencies, default=None)),
                                       "p50": _round(percentile(latencies, 50)),
                                       "p99": _round(percentile(latencies, 99)),
                                       "max": _round(max(latencies, default=None)),
                                       "samples": len(latencies)},
                        "process_cpu_seconds": round(vr["cpu_seconds"], 2)},
            "stalled": {"count": len(stalled),
                        "dropped": sum(s["dropped_at"] is not None for s in stalled),
                        "dropped_after_s": [round(s["dropped_at"] - t_burst, 1) for s in stalled
                                            if s["dropped_at"] is not None],
                        "server_states": sorted({s["server_state"] for s in stalled}),
                        "max_server_send_queue": max((s["max_server_txq"] for s in stalled), default=0),
                        "max_client_recv_queue": max((s["max_client_rxq"] for s in stalled), default=0)},
            "serve": {"cpu_seconds_burst": round(cpu1[1] - cpu0[1], 2),
                      "cpu_seconds_total": round(cpu1[1], 2),
                      "cpu_share_burst": round((cpu1[1] - cpu0[1]) / max(cpu1[0] - cpu0[0], 1e-9), 2),
                      "rss_mb_before": round(cpu0[2] / 1024, 1), "peak_rss_mb": round(sampler.hwm_kb / 1024, 1),
                      "alive_at_end": serve_alive, "exit_status": serve.returncode},
            "seconds": {"burst_clients": round(t_clients - t_burst, 1),
                        "monitor_last_done": round(max(done_at.values(), default=t_burst) - t_burst, 1),
                        "viewers_last_seen": round(max(last_seen, default=t_burst) - t_burst, 1),
                        "whole_run": round(time.monotonic() - t_start, 1)},
        })
        return report
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in (viewers, serve):
            if proc is not None and proc.poll() is None:
                realcluster._terminate(proc, grace=2.0)
        if tap is not None:
            tap.close()
        cluster.stop()  # every process it started, by pid; then the namespaces
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def render(r: dict[str, Any], revision: str) -> str:
    p, fr, sd, jobs, v, st, sv, sec = (r["params"], r["frames"], r["scheduler_drops"], r["jobs"], r["viewers"],
                                      r["stalled"], r["serve"], r["seconds"])
    lat = v["latency_ms"]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f} ms"

    # Side by side: what icetools serve has against what the independent monitor saw.
    pairs = [
        ("frames in the burst's span", f"{fr['recorded']:,}", f"{fr['monitor']:,}"),
        ("frames lost", f"{fr['lost']:,}", "-"),
        ("byte-identical to the monitor's", "yes" if fr["identical"] else f"NO (first difference: frame {fr['first_mismatch']})", "-"),
        ("dropped by the scheduler", f"{sd['serve_disconnects']} (logins {sd['serve_connects']})",
         "yes" if sd["monitor_closed"] else "0"),
        ("jobs done", f"{v['seen_min']:,} (fewest any reading viewer saw)",
         f"{jobs['done']:,} ({jobs['done_local']:,} local, {jobs['done_remote']:,} remote)"),
    ]
    # serve and its viewers alone.
    rows = [
        ("viewer latency p50 / p99 / max", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])} "
         f"(min {ms(lat['min'])}; {lat['samples']:,} viewer-job pairs)"),
        ("reading viewers", f"{v['reading']}; every one saw every job: {'yes' if v['all_saw_all'] else 'NO'}; "
         f"closed {v['closed']}; catch-up snapshots {v['extra_snapshots']}"),
        ("received per reading viewer", f"{v['messages_per_viewer']:,} messages, {v['mb_per_viewer']} MB"),
        ("stalled viewers", f"{st['count']}; dropped by serve: {st['dropped']}"
         + (f" (after {', '.join(f'{x} s' for x in st['dropped_after_s'])})" if st["dropped_after_s"] else "")
         + f"; serve's side of them at the end: {'/'.join(st['server_states']) or '-'}"),
        ("stalled queues (max)", f"serve's send queue {st['max_server_send_queue']:,} B, "
         f"viewer's receive queue {st['max_client_recv_queue']:,} B"),
        ("serve CPU", f"{sv['cpu_seconds_burst']} s from the burst's start until the viewers had it all "
         f"({sv['cpu_share_burst']:.0%} of a core); {sv['cpu_seconds_total']} s since start-up"),
        ("serve memory", f"peak RSS (VmHWM) {sv['peak_rss_mb']} MB; {sv['rss_mb_before']} MB before the burst"),
    ]
    w0 = max(len(a) for a, *_ in pairs + rows)
    w1 = max(len(b) for _, b, _ in pairs)
    width = w0 + w1 + 26
    lines = [
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; Linux {platform.release()}",
        f"icetools: {revision}; serve run as `python -m icetools serve --record` in namespace A",
        f"run: bench/load.py: {p['jobs']:,} jobs ({p['local_jobs']:,} icerun local, {p['remote_jobs']:,} icecc remote; "
        f"{p['parallel_local']} + {p['parallel_remote']} at a time), {p['daemons']} daemons, "
        f"{p['viewers']} viewers ({p['stalled']} never read); {sec['whole_run']} s, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        "",
        f"{'':{w0}}   {'icetools serve':{w1}}   independent monitor",
        "-" * width,
    ]
    lines += [f"{a:{w0}}   {b:{w1}}   {c}".rstrip() for a, b, c in pairs]
    lines.append("-" * width)
    lines += [f"{a:{w0}}   {b}" for a, b in rows]
    lines += [
        "-" * width,
        f"* burst (seconds from its start): the clients ran {sec['burst_clients']} s; the monitor saw the last job "
        f"done at {sec['monitor_last_done']} s; the last reading viewer saw its last job at {sec['viewers_last_seen']} s.",
        f"* viewer process (all {v['reading']} reading viewers, one asyncio process): {v['process_cpu_seconds']} s CPU.",
        f"* recording: {fr['recording_total']:,} frames in all; monitor: {fr['monitor_total']:,} "
        "(they logged in at different moments: compared over the burst's span).",
    ]
    if jobs["clients_failed"]:
        lines.append("* some burst clients exited non-zero (see --keep logs)")
    if not sv["alive_at_end"]:
        lines.append(f"* serve had exited before the end (status {sv['exit_status']})")
    return "\n".join(lines)


def _revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = ""
    return f"{ROOT} {rev or '(no git)'}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_viewers"]:
        port, readers_n, stalled_n, hosts, results = argv[1:6]
        _wait_served(int(port), int(hosts), 60)
        asyncio.run(_viewers_main(int(port), int(readers_n), int(stalled_n), Path(results)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=11_000, help="jobs in the burst (default 11000)")
    parser.add_argument("--remote-share", type=float, default=0.25,
                        help="share of the jobs that are remote icecc compiles; the rest are icerun local jobs "
                             "(default 0.25)")
    parser.add_argument("--viewers", type=int, default=50, help="websocket viewers (default 50)")
    parser.add_argument("--stalled", type=int, default=10, help="of those, how many never read (default 10)")
    parser.add_argument("--daemons", type=int, default=3, help="daemons in the cluster (default 3)")
    parser.add_argument("--max-jobs", type=int, default=4, help="-m of the compiling daemons (default 4)")
    parser.add_argument("--parallel-local", type=int, default=8, help="icerun clients at a time (default 8)")
    parser.add_argument("--parallel-remote", type=int, default=12, help="icecc clients at a time (default 12)")
    parser.add_argument("--port", type=int, default=SERVE_PORT, help=f"serve's port in namespace A ({SERVE_PORT})")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="how long the viewers may take to see every job after the monitor did (default 30 s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="limit for the burst's clients (default 900 s)")
    parser.add_argument("--quick", action="store_true",
                        help="a small run: 300 jobs, 4 viewers, 1 stalled (unless given explicitly)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (recording, logs)")
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in (("jobs", 300), ("viewers", 4), ("stalled", 1)):
            if f"--{name}" not in given:
                setattr(args, name, value)
    if not (args.jobs > 0 and 0 <= args.remote_share <= 1 and 0 <= args.stalled <= args.viewers
            and args.viewers - args.stalled >= 1 and args.daemons >= 2):
        print("load.py: error: need --jobs > 0, 0 <= --remote-share <= 1, --daemons >= 2 and at least one "
              "reading viewer (--stalled < --viewers)", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("load.py: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as e:
        print(f"load.py: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    report["revision"] = _revision()
    print(json.dumps(report, indent=2) if args.json else render(report, report["revision"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
