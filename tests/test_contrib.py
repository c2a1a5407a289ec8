"""The operations kit in contrib/: the systemd unit, the Prometheus rules and the Grafana dashboard.

The static checks use the real tools (``systemd-analyze verify``, ``promtool check``/``test
rules``). The last test runs them all together: the unit's own command line starts ``icetools
serve --record`` against the real test cluster, Debian's Prometheus scrapes it every second while
the cluster compiles, and every dashboard query and rule expression goes through Prometheus' HTTP
API and must return series.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .netns import missing_programs, require, wait_until
from .realcluster import Cluster, make_cluster_fixture

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
UNIT = CONTRIB / "systemd" / "icetools-serve.service"
UNIT_ENV = CONTRIB / "systemd" / "icetools-serve.env"
RULES = CONTRIB / "prometheus" / "icetools.rules.yml"
RULE_TESTS = CONTRIB / "prometheus" / "icetools.rules.test.yml"
PROMETHEUS_EXAMPLE = CONTRIB / "prometheus" / "prometheus.example.yml"
DASHBOARD = CONTRIB / "grafana" / "icetools-dashboard.json"
#: Where the unit expects icetools; the tests run this checkout's instead.
UNIT_ICETOOLS = "/usr/local/bin/icetools"

real_cluster = make_cluster_fixture("real_cluster", daemons=3)


def program(name: str, packages: str) -> str:
    require(missing_programs([name], packages))
    path = shutil.which(name)
    assert path is not None
    return path


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


# ------------------------------------------------------------------------------ Prometheus


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def test_rules_pass_promtool_check() -> None:
    promtool = program("promtool", "prometheus")
    check = run([promtool, "check", "rules", str(RULES)])
    assert check.returncode == 0, check.stdout + check.stderr
    count = sum(len(g["rules"]) for g in rule_groups())
    assert f"SUCCESS: {count} rules found" in check.stdout


def test_rules_unit_tests_pass_and_cover_every_rule() -> None:
    promtool = program("promtool", "prometheus")
    result = run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    recorded = {re.match(r"[\w:]+", e["expr"]).group() for case in tests  # type: ignore[union-attr]
                for e in case.get("promql_expr_test", [])}
    rules = [r for g in rule_groups() for r in g["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    # Each alert is seen firing and seen quiet when it must not fire; each recording rule's value.
    assert fired == alerts and quiet == alerts, (alerts - fired, alerts - quiet)
    assert recorded == {r["record"] for r in rules if "record" in r}


def test_example_prometheus_config_is_valid() -> None:
    promtool = program("promtool", "prometheus")
    check = run([promtool, "check", "config", PROMETHEUS_EXAMPLE.name], cwd=PROMETHEUS_EXAMPLE.parent)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    # IcetoolsDown selects the scrape job by this name.
    assert [j["job_name"] for j in config["scrape_configs"]] == ["icetools"]
    assert 'up{job="icetools"}' in RULES.read_text()


# ------------------------------------------------------------------------------ systemd


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = program("systemd-analyze", "systemd")
    verify = run([analyze, "verify", str(UNIT)])
    # verify only warns (exit 0) about unknown keys and bad values: any output is a defect.
    assert verify.returncode == 0 and not verify.stdout and not verify.stderr, verify.stdout + verify.stderr
    security = run([analyze, "security", "--offline=yes", str(UNIT)])
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert score, security.stdout + security.stderr
    print(f"systemd-analyze security: exposure {score.group(1)} (0 safest, 10 unsafe)")
    assert float(score.group(1)) < 2.0, security.stdout


def unit_settings(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def systemd_unescape(value: str) -> str:
    """A command line as systemd hands it over: ``$$`` and ``%%`` become ``$`` and ``%``. Any other
    ``$`` (systemd's own variable expansion) or ``%`` specifier is refused: the test would then
    not run what systemd runs."""

    def one(m: re.Match[str]) -> str:
        if m.group() in ("$$", "%%"):
            return m.group()[0]
        raise AssertionError(f"ExecStart uses systemd expansion {m.group()!r}: the test cannot reproduce it")

    return re.sub(r"\$\$|%%|[$%].", one, value)


def unit_environment() -> dict[str, str]:
    """Environment= defaults, then the example EnvironmentFile over them, as systemd reads them."""
    env: dict[str, str] = {}
    for value in unit_settings("Environment"):
        env.update(word.split("=", 1) for word in shlex.split(value))  # type: ignore[misc]
    for line in UNIT_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value
    return env


def test_unit_runs_the_installed_command_and_reads_the_scheduler_from_its_environment_file() -> None:
    (exec_start,) = unit_settings("ExecStart")
    argv = shlex.split(systemd_unescape(exec_start))
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2].startswith(f"exec {UNIT_ICETOOLS} serve ")
    assert '--record "$STATE_DIRECTORY/" --rotate 1d --keep 30' in argv[2]
    assert unit_settings("EnvironmentFile") == ["-/etc/default/icetools-serve"]
    env = unit_environment()
    assert env["ICECC_SCHEDULER"] and env["ICETOOLS_LISTEN"] == "127.0.0.1:8770"


# ------------------------------------------------------------------------------ Grafana


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dash = dashboard()
    assert dash["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "description": "The Prometheus that scrapes icetools serve",
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus",
    }]
    assert isinstance(dash["schemaVersion"], int) and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"instance", "host"} <= set(variables)
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]
            # Every variable a query uses is defined (or one of Grafana's own).
            for name in re.findall(r"\$(\w+)", t["expr"]):
                assert name in variables or name == "__rate_interval", (p["title"], name)
    # Per-host panels: a row repeated for each selected host, its panels all about $host.
    (host_row,) = [p for p in panels if p.get("repeat")]
    assert host_row["type"] == "row" and host_row["repeat"] == "host"
    after = [p for p in panels if p["gridPos"]["y"] > host_row["gridPos"]["y"]]
    assert len(after) == 3 and all('host=~"$host"' in t["expr"] for p in after for t in p["targets"])


# ------------------------------------------------------------------------------ all together

#: Runs inside namespace A: each JSON line on stdin is a query for Prometheus' HTTP API (a path and
#: its parameters); prints each answer's JSON, or null when Prometheus does not answer (yet).
_QUERY_SCRIPT = """
import json, sys, urllib.error, urllib.parse, urllib.request
base = sys.argv[1]
for line in sys.stdin:
    path, params = json.loads(line)
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
        print(json.dumps(json.loads(body) if path.startswith("/api/") else body))
    except urllib.error.HTTPError as e:
        # The API's errors are JSON; anything else (503 "Service Unavailable" while the server
        # starts up) is no answer yet.
        try:
            print(json.dumps(json.loads(e.read().decode())))
        except ValueError:
            print("null")
    except OSError:
        print("null")
"""

SERVE_LISTEN = "127.0.0.1:18771"
PROMETHEUS_LISTEN = "127.0.0.1:19091"


class Prometheus:
    """Debian's prometheus inside namespace A, on its loopback, with its own data directory."""

    def __init__(self, cluster: Cluster, workdir: Path, binary: str) -> None:
        self.cluster = cluster
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "icetools", "static_configs": [{"targets": [SERVE_LISTEN]}]}],
        }))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = cluster.popen_in_a(
                [binary, f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={PROMETHEUS_LISTEN}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def ask(self, *requests: tuple[str, dict[str, str]]) -> list[Any]:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        result = self.cluster.run_in_a(
            [sys.executable, "-c", _QUERY_SCRIPT, f"http://{PROMETHEUS_LISTEN}"],
            input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def query(self, *exprs: str) -> list[list[dict[str, Any]]]:
        """Each expression's instant result now; an API error fails with Prometheus' message."""
        answers = self.ask(*(("/api/v1/query", {"query": e}) for e in exprs))
        for expr, answer in zip(exprs, answers):
            assert answer and answer["status"] == "success", (expr, answer)
        return [a["data"]["result"] for a in answers]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def selectors(expr: str) -> list[str]:
    """The series selectors in a PromQL expression (metric name and matchers), functions,
    aggregations, groupings and ranges left out."""
    bare = re.sub(r"\[[^\]]*\]", "", _GROUPING.sub("", expr))
    found = []
    for m in _SELECTOR.finditer(bare):
        rest = bare[m.end():].lstrip()
        if m.group(1).lower() in _KEYWORDS or (m.group(2) is None and rest.startswith("(")):
            continue
        found.append(m.group(1) + (m.group(2) or ""))
    return found


def test_selectors_finds_what_a_query_reads() -> None:
    assert selectors('sum without (result) (rate(icecream_jobs_total{result=~"ok|failed"}[10m])) / x'
                     ' and on (job, instance) icetools_monitor_connected == 1') == [
        'icecream_jobs_total{result=~"ok|failed"}', "x", "icetools_monitor_connected"]


def test_kit_against_a_real_cluster(real_cluster: Cluster, tmp_path: Path) -> None:
    """The unit's command line runs serve --record on the real cluster, Prometheus scrapes it with
    the rules loaded while the cluster compiles, and every dashboard query, variable query and
    rule expression returns series; the alerts stay quiet on the healthy cluster until serve stops,
    when IcetoolsDown's expression turns true."""
    binary = program("prometheus", "prometheus")
    state = tmp_path / "state"
    state.mkdir()
    (exec_start,) = unit_settings("ExecStart")
    argv = shlex.split(systemd_unescape(exec_start))
    # This checkout's icetools where the unit has the installed one.
    argv[2] = argv[2].replace(UNIT_ICETOOLS, shlex.join([sys.executable, "-m", "icetools"]))
    env = {**os.environ, **unit_environment(), "STATE_DIRECTORY": str(state), "ICETOOLS_LISTEN": SERVE_LISTEN,
           "ICECC_SCHEDULER": f"127.0.0.1:{real_cluster.scheduler_port}"}
    # Prometheus first: until serve listens, its scrapes fail and up is 0.
    prometheus = Prometheus(real_cluster, tmp_path, binary)
    serve = real_cluster.popen_in_a(argv, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:

        def value(expr: str) -> float | None:
            answer = prometheus.ask(("/api/v1/query", {"query": expr}))[0]
            result = answer and answer.get("status") == "success" and answer["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        assert serve.poll() is None, serve.communicate()
        wait_until(lambda: value('icecream_hosts_online{job="icetools"}') == 3, 30, "3 hosts scraped",
                   describe=lambda: prometheus.log.read_text()[-2000:])
        results = real_cluster.compile_files(6, tmp_path / "src", tag="contrib")
        assert all(r.ok for r in results), [r.stderr for r in results]
        # Scraped after the last job ended, and the rules evaluated since.
        wait_until(lambda: value('sum(icetools_host_jobs_total{result="ok"})') == 6, 30, "6 jobs scraped")
        wait_until(lambda: value("icetools:slot_utilisation:ratio") is not None, 30, "recording rules evaluated")

        # The dashboard's variables, as Grafana's label_values() would list them.
        dash = dashboard()
        variables = {v["name"]: v["query"] for v in dash["templating"]["list"] if v["type"] == "query"}
        assert all(v["definition"] == v["query"] for v in dash["templating"]["list"] if v["type"] == "query")
        label_values = {}
        for name, definition in variables.items():
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
            assert m, definition
            selector = m.group(1).replace("$instance", SERVE_LISTEN)
            (series,) = prometheus.query(selector)
            label_values[name] = sorted({s["metric"][m.group(2)] for s in series})
        assert label_values == {"instance": [SERVE_LISTEN], "host": ["node1", "node2", "node3"]}

        # A host that compiled (node1 offers no slots): its per-host panels have all their series.
        (busy,) = prometheus.query('icetools_host_jobs_total{result="ok"} > 0')
        host = sorted(s["metric"]["host"] for s in busy)[0]
        substitutions = {"$instance": SERVE_LISTEN, "$host": host, "$__rate_interval": "1m"}

        def substitute(expr: str) -> str:
            for variable, replacement in substitutions.items():
                expr = expr.replace(variable, replacement)
            return expr

        panels = dashboard_exprs(dash)
        answers = prometheus.query(*(substitute(e) for _, e in panels))
        empty = [(title, e) for (title, e), result in zip(panels, answers) if not result]
        assert not empty, f"dashboard queries without series: {empty}"

        # The rules as Prometheus loaded them: all healthy, recording rules with series, alert
        # expressions quiet on this healthy cluster but every series they read present.
        (loaded,) = prometheus.ask(("/api/v1/rules", {}))
        rules = [r for g in loaded["data"]["groups"] for r in g["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in rule_groups())
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        records = [r for r in rules if r["type"] == "recording"]
        alerts = [r for r in rules if r["type"] == "alerting"]
        answers = prometheus.query(*(r["query"] for r in records), *(r["name"] for r in records))
        assert all(answers), [r["name"] for r, a in zip(records * 2, answers) if not a]
        firing = prometheus.query(*(r["query"] for r in alerts))
        assert not any(firing), [(r["name"], a) for r, a in zip(alerts, firing) if a]
        read = sorted({s for r in alerts for s in selectors(r["query"])})
        assert len(read) >= 8, read
        answers = prometheus.query(*read)
        assert all(answers), [s for s, a in zip(read, answers) if not a]

        # serve stops: up turns 0, which is IcetoolsDown's expression.
        serve.terminate()
        _, err = serve.communicate(timeout=30)
        assert serve.returncode == 0, err
        (down,) = [r for r in alerts if r["name"] == "IcetoolsDown"]
        wait_until(lambda: prometheus.query(down["query"])[0], 30, "IcetoolsDown's expression on a stopped serve")
    finally:
        if serve.poll() is None:
            serve.terminate()
            serve.communicate(timeout=30)
        prometheus.stop()
    # The recording is in the state directory, named after the start time, with every job.
    (capture,) = state.iterdir()
    assert re.fullmatch(r"icecream-\d{8}-\d{6}\.icecap", capture.name), capture.name
    dump = run([sys.executable, "-m", "icetools", "dump", "--json", str(capture)], cwd=ROOT)
    assert dump.returncode == 0, dump.stderr
    assert sum(json.loads(line)["type"] == "MON_JOB_DONE" for line in dump.stdout.splitlines()) == 6
