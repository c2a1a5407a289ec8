"""The web page in a real browser: Debian's chromium driven by Playwright against a real
``icetools replay FILE --serve`` subprocess (docs/websocket-protocol.md, web/app.js).

Expected values come from the recordings through icetools' own API (``state_at``), never from
constants. Nothing here downloads a browser: without /usr/bin/chromium or the playwright
package the tests skip (and fail on CI).
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import threading
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from icetools import messages
from icetools.capture import CaptureReader, CaptureWriter, ConnectRecord, DisconnectRecord, EndRecord, FrameRecord
from icetools.index import state_at
from icetools.monitor import JobState, Monitor

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
DEMO = RECORDINGS / "demo.icecap"
BUILD = RECORDINGS / "build.icecap"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # A name of "another site" that resolves to loopback, as a DNS-rebinding attacker's would
    # (and nothing is ever looked up outside).
    "--host-resolver-rules=MAP evil.example 127.0.0.1",
]
TIMEOUT_MS = 15_000  # for any awaited condition
SERVER_START_S = 20.0

XSS_HOST = '<img src=x onerror="window.__xss=1">'
XSS_FILE = "/src/<script>alert(2)</script>.cpp"


def need_browser() -> None:
    """Skip (fail on CI) when the browser or Playwright is missing."""
    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing (pip install -e '.[test]')"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


# ---- the server ---------------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start(capture: Path, speed: float, tmp: Path) -> Server:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))
    for attempt in range(3):
        port = _free_port()
        log = tmp / f"server-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "icetools", "replay", str(capture), "--serve",
                 "--listen", f"127.0.0.1:{port}", "--speed", str(speed)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(proc, port, log)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(server.url + "api/state"):
                return server
            time.sleep(0.05)
        server.stop()
        if "in use" not in server.output() or attempt == 2:
            pytest.fail(f"the server did not come up on port {port}:\n{server.output()}")
    raise AssertionError("unreachable")


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    """Start ``icetools replay CAPTURE --serve`` on a free loopback port; stopped by its pid."""
    # state_at in this process keeps its seek index out of the user's cache too
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    servers: list[Server] = []

    def start(capture: Path, speed: float) -> Server:
        server = _start(capture, speed, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Tab:
    """A page and what went wrong in it: uncaught exceptions, console errors, dialogs."""

    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg: Any = None, timeout: int = TIMEOUT_MS) -> Any:
        return self.page.wait_for_function(expression, arg=arg, timeout=timeout, polling=50).json_value()

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"the page opened dialogs: {self.dialogs}"
        assert self.errors == [], "JavaScript errors:\n" + "\n".join(self.errors)


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    t = Tab(page)
    page.on("pageerror", lambda e: t.errors.append(f"pageerror: {e}"))
    page.on(
        "console",
        lambda m: t.errors.append(f"console.{m.type}: {m.text} ({m.location})") if m.type == "error" else None,
    )

    def on_dialog(d: Any) -> None:
        t.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield t
    finally:
        context.close()


# ---- helpers ---------------------------------------------------------------------------------

ROW_NAMES = "#hosts-table tbody tr[data-host-id] td:first-child"


def expect(*args: Any, **kwargs: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(*args, **kwargs)


def host_names(monitor: Monitor) -> list[str]:
    return sorted(h.name for h in monitor.hosts.values())


def failed_in_page(job: Any) -> bool:
    """What web/app.js shows as failed (jobFailed): lost, failed, or a non-zero exit code."""
    return job.lost or job.state is JobState.FAILED or job.exit_code not in (None, 0)


# true once window.icetools.seq has not changed for 300 ms
QUIET = """() => {
    const seq = window.icetools.seq, now = performance.now();
    const q = window.__quiet && window.__quiet.seq === seq ? window.__quiet : (window.__quiet = {seq, since: now});
    return now - q.since > 300;
}"""


def open_page(tab: Tab, server: Server) -> None:
    tab.page.goto(server.url)
    expect(tab.page.locator("#replay-controls")).to_be_visible()
    tab.wait("() => window.icetools && window.icetools.snapshots >= 1")


def collated(names: list[str]) -> list[str]:
    """The page's name order (Intl.Collator numeric): node2 before node10."""
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", n)])


# ---- 1. the page follows a replay -----------------------------------------------------------


def test_page_shows_the_replay_and_keeps_updating(serve: Callable[..., Server], tab: Tab) -> None:
    end = state_at(DEMO, None)
    names = host_names(end)
    assert len(names) == 6
    server = serve(DEMO, 20)
    page = tab.page
    open_page(tab, server)
    expect(page.locator("#status")).to_have_attribute("data-state", "playing")
    expect(page.locator("#play-pause")).to_have_text("Pause")

    # the hosts of the recording, in the table (sorted by name) and as graph nodes
    rows = page.locator("#hosts-table tbody tr[data-host-id]")
    expect(rows).to_have_count(len(names))
    expect(page.locator(ROW_NAMES)).to_have_text(collated(names))
    nodes = page.locator("#graph svg g.node[data-host-id]")
    expect(nodes).to_have_count(len(names))
    assert sorted(nodes.locator("text.label").all_text_contents()) == names
    row_ids = sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.hostId)"))
    node_ids = sorted(nodes.evaluate_all("ns => ns.map(n => n.getAttribute('data-host-id'))"))
    assert row_ids == node_ids

    # running jobs appear, with links in the graph and bars in the timeline
    tab.wait("() => document.querySelectorAll('#running-jobs li[data-job-id]').length > 0")
    tab.wait("() => document.querySelectorAll('#graph svg line.link').length > 0")
    tab.wait("() => document.querySelectorAll('#timeline svg rect.bar').length > 0")

    # it keeps updating: seq increases, remote_done grows, in the model and on the page
    for _ in range(2):
        seq, done = tab.js("() => [window.icetools.seq, window.icetools.state.totals.remote_done || 0]")
        tab.wait(
            "([s, d]) => window.icetools.seq > s + 3 && window.icetools.state.totals.remote_done > d",
            [seq, done],
        )
        tab.wait(
            "(d) => Number(document.querySelector('#totals [data-total=\"remote_done\"]').textContent) > d", done
        )
    tab.wait("() => Number(document.querySelector('#totals [data-total=\"busy_slots\"]').textContent) > 0")
    # the page shows the model's slots (the DOM follows at the next animation frame)
    tab.wait(
        """() => window.icetools.state.totals.total_slots > 0 && window.icetools.state.totals.total_slots
            === Number(document.querySelector('#totals [data-total="total_slots"]').textContent)"""
    )

    # at the end, the page's totals are the recording's
    expect(page.locator("#status")).to_have_attribute("data-state", "ended", timeout=20_000)
    expect(page.locator("#play-pause")).to_have_text("Play")
    expect(page.locator('#totals [data-total="remote_done"]')).to_have_text(str(end.totals.remote_done))
    expect(page.locator('#totals [data-total="failed"]')).to_have_text(str(end.totals.remote_failed))
    expect(page.locator('#totals [data-total="local"]')).to_have_text(str(end.totals.local_started))
    expect(page.locator('#totals [data-total="busy_slots"]')).to_have_text("0")
    assert tab.js("() => window.icetools.state.totals.remote_done") == end.totals.remote_done
    # the recent list: the server's last 200 finished jobs, failures marked
    recent = list(end.finished)[-200:]
    expect(page.locator("#recent-jobs li")).to_have_count(len(recent))
    failed_ids = page.locator("#recent-jobs li.failed").evaluate_all("ls => ls.map(l => Number(l.dataset.jobId))")
    assert sorted(failed_ids) == sorted(j.id for j in recent if failed_in_page(j))
    assert failed_ids, "the demo's last jobs include failures"
    tab.assert_clean()


# ---- 2. pause, speed and seek from the page ---------------------------------------------------


def test_pause_speed_and_seek_from_the_page(serve: Callable[..., Server], tab: Tab) -> None:
    server = serve(DEMO, 5)
    page = tab.page
    status = page.locator("#status")
    open_page(tab, server)
    expect(status).to_have_attribute("data-state", "playing")
    tab.wait("() => window.icetools.state.t > 2")

    # pause: the state's clock stops
    page.click("#play-pause")
    expect(status).to_have_attribute("data-state", "paused")
    expect(page.locator("#play-pause")).to_have_text("Play")
    assert tab.js("() => window.icetools.status.state") == "paused"
    tab.wait(QUIET)  # the delta that carries the paused position may follow the one saying paused
    read = """() => [window.icetools.state.t, window.icetools.seq,
        document.querySelector('#position').textContent, document.querySelector('#clock').textContent]"""
    before = tab.js(read)
    page.wait_for_timeout(1000)  # nothing to await: the point is that nothing changes
    assert tab.js(read) == before

    # speed: the server's status follows the select
    page.select_option("#speed", "4")
    tab.wait("() => window.icetools.status.speed === 4")
    expect(page.locator("#speed")).to_have_value("4")

    # seek while paused: a snapshot of the recording at 120 s, exactly
    at = state_at(DEMO, 120.0)
    snapshots = tab.js("() => window.icetools.snapshots")
    page.locator("#seek").fill("120")
    tab.wait("(n) => window.icetools.snapshots > n && Math.abs(window.icetools.state.t - 120) < 0.01", snapshots)
    expect(status).to_have_attribute("data-state", "paused")
    totals = tab.js("() => window.icetools.state.totals")
    assert totals["remote_done"] == at.totals.remote_done
    assert totals["remote_failed"] == at.totals.remote_failed
    assert totals["local_started"] == at.totals.local_started
    expect(page.locator('#totals [data-total="remote_done"]')).to_have_text(str(at.totals.remote_done))
    expect(page.locator('#totals [data-total="failed"]')).to_have_text(str(at.totals.remote_failed))
    expect(page.locator("#position")).to_have_text(re.compile(r"^2:00\.0 / 2:4\d\.\d$"))
    # the hosts and jobs of that moment, failed and lost jobs marked
    expect(page.locator("#hosts-table tbody tr[data-host-id]")).to_have_count(len(at.hosts))
    running = [j for j in at.jobs.values() if j.state is not JobState.WAITING]
    expect(page.locator("#running-jobs li[data-job-id]")).to_have_count(len(running))
    recent = list(at.finished)[-200:]
    expect(page.locator("#recent-jobs li")).to_have_count(len(recent))
    assert any(j.lost for j in recent), "the demo loses two jobs before 120 s"
    marked = {"lost": [j.id for j in recent if j.lost], "failed": [j.id for j in recent if failed_in_page(j)]}
    for cls, ids in marked.items():
        items = page.locator(f"#recent-jobs li.{cls}")
        expect(items).to_have_count(len(ids))
        assert sorted(items.evaluate_all("ls => ls.map(l => Number(l.dataset.jobId))")) == sorted(ids), cls

    # play again, at the new speed
    page.click("#play-pause")
    expect(status).to_have_attribute("data-state", "playing")
    expect(status).to_have_text("replaying at 4x")
    expect(page.locator("#play-pause")).to_have_text("Pause")
    tab.wait("() => window.icetools.state.t > 121")
    assert tab.js("() => window.icetools.status.speed") == 4
    tab.assert_clean()


def test_waiting_jobs_and_the_utilisation_line(serve: Callable[..., Server], tab: Tab) -> None:
    """The jobs waiting now (requested, not started), the longest waiting first, with how long
    they have waited; the utilisation line drawn from the state's history."""
    from icetools.jobs import COLUMNS, JobsPublisher
    from icetools.replay import replay_file

    rows: list[tuple[Any, ...]] = []
    monitor = Monitor(publishers=[publisher := JobsPublisher(rows.append)])
    with CaptureReader(DEMO) as reader:
        replay_file(monitor, reader)
    publisher.finish(monitor)
    col = {c: i for i, c in enumerate(COLUMNS)}
    longest = max((r for r in rows if r[col["wait_ms"]] is not None), key=lambda r: r[col["wait_ms"]])
    assert longest[col["wait_ms"]] > 5000, "the demo has a job that waits long"
    at_t = round(longest[col["requested"]] + longest[col["wait_ms"]] / 2000, 1)  # halfway through its wait
    at = state_at(DEMO, at_t)
    waiting = sorted((j for j in at.jobs.values() if j.state is JobState.WAITING), key=lambda j: (j.submitted, j.id))
    assert longest[col["id"]] in [j.id for j in waiting]

    server = serve(DEMO, 5)
    page = tab.page
    open_page(tab, server)
    # the utilisation line: three series over the history the server keeps
    tab.wait("() => window.icetools.state.history.length >= 5")
    expect(page.locator("#utilisation path.series")).to_have_count(3)
    history = tab.js("() => window.icetools.state.history")
    for sample_t, busy, offered, _ in history:
        then = state_at(DEMO, sample_t)
        assert offered == sum(h.max_jobs for h in then.hosts.values() if h.online)
        assert busy == sum(1 for j in then.jobs.values() if j.state is JobState.COMPILING)
    tab.wait("(n) => (document.querySelector('#utilisation path.series[data-key=busy]').getAttribute('d').match(/[ML]/g) || []).length >= n", len(history))

    # pause and seek into the long wait: the waiting jobs of that moment, exactly
    page.click("#play-pause")
    expect(page.locator("#status")).to_have_attribute("data-state", "paused")
    tab.wait(QUIET)
    snapshots = tab.js("() => window.icetools.snapshots")
    page.locator("#seek").fill(str(at_t))
    tab.wait("([n, t]) => window.icetools.snapshots > n && Math.abs(window.icetools.state.t - t) < 0.01", [snapshots, at_t])
    items = page.locator("#waiting-jobs li")
    expect(items).to_have_count(len(waiting))
    expect(page.locator("#waiting-jobs-count")).to_have_text(str(len(waiting)))
    assert items.evaluate_all("ls => ls.map(l => Number(l.dataset.jobId))") == [j.id for j in waiting]
    t = tab.js("() => window.icetools.state.t")
    expect(page.locator("#waiting-jobs li .time")).to_have_text([f"{t - j.submitted:.1f} s" for j in waiting])
    expect(page.locator("#waiting-jobs li .hosts")).to_have_text([f"from {at.hosts[j.client_id].name}" for j in waiting])
    expect(page.locator("#waiting-jobs li .file")).to_have_text([j.file for j in waiting])
    tab.assert_clean()


# ---- 3. strings from the cluster are text, never markup ---------------------------------------


def _hostile_recording(path: Path) -> None:
    """build.icecap with node1 named XSS_HOST and the first job's file XSS_FILE."""
    renamed = files = 0
    with CaptureReader(BUILD) as reader, CaptureWriter(path) as writer:
        for record in reader:
            if type(record) is ConnectRecord:
                writer.connected(record.protocol, record.peer_version, record.offered, record.scheduler, t=record.t)
            elif type(record) is DisconnectRecord:
                writer.disconnected(record.reason, t=record.t)
            elif type(record) is EndRecord:
                writer.close(record.reason, t=record.t)
            elif type(record) is FrameRecord:
                frame = record.data
                msg = messages.decode(frame, record.protocol)
                if isinstance(msg, messages.MonStats) and "Name:node1\n" in msg.statmsg:
                    msg = msg.replace(statmsg=msg.statmsg.replace("Name:node1\n", f"Name:{XSS_HOST}\n"))
                    frame = messages.encode(msg, record.protocol)
                    renamed += 1
                elif isinstance(msg, messages.MonGetCS) and files == 0:
                    frame = messages.encode(msg.replace(filename=XSS_FILE), record.protocol)
                    files += 1
                writer.frames([frame], t=record.t)
    assert renamed and files, "build.icecap changed: no node1 or no job to rewrite"


def test_host_and_file_names_are_not_markup(serve: Callable[..., Server], tab: Tab, tmp_path: Path) -> None:
    capture = tmp_path / "xss.icecap"
    _hostile_recording(capture)
    end = state_at(capture, None)
    assert XSS_HOST in host_names(end)
    assert any(j.file == XSS_FILE for j in end.finished)

    server = serve(capture, 4)
    page = tab.page
    open_page(tab, server)
    expect(page.locator("#status")).to_have_attribute("data-state", "ended", timeout=20_000)
    # the exact text, in the table, the graph and the job lists
    expect(page.locator(ROW_NAMES)).to_have_text(collated(host_names(end)))
    expect(page.locator("#hosts-table tbody td", has_text=XSS_HOST)).to_have_count(1)
    labels = page.locator("#graph svg g.node text.label").all_text_contents()
    assert XSS_HOST in labels
    files = page.locator("#recent-jobs li .file").all_text_contents()
    assert XSS_FILE in files
    hosts_texts = page.locator("#recent-jobs li .hosts").all_text_contents()
    assert any(XSS_HOST in h for h in hosts_texts)
    # and never markup: no image, no extra script, nothing ran
    assert page.locator("img").count() == 0
    assert tab.js("() => document.querySelectorAll('img, [onerror]').length") == 0
    scripts = tab.js("() => Array.from(document.scripts, s => s.getAttribute('src'))")
    assert scripts == ["/static/vendor/d3.v7.min.js", "/static/app.js"]
    assert tab.js("() => window.__xss") is None
    page.wait_for_timeout(300)  # an error event of an injected image fires asynchronously
    assert tab.js("() => window.__xss") is None
    tab.assert_clean()


# ---- 4. a screenshot mid-replay -----------------------------------------------------------------


def test_screenshot_mid_replay(serve: Callable[..., Server], tab: Tab) -> None:
    server = serve(DEMO, 10)
    page = tab.page
    open_page(tab, server)
    tab.wait("() => window.icetools.state.t > 40")
    tab.wait(
        """() => document.querySelectorAll('#running-jobs li[data-job-id]').length >= 3
            && document.querySelectorAll('#graph svg line.link').length >= 2
            && document.querySelectorAll('#timeline svg rect.bar').length >= 20
            && document.querySelectorAll('#recent-jobs li').length >= 10"""
    )
    # the nodes have faded in
    tab.wait(
        """() => Array.from(document.querySelectorAll('#graph svg g.node'))
            .every(n => getComputedStyle(n).opacity === '1')"""
    )
    for selector in ("#graph svg", "#timeline svg", "#hosts-table"):
        box = page.locator(selector).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 50, (selector, box)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert tab.js("() => window.icetools.status.state") == "playing"
    tab.assert_clean()


# ---- 5. the sortable host table -------------------------------------------------------------------


def test_host_table_sorts(serve: Callable[..., Server], tab: Tab) -> None:
    names = host_names(state_at(DEMO, None))
    server = serve(DEMO, 10)
    page = tab.page
    open_page(tab, server)
    cells = page.locator(ROW_NAMES)
    expect(cells).to_have_count(len(names))
    # by name ascending at first
    expect(cells).to_have_text(collated(names))
    expect(page.locator('th[data-sort="name"]')).to_have_attribute("aria-sort", "ascending")

    # another column, then name: ascending; name again: descending
    page.click('th[data-sort="ip"]')
    ips = page.locator("#hosts-table tbody tr[data-host-id] td:nth-child(2)")
    expect(page.locator('th[data-sort="ip"]')).to_have_attribute("aria-sort", "ascending")
    known = [h["ip"] for h in tab.js("() => window.icetools.state.hosts")]
    expect(ips).to_have_text(sorted(known, key=lambda ip: tuple(int(p) for p in ip.split("."))))
    page.click('th[data-sort="name"]')
    expect(page.locator('th[data-sort="name"]')).to_have_attribute("aria-sort", "ascending")
    expect(page.locator('th[data-sort="ip"]')).not_to_have_attribute("aria-sort", re.compile(".*"))
    expect(cells).to_have_text(collated(names))
    page.click('th[data-sort="name"]')
    expect(page.locator('th[data-sort="name"]')).to_have_attribute("aria-sort", "descending")
    expect(cells).to_have_text(list(reversed(collated(names))))
    page.click('th[data-sort="name"]')
    expect(cells).to_have_text(collated(names))

    # a numeric column, on a paused replay: the biggest first, then reversed
    tab.wait("() => window.icetools.state.totals.remote_done > 50")
    page.click("#play-pause")
    expect(page.locator("#status")).to_have_attribute("data-state", "paused")
    page.click('th[data-sort="compiled"]')
    expect(page.locator('th[data-sort="compiled"]')).to_have_attribute("aria-sort", "descending")
    counts = sorted(h["counters"]["compiled"] for h in tab.js("() => window.icetools.state.hosts"))
    assert len(set(counts)) > 1
    compiled = page.locator("#hosts-table tbody tr[data-host-id] td:nth-child(11)")
    expect(compiled).to_have_text([str(n) for n in reversed(counts)])
    page.click('th[data-sort="compiled"]')
    expect(page.locator('th[data-sort="compiled"]')).to_have_attribute("aria-sort", "ascending")
    expect(compiled).to_have_text([str(n) for n in counts])
    tab.assert_clean()


# ---- 6. other sites can neither read nor drive the server ---------------------------------------

EVIL_PAGE = """<!doctype html><meta charset="utf-8"><title>evil</title><script>
window.result = {opened: false, messages: 0, closed: null, fetched: null};
const ws = new WebSocket("ws://127.0.0.1:PORT/ws");
ws.onopen = () => { window.result.opened = true; ws.send(JSON.stringify({cmd: "pause"})); };
ws.onmessage = () => { window.result.messages++; };
ws.onclose = (e) => { window.result.closed = e.code; };
fetch("http://127.0.0.1:PORT/api/state").then(
  (r) => r.text().then((t) => { window.result.fetched = "read " + t.length; }),
  (e) => { window.result.fetched = "refused: " + e; });
</script>"""


def test_other_sites_cannot_read_or_drive_the_server(serve: Callable[..., Server], tab: Tab, tmp_path: Path) -> None:
    server = serve(DEMO, 5)
    # another origin: a second loopback server (another port) serving a page that tries
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(EVIL_PAGE.replace("PORT", str(server.port)))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(site))  # noqa: E731
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    evil = tab.page.context.new_page()
    try:
        evil.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        evil.wait_for_function("() => window.result.closed !== null && window.result.fetched !== null", polling=50)
        result = evil.evaluate("() => window.result")
        assert result["opened"] is False and result["messages"] == 0, result
        assert result["closed"] == 1006 and result["fetched"].startswith("refused"), result

        # DNS rebinding: evil.example now resolves to 127.0.0.1, so its page is "same origin"
        # with the server and its requests say Host: evil.example:PORT.
        rebound = f"http://evil.example:{server.port}/"
        response = evil.goto(rebound)
        assert response is not None and response.status == 403
        assert "--allow-host" in evil.content() and "node1" not in evil.content()
        got = evil.evaluate(
            """async () => { const r = await fetch("/api/state"); return [r.status, await r.text()]; }"""
        )
        assert got[0] == 403 and "node1" not in got[1], got
        closed = evil.evaluate(
            """(url) => new Promise((done) => { const ws = new WebSocket(url);
                 ws.onopen = () => done("opened"); ws.onclose = (e) => done(e.code); })""",
            rebound.replace("http:", "ws:") + "ws",
        )
        assert closed == 1006
    finally:
        evil.close()
        other.shutdown()
        other.server_close()

    # the page itself still works, with its security headers, and nobody paused the replay
    page = tab.page
    response = page.goto(server.url)
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    expect(page.locator("#replay-controls")).to_be_visible()
    tab.wait("() => window.icetools && window.icetools.snapshots >= 1")
    expect(page.locator("#status")).to_have_attribute("data-state", "playing")
    seq = tab.js("() => window.icetools.seq")
    tab.wait("(s) => window.icetools.seq > s + 3", seq)
    tab.assert_clean()
