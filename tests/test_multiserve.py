"""One `icetools serve` watching two real schedulers (issue 12, item 5).

Two real clusters with different netnames, ALPHA (two daemons, node1 and node2) and Beta-2 (one
daemon, node1: a host name, and a host id, that ALPHA has too), in network namespaces; serve runs
in a namespace of ours linked to both (as in test_discover), finds ALPHA by broadcast (-n) and
Beta-2 by address (-s). Everything it answers is read from inside that namespace: the API, the
metrics (parsed with prometheus_client's parser) and, in chromium started in the namespace, the
page.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families

from icetools.capture import CaptureReader
from icetools.errors import IcetoolsError
from icetools.cli import _recording_outputs, _watched_schedulers

from .netns import Namespace, StandIn, netns_unsupported, require, stop_process, wait_until
from .realcluster import Cluster, skip_or_fail_if_unsupported

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
ALPHA, BETA = "ALPHA", "Beta-2"
#: Beta-2's scheduler, watched by address: its name is its address.
BETA_ADDRESS = "10.79.2.1:8765"
PORT = 18790
#: How long a scheduler may take to come back, its daemons to log in again and serve to see it.
SLOW = 90.0


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ICECC_SCHEDULER", "USE_SCHEDULER")}


@pytest.fixture(scope="module")
def farms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Cluster, Namespace]]:
    """ALPHA (node1, node2) and Beta-2 (node1), and our namespace linked to each one's namespace
    A: 10.79.k.2 here, 10.79.k.1 there."""
    skip_or_fail_if_unsupported()
    alpha = Cluster(2, tmpdir=tmp_path_factory.mktemp("alpha"), netname=ALPHA)
    beta = Cluster(1, tmpdir=tmp_path_factory.mktemp("beta"), netname=BETA)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # start-up is mostly waiting
            for started in [pool.submit(c.start) for c in (alpha, beta)]:
                started.result()
        with Namespace() as ns:
            for k, cluster in enumerate((alpha, beta), 1):
                ns.link_to(cluster.netns_a, f"sched{k}", f"10.79.{k}.2/24", "asker", f"10.79.{k}.1/24")
            yield alpha, beta, ns
    finally:
        alpha.stop()
        beta.stop()


#: Runs in our namespace: each line on stdin is a path; prints [status, body] for each.
_FETCH = """
import json, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for line in sys.stdin:
    try:
        with opener.open(sys.argv[1] + line.strip(), timeout=10) as r:
            print(json.dumps([r.status, r.read().decode()]))
    except urllib.error.HTTPError as e:
        print(json.dumps([e.code, e.read().decode()]))
    except OSError as e:
        print(json.dumps([None, str(e)]))
"""


class Serve:
    """`icetools serve -n ALPHA -s 10.79.2.1:8765 --record DIR` in our namespace."""

    def __init__(self, ns: Namespace, record: Path | None, *more: str, port: int = PORT,
                 schedulers: tuple[str, ...] = ("-n", ALPHA, "-s", BETA_ADDRESS)) -> None:
        self.ns = ns
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        recording = ("--record", str(record)) if record is not None else ()
        self.proc = ns.popen(
            [sys.executable, "-m", "icetools", "serve", *schedulers,
             "--listen", f"127.0.0.1:{port}", *recording, *more],
            cwd=ROOT, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def get(self, *paths: str) -> list[tuple[int | None, str]]:
        assert self.proc.poll() is None, self.proc.communicate()
        result = self.ns.run([sys.executable, "-c", _FETCH, self.base], input="".join(p + "\n" for p in paths),
                             capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [tuple(json.loads(line)) for line in result.stdout.splitlines()]  # type: ignore[misc]

    def json(self, path: str) -> Any:
        ((status, body),) = self.get(path)
        return json.loads(body) if status == 200 else None

    def state(self, name: str) -> Any:
        return self.json(f"/api/state?scheduler={name}")

    def statuses(self) -> dict[str, dict[str, Any]] | None:
        listed = self.json("/api/schedulers")
        return None if listed is None else {s["name"]: s["status"] for s in listed["schedulers"]}

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        ((status, body),) = self.get("/metrics")
        assert status == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}

    def stop(self) -> str:
        code = stop_process(self.proc, timeout=15)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert code == 0, err
        return err


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def hosts(state: Any) -> list[tuple[int, str]]:
    return sorted((h["id"], h["name"]) for h in state["hosts"] if h["online"])


def live_with(serve: Serve, name: str, count: int) -> Any:
    state = serve.state(name)
    return state if state and state["status"]["state"] == "live" and len(hosts(state)) == count else None


def dump(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "icetools", "dump", "--json", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_one_serve_watches_two_real_schedulers(farms: tuple[Cluster, Cluster, Namespace], tmp_path: Path) -> None:
    alpha, beta, ns = farms
    record = tmp_path / "recordings"
    # A rotating series per scheduler, parts of 3KB: a few while this runs.
    serve = Serve(ns, record, "--rotate", "1KB", "--keep", "1000")
    try:
        a = wait_until(lambda: live_with(serve, ALPHA, 2), SLOW, "ALPHA live with its 2 hosts")
        b = wait_until(lambda: live_with(serve, BETA_ADDRESS, 1), SLOW, "Beta-2 live with its host")
        # Each scheduler's own hosts, by name and id: node1 (id 1) is in both and stays in each.
        assert [n for _, n in hosts(a)] == ["node1", "node2"] and [n for _, n in hosts(b)] == ["node1"]
        assert 1 in {i for i, _ in hosts(a)} and hosts(b)[0][0] == 1
        assert a["status"]["scheduler"] == f"10.79.1.1:{alpha.scheduler_port}"  # found by broadcast
        assert b["status"]["scheduler"] == BETA_ADDRESS
        # The list, in the order given; /api/state alone is ambiguous now and says so.
        assert list(serve.statuses() or {}) == [ALPHA, BETA_ADDRESS]
        ((status, body),) = serve.get("/api/state")
        assert status == 400 and "'ALPHA', '10.79.2.1:8765'" in body and "/api/state?scheduler=NAME" in body
        ((status, body),) = serve.get("/api/state?scheduler=GAMMA")
        assert status == 404 and "no scheduler 'GAMMA'" in body

        # Jobs on both, different numbers: each state and each series counts its own.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            built = [pool.submit(alpha.compile_files, 3, tmp_path / "a", tag="alpha"),
                     pool.submit(beta.compile_files, 2, tmp_path / "b", tag="beta")]
            assert all(r.ok for f in built for r in f.result())
        wait_until(lambda: serve.state(ALPHA)["totals"]["remote_done"] == 3, 30, "ALPHA's 3 jobs")
        wait_until(lambda: serve.state(BETA_ADDRESS)["totals"]["remote_done"] == 2, 30, "Beta-2's 2 jobs")
        metrics = serve.metrics()
        for (name, labels), _ in metrics.items():
            assert dict(labels).get("scheduler") in (ALPHA, BETA_ADDRESS), (name, labels)
        assert value(metrics, "icecream_hosts_online", scheduler=ALPHA) == 2
        assert value(metrics, "icecream_hosts_online", scheduler=BETA_ADDRESS) == 1
        assert value(metrics, "icecream_jobs_total", scheduler=ALPHA, result="ok") == 3
        assert value(metrics, "icecream_jobs_total", scheduler=BETA_ADDRESS, result="ok") == 2
        assert value(metrics, "icecream_host_max_jobs", scheduler=BETA_ADDRESS, host="node1") == 2
        assert value(metrics, "icecream_host_max_jobs", scheduler=ALPHA, host="node1") == 0  # ALPHA's is -m 0
        assert value(metrics, "icetools_recording", scheduler=ALPHA) == 1

        # ALPHA's scheduler stops: its status says so; Beta-2 goes on, and keeps counting.
        alpha.stop_scheduler()
        wait_until(lambda: (serve.statuses() or {}).get(ALPHA, {}).get("state") == "retrying", 30,
                   "ALPHA's status to say it retries")
        assert (serve.statuses() or {})[BETA_ADDRESS]["state"] == "live"
        assert all(r.ok for r in beta.compile_files(1, tmp_path / "b2", tag="beta2"))
        wait_until(lambda: serve.state(BETA_ADDRESS)["totals"]["remote_done"] == 3, 30, "Beta-2's job meanwhile")
        metrics = serve.metrics()
        assert value(metrics, "icetools_monitor_connected", scheduler=ALPHA) == 0
        assert value(metrics, "icetools_monitor_connected", scheduler=BETA_ADDRESS) == 1
        assert (serve.statuses() or {})[ALPHA]["state"] == "retrying"

        # ... and comes back: ALPHA live again (a reset), its totals kept.
        alpha.start_scheduler()
        again = wait_until(lambda: (s := live_with(serve, ALPHA, 2)) and s["totals"]["resets"] == 1 and s, SLOW,
                           "ALPHA live again")
        assert again["totals"]["remote_done"] == 3
        assert serve.state(BETA_ADDRESS)["totals"]["resets"] == 0
    finally:
        err = serve.stop()
    assert "ALPHA: " in err  # with several schedulers, the log names which one

    # One rotating series per scheduler, its files named after it; read part by part, the
    # frames received (carried ones left out) are every job of each, and ALPHA's two logins.
    series: dict[str, list[Path]] = {}
    for f in sorted(record.iterdir()):
        series.setdefault(re.sub(r"-\d{8}-\d{6}(-\d+)?\.icecap$", "", f.name), []).append(f)
    assert sorted(series) == ["10.79.2.1_8765", "ALPHA"], sorted(record.iterdir())
    assert len(series["ALPHA"]) >= 2, series  # it rotated
    for name, netname, address, logins in (("ALPHA", ALPHA, f"10.79.1.1:{alpha.scheduler_port}", 2),
                                           ("10.79.2.1_8765", None, BETA_ADDRESS, 1)):
        headers = []
        for f in series[name]:
            with CaptureReader(f) as reader:
                headers.append(reader.header)
        headers.sort(key=lambda h: h.part)
        assert [h.part for h in headers] == list(range(len(headers)))
        assert len({h.series for h in headers}) == 1
        # The header names the network a scheduler was found on (-n), and only then.
        assert {h.netname for h in headers} == {netname}
        lines = [x for f in series[name] for x in dump(f) if not x.get("carried")]
        connects = [x for x in lines if x["type"] == "connect" and not x.get("rotated")]
        assert [c["scheduler"] for c in connects] == [address] * logins
        assert sum(x["type"] == "MON_JOB_DONE" for x in lines) == 3
    # The series of one scheduler never holds the other's: Beta-2's files are Beta-2's.
    assert not set(series["ALPHA"]) & set(series["10.79.2.1_8765"])


def test_the_page_switches_and_shows_both_side_by_side(farms: tuple[Cluster, Cluster, Namespace],
                                                       tmp_path: Path) -> None:
    """chromium (started inside our namespace) on the served page: all schedulers side by side
    at first, hosts labelled and grouped by scheduler, the two node1 kept apart; the switch
    shows one scheduler at a time, as a page of a single scheduler looks; its updates reach
    the view of their own scheduler only."""
    from .test_browser import CHROMIUM, CHROMIUM_ARGS, need_browser

    need_browser()
    from playwright.sync_api import sync_playwright

    alpha, beta, ns = farms
    alpha.wait_ready()  # (its scheduler was restarted by the test before)
    wrapper = tmp_path / "chromium-in-namespace"
    wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {ns.name} {CHROMIUM} \"$@\"\n")
    wrapper.chmod(0o755)
    serve = Serve(ns, tmp_path / "recordings", port=PORT + 1)  # (one file per scheduler)
    try:
        wait_until(lambda: live_with(serve, ALPHA, 2) and live_with(serve, BETA_ADDRESS, 1), SLOW, "both live")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(wrapper), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 960})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{serve.base}/")
                
                def js(expression: str) -> Any:
                    return page.evaluate(f"() => ({expression})")

                def wait(expression: str) -> Any:
                    # (a function, not an expression: the page's CSP forbids eval)
                    return page.wait_for_function(f"() => ({expression})", timeout=30_000, polling=50).json_value()

                wait("window.icetools.schedulers.length === 2 && window.icetools.view === '*'")
                rows = "#hosts-table tbody tr[data-host-id]"
                wait(f"document.querySelectorAll('{rows}').length === 3")
                shown = sorted(zip(page.locator(rows).evaluate_all("rs => rs.map(r => r.dataset.scheduler)"),
                                   page.locator(f"{rows} td:first-child").all_text_contents()))
                assert shown == [(BETA_ADDRESS, f"{BETA_ADDRESS}/node1"), (ALPHA, "ALPHA/node1"), (ALPHA, "ALPHA/node2")]
                # Grouped: ALPHA's rows first (the order given), then Beta-2's.
                assert page.locator(f"{rows} td:first-child").all_text_contents() == [
                    "ALPHA/node1", "ALPHA/node2", f"{BETA_ADDRESS}/node1"]
                wait("document.querySelectorAll('#graph g.node').length === 3")
                assert sorted(page.locator("#graph g.node text.label").all_text_contents()) == [
                    f"{BETA_ADDRESS}/node1", "ALPHA/node1", "ALPHA/node2"]
                assert page.locator("#graph text.group-label").all_text_contents() == [ALPHA, BETA_ADDRESS]
                assert js("window.icetools.state.hosts.map(h => h.id).sort()") == [
                    f"{BETA_ADDRESS}#1", "ALPHA#1", "ALPHA#2"]
                select = page.locator("#scheduler-select")
                assert select.is_visible()
                assert select.locator("option").all_text_contents() == [
                    "all 2 schedulers", "ALPHA · live", f"{BETA_ADDRESS} · live"]

                # One scheduler: its hosts only, named as a single scheduler's page names them.
                select.select_option(ALPHA)
                wait("window.icetools.view === 'ALPHA'")
                assert sorted(page.locator(f"{rows} td:first-child").all_text_contents()) == ["node1", "node2"]
                assert "ALPHA" in page.url
                assert js("window.icetools.status.scheduler") == f"10.79.1.1:{alpha.scheduler_port}"
                select.select_option(BETA_ADDRESS)
                wait(f"window.icetools.view === '{BETA_ADDRESS}'")
                assert page.locator(f"{rows} td:first-child").all_text_contents() == ["node1"]

                # Beta-2's jobs show in Beta-2's view; ALPHA's view stays at its own count.
                before_alpha = serve.state(ALPHA)["totals"]["remote_done"]
                before = serve.state(BETA_ADDRESS)["totals"]["remote_done"]
                assert all(r.ok for r in beta.compile_files(2, tmp_path / "b", tag="page"))
                wait(f"window.icetools.state.totals.remote_done === {before + 2}")
                wait(f"document.querySelector('[data-total=remote_done]').textContent === '{before + 2}'")
                select.select_option(ALPHA)
                wait("window.icetools.view === 'ALPHA'")
                assert js("window.icetools.state.totals.remote_done") == before_alpha
                select.select_option("*")
                wait(f"window.icetools.state.totals.remote_done === {before_alpha + before + 2}")
                assert errors == []
            finally:
                browser.close()
    finally:
        serve.stop()


def test_scheduler_names_and_recording_files(tmp_path: Path) -> None:
    """-s NAME=HOST names a scheduler; HOST[:PORT] is named HOST:PORT; names are unique
    (ignoring case); a bad name or no address is a usage error. (Addresses are only parsed.)"""
    watched = _watched_schedulers(("farm1=127.0.0.1:9", "127.0.0.1", "[::1]:7"), ())
    assert [(w.name, w.first) for w in watched] == [
        ("farm1", ("127.0.0.1", 9)), ("127.0.0.1:8765", ("127.0.0.1", 8765)), ("[::1]:7", ("::1", 7))]
    for bad in (("a=127.0.0.1", "A=127.0.0.2"), ("a=127.0.0.1", "a=127.0.0.2"), ("127.0.0.1", "127.0.0.1:8765")):
        with pytest.raises(click.UsageError, match="two schedulers named"):
            _watched_schedulers(bad, ())
    with pytest.raises(click.BadParameter, match="name is 1 to 64"):
        _watched_schedulers(("my farm=127.0.0.1",), ())
    with pytest.raises(click.BadParameter, match="no scheduler address"):
        _watched_schedulers(("farm1=",), ())
    with pytest.raises(click.BadParameter, match="an empty netname"):
        _watched_schedulers(("farm1=127.0.0.1",), ("",))
    names = ["ALPHA", "10.0.0.1:8765", "10.0.0.1_8765", "[::1]:7"]
    paths = [Path(p) for p in _recording_outputs(str(tmp_path / "rec"), names, False)]
    assert [re.sub(r"-\d{8}-\d{6}\.icecap$", "", p.name) for p in paths] == [
        "ALPHA", "10.0.0.1_8765", "10.0.0.1_8765-2", "1_7"]
    assert (tmp_path / "rec").is_dir() and all(p.parent == tmp_path / "rec" for p in paths)
    # With --rotate: each scheduler's pattern, whose parts are named after it.
    assert [Path(p).name for p in _recording_outputs(str(tmp_path / "rec"), names[:2], True)] == [
        "ALPHA-%Y%m%d-%H%M%S.icecap", "10.0.0.1_8765-%Y%m%d-%H%M%S.icecap"]
    (tmp_path / "file").write_text("")
    with pytest.raises(IcetoolsError, match="takes a directory"):
        _recording_outputs(str(tmp_path / "file"), ["a", "b"], False)
    with pytest.raises(click.UsageError, match="not a pattern"):
        _recording_outputs(str(tmp_path / "farm-%Y.icecap"), ["a", "b"], True)


def test_a_scheduler_down_at_start_is_retried_while_the_other_is_served() -> None:
    """With several schedulers, one that does not answer when serve starts does not stop serve
    (with one it would: most likely a wrong address): it is retried with backoff, its status
    says so, the other is served; once it is there it is served too. Two stand-in schedulers
    replaying recordings in a namespace of our own."""
    require(netns_unsupported())
    with Namespace() as ns:
        up = StandIn(ns, RECORDINGS / "demo.icecap", "--listen", "127.0.0.1:9001", "--loop")
        later: StandIn | None = None
        serve = None
        try:
            up.ready()
            serve = Serve(ns, None, port=8770, schedulers=("-s", "up=127.0.0.1:9001", "-s", "later=127.0.0.1:9002"))
            wait_until(lambda: (s := serve.statuses()) and s["up"]["state"] == "live" and s["later"]["failures"] >= 2
                       and s, 30, "up served, later retried")
            statuses = serve.statuses() or {}
            assert statuses["later"]["state"] == "retrying" and "127.0.0.1:9002" in statuses["later"]["message"]
            assert len(serve.state("up")["hosts"]) == 6
            later = StandIn(ns, RECORDINGS / "build.icecap", "--listen", "127.0.0.1:9002", "--loop")
            later.ready()
            wait_until(lambda: (s := serve.state("later")) and s["status"]["state"] == "live" and len(s["hosts"]) == 3,
                       30, "later served once it is there")
            assert (serve.statuses() or {})["up"]["state"] == "live"
        finally:
            if serve is not None:
                err = serve.stop()
                assert "later: " in err and "up: " not in err, err  # only the one that failed is logged
            up.stop()
            if later is not None:
                later.stop()
