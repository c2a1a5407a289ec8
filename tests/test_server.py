"""The server over real sockets: HTTP paths, metrics, and the websocket protocol with many,
slow and misbehaving clients (docs/websocket-protocol.md)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from icetools.monitor import Monitor
from icetools.server import ClusterServer, ReplayDriver, Status

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
DEMO = RECORDINGS / "demo.icecap"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class Running:
    """A replay server on 127.0.0.1 and an ephemeral port, inside the test's event loop."""

    def __init__(self, capture: Path = DEMO, speed: float = 20.0, mode: str = "replay") -> None:
        self.status = Status(mode=mode)
        self.server = ClusterServer(Monitor(), self.status)
        self.driver = ReplayDriver(capture, self.status, self.server.hub, speed=speed)
        if mode == "replay":
            self.server.commands = self.driver.command
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Running:
        await self.server.start("127.0.0.1", 0)
        self.port = self.server.port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.tasks = [asyncio.create_task(self.driver.run()), asyncio.create_task(self.server.hub.run())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.close()


class Model:
    """A client-side model that applies snapshot and deltas exactly as the page does."""

    def __init__(self) -> None:
        self.hosts: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.totals: dict[str, Any] = {}
        self.seqs: list[int] = []
        self.kinds: list[str] = []
        self.status: dict[str, Any] = {}

    def apply(self, message: dict[str, Any]) -> None:
        self.seqs.append(message["seq"])
        self.kinds.append(message["type"])
        self.status = message["status"]
        if message["type"] == "snapshot":
            state = message["state"]
            self.hosts = {h["id"]: h for h in state["hosts"]}
            self.jobs = {j["id"]: j for j in state["jobs"]}
            self.totals = state["totals"]
            return
        for host in message["hosts"]:
            self.hosts[host["id"]] = host
        for host_id in message["removed_hosts"]:
            self.hosts.pop(host_id, None)
        for job in message["jobs"]:
            self.jobs[job["id"]] = job
        for job in message["finished"]:
            self.jobs.pop(job["id"], None)
        self.totals = message["totals"]


async def receive(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_ended(ws: Any, model: Model, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while model.status.get("state") != "ended":
        assert time.monotonic() < deadline, "replay did not end"
        model.apply(await receive(ws))


def http_get(port: int, raw_path: str) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET, so that paths like /static/../x reach the server unnormalised."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, body[:length]


def test_snapshot_then_deltas_rebuild_the_servers_state() -> None:
    async def main() -> None:
        async with Running(speed=200) as run, connect(run.url) as ws:
            model = Model()
            first = await receive(ws)
            assert first["type"] == "snapshot" and first["status"]["mode"] == "replay"
            model.apply(first)
            await until_ended(ws, model)
            # Once playing, a client that keeps up gets only deltas.
            assert "snapshot" not in model.kinds[model.kinds.index("delta") :]
            assert model.seqs == list(range(model.seqs[0], model.seqs[0] + len(model.seqs)))
            _, _, body = await asyncio.to_thread(http_get, run.port, "/api/state")
            state = json.loads(body)
            assert model.hosts == {h["id"]: h for h in state["hosts"]}
            assert model.jobs == {j["id"]: j for j in state["jobs"]}
            assert model.totals["remote_done"] == state["totals"]["remote_done"] == 442
            assert {h["name"] for h in model.hosts.values()} == {f"node{i}" for i in range(1, 7)}

    asyncio.run(main())


def test_fifty_clients_get_the_same_stream() -> None:
    async def main() -> None:
        async with Running(speed=400) as run:
            clients = [await connect(run.url) for _ in range(50)]
            try:
                models = [Model() for _ in clients]
                await asyncio.gather(*(until_ended(ws, model, 90) for ws, model in zip(clients, models)))
            finally:
                await asyncio.gather(*(ws.close() for ws in clients))
            finals = {json.dumps(m.totals, sort_keys=True) for m in models}
            assert len(finals) == 1
            assert all(m.totals["remote_done"] == 442 for m in models)

    asyncio.run(main())


def test_a_slow_client_skips_to_the_latest_state_without_slowing_others() -> None:
    async def main() -> None:
        async with Running(speed=25) as run:
            fast = await connect(run.url)
            # The slow client: a real websocket that stops reading for a while, with a tiny
            # receive buffer so that the server's writes to it back up.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", run.port))
            slow = await connect(run.url, sock=sock, max_queue=1)
            slow_transport = slow.transport
            slow_transport.pause_reading()
            fast_model = Model()
            started = time.monotonic()
            gaps: list[float] = []
            last = started
            while time.monotonic() - started < 4:
                fast_model.apply(await receive(fast))
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            assert max(gaps[1:]) < 1.0  # deltas kept coming every ~100 ms
            assert fast_model.seqs == list(range(fast_model.seqs[0], fast_model.seqs[0] + len(fast_model.seqs)))
            # Back to a normal receive buffer: with the tiny one, the kernel would trickle the
            # backlog out on its zero-window probes (seconds apart), which is not what is tested.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            slow_transport.resume_reading()
            slow_model = Model()
            await until_ended(slow, slow_model)
            await until_ended(fast, fast_model)
            # It missed deltas, so after the backlog it was sent a newer snapshot (a jump in seq),
            # and it ends in the same state as everyone else.
            jumps = [i for i in range(1, len(slow_model.seqs)) if slow_model.seqs[i] > slow_model.seqs[i - 1] + 1]
            assert jumps, slow_model.seqs
            assert all(slow_model.kinds[i] == "snapshot" for i in jumps)
            assert slow_model.totals == fast_model.totals
            await fast.close()
            await slow.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("payload", "code"),
    [("not json", 1003), ("[1, 2]", 1003), ("x" * 5000, 1009)],
    ids=["not-json", "not-an-object", "oversized"],
)
def test_garbage_clients_are_closed_and_nobody_else_notices(payload: str, code: int) -> None:
    async def main() -> None:
        async with Running(speed=50) as run, connect(run.url) as good, connect(run.url) as bad:
            await receive(good)
            await receive(bad)
            await bad.send(payload)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await receive(bad)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
            seq = (await receive(good))["seq"]
            assert (await receive(good))["seq"] == seq + 1  # still flowing

    asyncio.run(main())


def test_replay_controls_pause_speed_and_seek() -> None:
    async def main() -> None:
        async with Running(speed=5) as run, connect(run.url) as ws:
            model = Model()
            model.apply(await receive(ws))
            await ws.send(json.dumps({"cmd": "pause"}))
            while model.status["state"] != "paused":
                model.apply(await receive(ws))
            paused_at = model.status["position"]
            await asyncio.sleep(0.5)
            _, _, body = await asyncio.to_thread(http_get, run.port, "/api/state")
            assert json.loads(body)["t"] <= paused_at + 0.01
            await ws.send(json.dumps({"cmd": "speed", "value": 50}))
            await ws.send(json.dumps({"cmd": "seek", "t": 100}))
            while not (model.kinds[-1] == "snapshot" and model.status["position"] == 100):
                model.apply(await receive(ws))
            assert model.status["speed"] == 50 and model.status["state"] == "paused"
            assert 200 < model.totals["remote_done"] < 442
            await ws.send(json.dumps({"cmd": "play"}))
            await until_ended(ws, model)
            assert model.totals["remote_done"] == 442
            await ws.send(json.dumps({"cmd": "speed", "value": 0}))
            error = await receive(ws)
            assert error == {"type": "error", "message": "speed must be a number from 0.1 to 1000"}

    asyncio.run(main())


def test_a_live_view_refuses_replay_controls() -> None:
    async def main() -> None:
        async with Running(mode="live") as run, connect(run.url) as ws:
            await receive(ws)
            await ws.send(json.dumps({"cmd": "pause"}))
            while (message := await receive(ws))["type"] != "error":
                pass
            assert "only accepted by icetools replay --serve" in message["message"]

    asyncio.run(main())


def test_http_paths() -> None:
    async def main() -> None:
        async with Running(speed=50) as run:
            get = lambda path: asyncio.to_thread(http_get, run.port, path)  # noqa: E731
            status, headers, body = await get("/")
            assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in body.lower()
            status, headers, _ = await get("/static/vendor/d3.v7.min.js")
            assert status == 200 and "javascript" in headers["content-type"]
            for path in ("/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/../icetools/cli.py",
                         "/static/vendor/../../icetools/server.py", "/etc/passwd", "/static/", "/nope"):
                status, _, body = await get(path)
                assert status == 404, path
                assert b"root:" not in body
            status, headers, body = await get("/api/state")
            assert status == 200 and headers["content-type"] == "application/json"
            assert {"t", "hosts", "jobs", "recent", "totals"} <= set(json.loads(body))

    asyncio.run(main())


def test_metrics_are_valid_prometheus_text() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool missing (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)

    async def main() -> bytes:
        async with Running(speed=400) as run, connect(run.url) as ws:
            await until_ended(ws, Model())
            status, headers, body = await asyncio.to_thread(http_get, run.port, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            return body

    body = asyncio.run(main())
    text = body.decode()
    assert 'icecream_jobs_total{result="ok"} 432.0' in text
    assert 'icecream_jobs_total{result="failed"} 10.0' in text
    assert "icecream_hosts_online 6.0" in text
    assert 'icecream_job_duration_seconds_bucket{le="+Inf"} 440.0' in text
    assert "icetools_monitor_connected 1.0" in text
    assert "icetools_frames_received_total 1575.0" in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

