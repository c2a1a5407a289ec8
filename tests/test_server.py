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
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from icetools import messages as m
from icetools.capture import CaptureReader
from icetools.index import state_at
from icetools.jobs import COLUMNS, JobsPublisher
from icetools.monitor import JobState, Monitor
from icetools.replay import replay_file
from icetools.stats import report as stats_report
from icetools.server import MAX_PENDING, ClusterServer, ReplayDriver, Status, listening_names

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
DEMO = RECORDINGS / "demo.icecap"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class Running:
    """A replay server on 127.0.0.1 and an ephemeral port, inside the test's event loop."""

    def __init__(self, capture: Path = DEMO, speed: float = 20.0, mode: str = "replay", **options: Any) -> None:
        self.status = Status(mode=mode)
        self.server = ClusterServer(Monitor(), self.status, name=capture.name, **options)
        self.driver = ReplayDriver(capture, self.status, self.server.hub, speed=speed)
        if mode == "replay":
            self.server.commands = self.driver.command
        self.tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Running:
        await self.server.start("127.0.0.1", 0)
        self.port = self.server.port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.tasks = [asyncio.create_task(self.driver.run()), asyncio.create_task(self.server.fanout.run())]
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
        self.history: list[list[float]] = []

    def apply(self, message: dict[str, Any]) -> None:
        self.seqs.append(message["seq"])
        self.kinds.append(message["type"])
        self.status = message["status"]
        if message["type"] == "snapshot":
            state = message["state"]
            self.hosts = {h["id"]: h for h in state["hosts"]}
            self.jobs = {j["id"]: j for j in state["jobs"]}
            self.totals = state["totals"]
            self.history = state["history"]
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
        self.history += message["history"]


async def receive(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_ended(ws: Any, model: Model, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while model.status.get("state") != "ended":
        assert time.monotonic() < deadline, "replay did not end"
        model.apply(await receive(ws))


def http_request(port: int, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request head and read the whole answer (the server closes after it): the
    status, the headers and everything after them, Content-Length or not."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def http_get(port: int, raw_path: str, host: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 request, so that paths like /static/../x reach the server unnormalised."""
    host = f"127.0.0.1:{port}" if host is None else host
    status, headers, body = http_request(port, f"{method} {raw_path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    length = int(headers.get("content-length", len(body)))
    return status, headers, body[:length]


def strict_json(text: str | bytes) -> Any:
    """JSON as browsers' JSON.parse reads it: NaN and Infinity are errors."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in the server's JSON")

    return json.loads(text, parse_constant=refuse)


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
            assert model.history == state["history"]
            assert {h["name"] for h in model.hosts.values()} == {f"node{i}" for i in range(1, 7)}

    asyncio.run(main())


def test_the_utilisation_history_is_the_state_at_each_sample() -> None:
    """The page's utilisation line: a sample per flush (100 ms), at most one per second of state
    time, each the cluster as it stood then (checked against the seek index's state at that
    moment). At 20x a flush is 2 s of state time: about 80 samples for the demo's 160 s."""

    async def main() -> Model:
        async with Running(speed=20) as run, connect(run.url) as ws:
            model = Model()
            model.apply(await receive(ws))
            await until_ended(ws, model)
            return model

    model = asyncio.run(main())
    history = model.history
    assert len(history) > 40
    seconds = [int(t) for t, *_ in history]
    assert seconds == sorted(set(seconds)), "more than one sample in a second, or out of order"
    busiest = max(busy for _, busy, _, _ in history)
    assert busiest > 5 and any(waiting for *_, waiting in history)
    for t, busy, offered, waiting in history:
        state = state_at(DEMO, t)
        jobs = list(state.jobs.values())
        assert busy == sum(1 for j in jobs if j.state is JobState.COMPILING), t
        assert offered == sum(h.max_jobs for h in state.hosts.values() if h.online), t
        assert waiting == sum(1 for j in jobs if j.state is JobState.WAITING), t
    assert model.totals["waiting"] == 0  # the end of the demo: nothing waits


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
    # Every series carries the scheduler label, here the recording's name (a uniform schema:
    # the same with one scheduler as with several).
    assert 'icecream_jobs_total{result="ok",scheduler="demo.icecap"} 432.0' in text
    assert 'icecream_jobs_total{result="failed",scheduler="demo.icecap"} 10.0' in text
    assert 'icecream_hosts_online{scheduler="demo.icecap"} 6.0' in text
    assert 'icecream_job_duration_seconds_bucket{le="+Inf",scheduler="demo.icecap"} 440.0' in text
    assert 'icetools_monitor_connected{scheduler="demo.icecap"} 1.0' in text
    assert 'icetools_frames_received_total{scheduler="demo.icecap"} 1575.0' in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("scheduler") == "demo.icecap", sample
    # Waits, the jobs waiting and per-host results, against the job rows and stats of the same
    # recording (icetools jobs / stats --json).
    rows: list[tuple[Any, ...]] = []
    monitor = Monitor(publishers=[publisher := JobsPublisher(rows.append)])
    with CaptureReader(DEMO) as reader:
        replay_file(monitor, reader)
    publisher.finish(monitor)
    col = {c: i for i, c in enumerate(COLUMNS)}
    waits = [r[col["wait_ms"]] for r in rows if r[col["kind"]] == "remote" and r[col["wait_ms"]] is not None]
    assert len(waits) == 442
    assert f'icetools_job_wait_seconds_bucket{{le="+Inf",scheduler="demo.icecap"}} {len(waits)}.0' in text
    assert f'icetools_job_wait_seconds_count{{scheduler="demo.icecap"}} {len(waits)}.0' in text
    for bound in ("0.001", "0.5", "1.0", "5.0"):
        expected = sum(1 for w in waits if w / 1000 <= float(bound))
        assert f'icetools_job_wait_seconds_bucket{{le="{bound}",scheduler="demo.icecap"}} {expected}.0' in text, bound
    assert 0 < sum(1 for w in waits if w > 500) < len(waits)  # the buckets tell waits apart
    assert 'icetools_jobs_waiting{scheduler="demo.icecap"} 0.0' in text
    hosts = stats_report(monitor)["hosts"]
    assert sum(h["lost"] for h in hosts) == 2
    for h in hosts:
        name = h["name"]
        labels = f'host="{name}",result="%s",scheduler="demo.icecap"'
        assert f'icetools_host_jobs_total{{{labels % "ok"}}} {h["compiled"] - h["failed"]}.0' in text
        assert f'icetools_host_jobs_total{{{labels % "failed"}}} {h["failed"] - h["lost"]}.0' in text
        assert f'icetools_host_jobs_total{{{labels % "lost"}}} {h["lost"]}.0' in text
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr



# ---- who may ask (issue 10) --------------------------------------------------------------------


def test_only_the_names_it_listens_as_are_answered() -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``; it must not read the cluster."""

    async def main() -> None:
        async with Running(speed=50, allow_hosts=["Proxy.Example."]) as run:
            get = lambda path, host: asyncio.to_thread(http_get, run.port, path, host)  # noqa: E731
            for host in (f"127.0.0.1:{run.port}", f"localhost:{run.port}", "LOCALHOST", "localhost:9999",
                         "proxy.example", "proxy.example:443"):  # fmt: skip
                status, _, body = await get("/api/state", host)
                assert status == 200, host
                assert "hosts" in strict_json(body)
            for host in ("evil.example", f"evil.example:{run.port}", f"127.0.0.2:{run.port}",
                         "localhost.evil.example", f"[::1]:{run.port}", "", "127.0.0.1:x", "a b"):  # fmt: skip
                for path in ("/api/state", "/", "/metrics", "/ws"):
                    status, headers, body = await get(path, host)
                    assert status == 403, (host, path)
                    assert b"--allow-host" in body and b"node1" not in body
                    assert headers["content-type"].startswith("text/plain")
            # no Host at all (HTTP/1.0): refused too, as HTTP/1.1 says
            status, _, body = await asyncio.to_thread(http_request, run.port, "GET /api/state HTTP/1.0\r\n\r\n")
            assert status == 400 and b"Host" in body
            # the websocket handshake is refused the same way
            with pytest.raises(InvalidStatus) as refused:
                await connect(run.url, additional_headers={"Host": "evil.example"})
            assert refused.value.response.status_code == 403

    asyncio.run(main())


def test_listening_names() -> None:
    assert listening_names("127.0.0.1") == {"127.0.0.1", "localhost"}
    assert listening_names("::1") == {"::1", "localhost"}
    assert listening_names("[::1]") == {"::1", "localhost"}
    assert listening_names("192.0.2.7") == {"192.0.2.7"}
    assert listening_names("localhost") >= {"localhost", "127.0.0.1"}
    hostname = socket.gethostname().lower()
    # by name: the name and what it resolves to (what the server binds)
    assert listening_names(hostname.upper()) >= {hostname, *(i[4][0] for i in socket.getaddrinfo(hostname, None))}
    every = listening_names("0.0.0.0")
    assert listening_names("") == every == listening_names("::")
    assert {"localhost", "127.0.0.1", "::1", hostname, socket.getfqdn(hostname).lower()} <= every
    # the machine's interface addresses, as `ip` lists them (link-local ones left out)
    listed = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        fields = line.split()
        address = fields[3].split("/")[0]
        if not address.startswith("fe80:"):
            assert address in every, address
    assert "evil.example" not in every


def test_websockets_only_from_the_page_itself() -> None:
    async def main() -> None:
        async with Running(speed=50, allow_origins=["https://ice.example.com/"]) as run:
            own = [f"http://127.0.0.1:{run.port}", f"HTTP://127.0.0.1:{run.port}/", None, "https://ice.example.com"]
            for origin in own:
                async with connect(run.url, origin=origin) as ws:  # type: ignore[arg-type]
                    assert (await receive(ws))["type"] == "snapshot", origin
            async with connect(run.url.replace("127.0.0.1", "localhost"), origin=f"http://localhost:{run.port}") as ws:  # type: ignore[arg-type]
                assert (await receive(ws))["type"] == "snapshot"
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{run.port + 1}", f"http://localhost:{run.port}",
                           "http://ice.example.com", f"http://127.0.0.1:{run.port}.evil.example"):  # fmt: skip
                with pytest.raises(InvalidStatus) as refused:
                    await connect(run.url, origin=origin)  # type: ignore[arg-type]
                response = refused.value.response
                assert response.status_code == 403, origin
                assert b"--allow-origin" in response.body and b"node1" not in response.body
            # nothing was changed by the refused ones
            assert run.status.state == "playing"

    asyncio.run(main())


def test_security_headers() -> None:
    async def main() -> None:
        async with Running(speed=50) as run:
            for path in ("/", "/api/state", "/nope", "/static/app.js"):
                _, headers, _ = await asyncio.to_thread(http_get, run.port, path)
                csp = headers["content-security-policy"]
                assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'self'" in csp
                assert headers["x-frame-options"] == "DENY"
                assert headers["referrer-policy"] == "no-referrer"
                assert headers["x-content-type-options"] == "nosniff"

    asyncio.run(main())


# ---- methods (issue 13) -------------------------------------------------------------------------


def test_only_get_and_head() -> None:
    async def main() -> None:
        async with Running(speed=50) as run:
            for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "BREW"):
                for path in ("/", "/api/state", "/ws"):
                    status, headers, body = await asyncio.to_thread(http_get, run.port, path, None, method)
                    assert status == 405, (method, path)
                    assert headers["allow"] == "GET, HEAD"
                    assert method.encode() in body and b"node1" not in body
            # with a body (a form, a fetch POST): websockets' own parser refuses those, and
            # used to close the connection without an answer
            for head in (f"POST /api/state HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\nContent-Length: 5\r\n\r\nhello",
                         f"PUT / HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                         f"DELETE /ws HTTP/1.0\r\nContent-Length: 2\r\n\r\n{{}}"):  # fmt: skip
                status, headers, body = await asyncio.to_thread(http_request, run.port, head)
                assert status == 405, head
                assert headers["allow"] == "GET, HEAD" and headers["x-frame-options"] == "DENY"
            for head in (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\nContent-Length: 5\r\n\r\nhello",
                         f"GET / HTTP/2.0\r\nHost: 127.0.0.1:{run.port}\r\n\r\n"):  # fmt: skip
                status, headers, body = await asyncio.to_thread(http_request, run.port, head)
                assert status == 400 and b"not a request this server takes" in body, head
            for path in ("/", "/api/state", "/static/vendor/d3.v7.min.js", "/nope"):
                get_status, get_headers, get_body = await asyncio.to_thread(http_get, run.port, path)
                head = f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\nConnection: close\r\n\r\n"
                status, headers, rest = await asyncio.to_thread(http_request, run.port, head)
                assert status == get_status
                assert rest == b""  # no body after the headers, the connection just ends
                if path != "/api/state":  # (the state moves on between the two requests)
                    assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
                assert headers["content-type"] == get_headers["content-type"]

    asyncio.run(main())


# ---- strict JSON both ways (issue 11) -----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    ['{"cmd":"seek","t":NaN}', '{"cmd":"seek","t":Infinity}', '{"cmd":"speed","value":-Infinity}',
     "[" * 2000 + "]" * 2000, '{"":[' * 580 + "]}" * 580, b'{"cmd":"pause"}'],
    ids=["nan", "infinity", "minus-infinity", "deep-list", "deep-object", "binary"],
)  # fmt: skip
def test_not_strict_json_text_closes_the_client(payload: str | bytes, capfd: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        async with Running(speed=5) as run, connect(run.url) as good, connect(run.url) as bad:
            await receive(good)
            await receive(bad)
            await bad.send(json.dumps({"cmd": "pause"}))
            while run.status.state != "paused":
                await receive(good)
            await bad.send(payload)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await receive(bad)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
            assert closed.value.rcvd.reason
            assert run.status.state == "paused"  # the binary pause was not obeyed either
            # every message and the state stay strict JSON
            await good.send(json.dumps({"cmd": "play"}))
            for _ in range(3):
                strict_json(await asyncio.wait_for(good.recv(), 10))
            _, _, body = await asyncio.to_thread(http_get, run.port, "/api/state")
            assert strict_json(body)["status"]["position"] >= 0

    asyncio.run(main())
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("command", "error"),
    [({"cmd": "speed", "value": True}, "speed must be"), ({"cmd": "seek", "t": True}, "seek needs"),
     ({"cmd": "speed", "value": "2"}, "speed must be"), ({"cmd": "seek", "t": -1}, "seek needs")],
    ids=["bool-speed", "bool-seek", "string-speed", "negative-seek"],
)  # fmt: skip
def test_replay_commands_take_only_numbers(command: dict[str, Any], error: str) -> None:
    async def main() -> None:
        async with Running(speed=5) as run, connect(run.url) as ws:
            await receive(ws)
            await ws.send(json.dumps(command))
            while (message := await receive(ws))["type"] != "error":
                pass
            assert message["message"].startswith(error)
            assert run.status.speed == 5 and run.status.state == "playing"

    asyncio.run(main())


def test_driver_commands_refuse_nan_and_infinity() -> None:
    """Whatever parses the message: the driver itself takes only finite numbers."""
    status = Status(mode="replay")
    server = ClusterServer(Monitor(), status)
    driver = ReplayDriver(DEMO, status, server.hub, speed=3)
    for value in (float("nan"), float("inf"), float("-inf")):
        assert driver.command({"cmd": "seek", "t": value}) is not None
        assert driver.command({"cmd": "speed", "value": value}) is not None
    assert status.speed == 3 and driver._seek_to is None


def test_a_hostile_speed_report_does_not_put_nan_into_the_state() -> None:
    monitor = Monitor()
    status = Status(mode="live")
    server = ClusterServer(monitor, status)
    monitor.feed(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:4\nSpeed:12.5\n"), 1.0)
    for bad in ("nan", "NaN", "inf", "-Infinity"):
        monitor.feed(m.MonStats(1, f"Speed:{bad}\nLoad:100\n"), 2.0)
    assert [h.to_json()["speed"] for h in monitor.hosts.values()] == [12.5]
    strict_json(server.hub.snapshot_text())


# ---- slow and too many clients (issue 12) -------------------------------------------------------


def test_a_client_that_never_reads_is_dropped_and_the_others_go_on() -> None:
    async def main() -> None:
        async with Running(speed=50, send_timeout=1.0) as run:
            fast = await connect(run.url)
            # A real websocket client that stops reading at once, with a tiny receive buffer.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.connect(("127.0.0.1", run.port))
            stalled = await connect(run.url, sock=sock, max_queue=1)
            stalled.transport.pause_reading()
            assert len(run.server.hub.clients) == 2
            model = Model()
            deadline = time.monotonic() + 30
            while len(run.server.hub.clients) > 1:
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                model.apply(await receive(fast))
            # its TCP connection is gone too: the server holds nothing of it
            while len(run.server._connections) > 1:
                assert time.monotonic() < deadline, "the stalled connection was kept"
                model.apply(await receive(fast))
            seq = model.seqs[-1]
            model.apply(await receive(fast))
            assert model.seqs[-1] == seq + 1  # the others still get every update
            await fast.close()
            stalled.transport.abort()

    asyncio.run(main())


def test_max_clients() -> None:
    async def main() -> None:
        async with Running(speed=50, max_clients=3) as run:
            admitted = [await connect(run.url) for _ in range(3)]
            for ws in admitted:
                assert (await receive(ws))["type"] == "snapshot"
            for _ in range(2):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(run.url)
                assert refused.value.response.status_code == 503
                assert b"--max-clients" in refused.value.response.body
            # plain HTTP is still answered
            status, _, _ = await asyncio.to_thread(http_get, run.port, "/api/state")
            assert status == 200
            # one leaves, one more gets in
            await admitted.pop().close()
            deadline = time.monotonic() + 10
            while True:
                try:
                    admitted.append(await connect(run.url))
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "the freed place was not given out"
                    await asyncio.sleep(0.05)
            assert (await receive(admitted[-1]))["type"] == "snapshot"
            assert len(run.server.hub.clients) == 3
            await asyncio.gather(*(ws.close() for ws in admitted))

    asyncio.run(main())


def test_half_open_requests_are_capped() -> None:
    """A flood of connections that never finish their request (slowloris): beyond the clients
    and MAX_PENDING, new ones are cut at once, and the server still answers when they go."""

    async def main() -> None:
        async with Running(speed=50, max_clients=2) as run:
            loop = asyncio.get_running_loop()
            socks = []
            for _ in range(2 + MAX_PENDING + 10):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", run.port))
                await loop.sock_sendall(s, b"GET / HTTP/1.1\r\n")  # and never the rest
                socks.append(s)
            cut = 0
            for s in socks[-10:]:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(s, 100), 5)
                except ConnectionResetError:
                    data = b""
                cut += data == b""
            assert cut == 10
            assert len(run.server._connections) <= 2 + MAX_PENDING
            for s in socks:
                s.close()
            deadline = time.monotonic() + 10
            while True:
                try:
                    status, _, _ = await asyncio.to_thread(http_get, run.port, "/api/state")
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            assert status == 200

    asyncio.run(main())


# ---- several schedulers in one server (issue 12) -------------------------------------------------


def test_two_schedulers_one_stream_each_named_and_kept_apart() -> None:
    """Two hubs (the demo and the build recording, both with a host named node1 and a host id 1):
    a client gets both snapshots in order and each one's deltas under its name, every delta in
    its own seq order; rebuilt per name, each equals its /api/state?scheduler=; /api/state alone
    is a 400 naming both, /api/schedulers lists both, /metrics labels each series."""
    build = RECORDINGS / "build.icecap"

    async def main() -> None:
        status_a, status_b = Status(mode="replay"), Status(mode="replay")
        server = ClusterServer(Monitor(), status_a, name="demo")
        hub_b = server.add_scheduler("build", Monitor(), status_b)
        drivers = [ReplayDriver(DEMO, status_a, server.hub, speed=200), ReplayDriver(build, status_b, hub_b, speed=200)]
        await server.start("127.0.0.1", 0)
        tasks = [asyncio.create_task(d.run()) for d in drivers] + [asyncio.create_task(server.fanout.run())]
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                first = [await receive(ws), await receive(ws)]
                assert [(m["type"], m["scheduler"]) for m in first] == [("snapshot", "demo"), ("snapshot", "build")]
                models = {"demo": Model(), "build": Model()}
                for message in first:
                    models[message["scheduler"]].apply(message)
                deadline = time.monotonic() + 60
                while any(m.status.get("state") != "ended" for m in models.values()):
                    assert time.monotonic() < deadline, "the replays did not end"
                    message = await receive(ws)
                    models[message["scheduler"]].apply(message)
                for name, model in models.items():
                    assert model.seqs == list(range(model.seqs[0], model.seqs[0] + len(model.seqs))), name
                    status, _, body = await asyncio.to_thread(http_get, server.port, f"/api/state?scheduler={name}")
                    state = json.loads(body)
                    assert status == 200 and model.hosts == {h["id"]: h for h in state["hosts"]}
                    assert model.totals["remote_done"] == state["totals"]["remote_done"]
                assert models["demo"].totals["remote_done"] == 442
                assert models["build"].totals["remote_done"] != 442
                # Equal ids and names, two hosts: each model has its own node1.
                assert models["demo"].hosts[1]["name"] == models["build"].hosts[1]["name"] == "node1"
                assert models["demo"].hosts[1] != models["build"].hosts[1]
            status, _, body = await asyncio.to_thread(http_get, server.port, "/api/state")
            assert status == 400 and b"'demo', 'build'" in body
            status, _, body = await asyncio.to_thread(http_get, server.port, "/api/state?scheduler=nope")
            assert status == 404
            status, _, body = await asyncio.to_thread(http_get, server.port, "/api/schedulers")
            listed = json.loads(body)["schedulers"]
            assert [(s["name"], s["status"]["scheduler"]) for s in listed] == [("demo", "demo.icecap"), ("build", "build.icecap")]
            _, _, body = await asyncio.to_thread(http_get, server.port, "/metrics")
            done = {s.labels["scheduler"]: s.value for f in text_string_to_metric_families(body.decode())
                    for s in f.samples if s.name == "icecream_jobs_total" and s.labels["result"] == "ok"}
            assert done == {"demo": 432, "build": models["build"].totals["remote_done"] - models["build"].totals["remote_failed"]}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.close()

    asyncio.run(main())
