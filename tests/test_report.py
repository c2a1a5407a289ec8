"""``icetools report``: the figures (against ``stats --json`` and the job rows of the same
recording), the downsampling, the bundling of the page's modules, bad input, and the page
itself in Debian's chromium opened from file:// (tests/test_browser.py's browser and tab).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from icetools import report as rep
from icetools.capture import CaptureReader, CaptureWriter

from . import scripted
from .test_browser import Tab, browser, expect, tab  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
BUILD = RECORDINGS / "build.icecap"
DEMO = RECORDINGS / "demo.icecap"


def icetools(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icetools: error: ") and text in lines[0], result.stderr


def stats_json(capture: Path) -> dict[str, Any]:
    result = icetools("stats", "--json", str(capture))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def jobs_json(capture: Path) -> list[dict[str, Any]]:
    result = icetools("jobs", "--json", str(capture))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def nearest_rank(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-len(ordered) * pct // 100)) - 1]


def embedded(html: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert match is not None
    return json.loads(match.group(1))


# ---- a recording with exactly known figures -------------------------------------------------

STATS = "Name:{}\nIP:10.0.0.{}\nMaxJobs:{}\nNoRemote:false\nPlatform:x86_64\nSpeed:1.0\nLoad:100\n"


def write_known(path: Path, hosts: tuple[str, str] = ("sub", "cc"), first_file: str = "/src/a.c") -> None:
    """Two hosts: the submitter (no slots) and a compile host with 2 slots, online from t=1 to
    21 (when it goes offline) and again from 39. Three jobs: waits of 500, 0 and 2500 ms, runs of 4, 4 and 2 s; the third
    fails. Then the submitter is idle for 31.5 s and a fourth job (a second build) waits 0 and
    runs 1 s; the recording ends at 42."""
    sub, cc = hosts
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1", t=0.0)
        w.frames([scripted.mon_stats(1, STATS.format(sub, 1, 0)), scripted.mon_stats(2, STATS.format(cc, 2, 2))], t=1.0)
        w.frames([scripted.mon_get_cs(1, 1, first_file)], t=2.0)
        w.frames([scripted.mon_job_begin(1, 0, 2)], t=2.5)
        w.frames([scripted.mon_get_cs(2, 1, "/src/b.c"), scripted.mon_job_begin(2, 0, 2)], t=3.0)
        w.frames([scripted.mon_get_cs(3, 1, "/src/c.c")], t=4.0)
        w.frames([scripted.mon_job_done(1, 0, real_msec=3900)], t=6.5)
        w.frames([scripted.mon_job_begin(3, 0, 2)], t=6.5)
        w.frames([scripted.mon_job_done(2, 0, real_msec=3800)], t=7.0)
        w.frames([scripted.mon_job_done(3, 1, real_msec=1900)], t=8.5)
        w.frames([scripted.mon_stats(2, "State:Offline\n")], t=21.0)
        w.frames([scripted.mon_stats(2, STATS.format(cc, 2, 2))], t=39.0)  # back, 2 s before the job
        w.frames([scripted.mon_get_cs(4, 1, "/src/d.c"), scripted.mon_job_begin(4, 0, 2)], t=40.0)
        w.frames([scripted.mon_job_done(4, 0, real_msec=900)], t=41.0)
        w.close("end", t=42.0)


def collect(path: Path) -> dict[str, Any]:
    with CaptureReader(path) as reader:
        data, _ = rep.collect(reader)
    return data


def test_the_figures_of_a_recording_whose_figures_are_known(tmp_path: Path) -> None:
    path = tmp_path / "known.icecap"
    write_known(path)
    data = collect(path)
    s = data["stats"]
    assert s["wait"]["cluster"] == {"count": 4, "p50_ms": 0, "p95_ms": 2500, "max_ms": 2500}
    assert s["wait"]["submitters"] == [{"name": "sub", "count": 4, "p50_ms": 0, "p95_ms": 2500, "max_ms": 2500}]
    u = s["utilisation"]
    # cc: 2 slots from 1 to 21 (offline) and from 39 to 42 (the end): 46 slot-seconds
    assert u["cluster"] == {"offered_slot_s": 46.0, "busy_slot_s": 11.0, "ratio": 0.239}
    assert u["hosts"] == [{"name": "cc", "offered_slot_s": 46.0, "busy_slot_s": 11.0, "ratio": 0.239}]  # not sub: no slots
    builds = s["builds"]
    assert s["build_gap_s"] == 30
    assert [(b["submitter"], b["start"], b["end"], b["jobs"], b["failed"]) for b in builds] == [
        ("sub", 2.0, 8.5, 3, 1),
        ("sub", 40.0, 41.0, 1, 0),
    ]
    assert builds[0]["parallelism"] == round(10 / 6.5, 2) and builds[0]["wait_p95_ms"] == 2500
    assert builds[0]["slowest_file"] in ("/src/a.c", "/src/b.c")  # both ran 4 s
    bars = data["wait_bars"]["counts"]
    assert bars[0] == 2  # the two 0 ms waits
    assert bars[rep.WAIT_BOUNDS_MS.index(500)] == 1 and bars[rep.WAIT_BOUNDS_MS.index(5000)] == 1
    assert sum(bars) == 4
    # the series: means per bucket, the slot seconds add up
    series = data["series"]
    width = series["bucket_s"]
    assert sum(series["offered"]) * width == pytest.approx(46.0)
    assert sum(series["busy"]) * width == pytest.approx(11.0)
    assert sum(series["waiting"]) * width == pytest.approx(0.5 + 2.5)
    assert data["timeline"]["total"] == 4 and len(data["timeline"]["jobs"]) == 4


def test_buckets_merge_as_the_recording_grows() -> None:
    b = rep.Buckets(("x",), limit=8, width=1.0)
    b.add("x", 0.5, 2.5, 2)  # 4 slot-seconds
    b.add("x", 30.0, 31.0, 1)  # beyond 8 buckets of 1 s: they become 4 s wide
    out = b.series(32.0)
    assert out["bucket_s"] == 4.0 and len(out["x"]) == 8
    assert out["x"][0] == 1.0  # 4 slot-seconds over the first 4 s
    assert out["x"][7] == 0.25
    assert sum(v * 4.0 for v in out["x"]) == 5.0


def test_a_long_recording_is_downsampled_and_its_timeline_capped(tmp_path: Path) -> None:
    path = tmp_path / "long.icecap"
    jobs = rep.TIMELINE_JOBS + 500
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1", t=0.0)
        w.frames([scripted.mon_stats(1, STATS.format("sub", 1, 0)), scripted.mon_stats(2, STATS.format("cc", 2, 4))], t=0.5)
        for i in range(1, jobs + 1):
            t = i * 10.0  # a job every 10 s: 35,000 s of recording
            w.frames([scripted.mon_get_cs(i, 1, f"/src/f{i}.c"), scripted.mon_job_begin(i, 0, 2)], t=t)
            w.frames([scripted.mon_job_done(i, 0, real_msec=1000)], t=t + 1)
        w.close("end", t=jobs * 10.0 + 5)
    out = tmp_path / "long.html"
    result = icetools("report", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = embedded(out.read_text())
    assert rep.SERIES_BUCKETS // 2 <= len(data["series"]["t"]) <= rep.SERIES_BUCKETS
    timeline = data["timeline"]
    assert timeline["total"] == jobs and len(timeline["jobs"]) == rep.TIMELINE_JOBS
    assert timeline["jobs"][0][0] == jobs - rep.TIMELINE_JOBS + 1 and timeline["jobs"][-1][0] == jobs  # the last ones
    assert out.stat().st_size < 1_500_000


# ---- the page's code: the live page's own modules, inlined ---------------------------------


def test_the_report_inlines_the_live_pages_modules() -> None:
    code = rep.bundle()
    for module in ("lib/format.js", "lib/charts.js", "report.js"):
        source = (ROOT / "web" / module).read_text()
        body = re.sub(r"^import .*\n", "", source, flags=re.M).replace("export ", "")
        assert body in code, module  # the same text, not a copy that could drift
    assert not re.search(r"^\s*(import|export)\b", code, re.M)
    # and the live page loads the same files as modules of its own
    assert 'import { lineChart } from "../lib/charts.js";' in (ROOT / "web" / "live" / "utilisation.js").read_text()
    assert 'from "../lib/format.js";' in (ROOT / "web" / "live" / "jobs.js").read_text()
    assert '<script type="module" src="/static/app.js"></script>' in (ROOT / "web" / "index.html").read_text()


def test_package_data_holds_every_file_of_the_page() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["icetools.web"]
    web = ROOT / "web"
    files = [p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert "lib/charts.js" in files and "live/core.js" in files and "report.html" in files
    missing = [f for f in files if not any(fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns)]
    assert missing == []


@pytest.mark.parametrize(
    "text",
    ['</script><script>alert(1)</script>', "<!--<script>", "a & b > c", "\u2028\u2029", 'q"uo\'te\\', "\x1b[31m\x00"],
)
def test_data_cannot_end_the_script_element(text: str) -> None:
    out = rep.script_json({"name": text, "list": [text]})
    assert not re.search(r"[<>&\u2028\u2029]", out)
    assert json.loads(out) == {"name": text, "list": [text]}


# ---- bad input ----------------------------------------------------------------------------


def test_bad_input_is_one_line_and_leaves_the_old_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("the old report")
    assert_one_line_error(icetools("report", str(tmp_path / "nope.icecap"), "-o", str(out)), "no such file")
    garbage = tmp_path / "g.icecap"
    garbage.write_text("not a capture")
    assert_one_line_error(icetools("report", str(garbage), "-o", str(out)), "not an icetools capture")
    corrupt = tmp_path / "c.icecap"
    write_known(corrupt)
    data = bytearray(corrupt.read_bytes())
    data[data.index(scripted.mon_get_cs(3, 1, "/src/c.c")) - 13] = 0x22  # a record kind that is none
    corrupt.write_bytes(bytes(data))
    assert_one_line_error(icetools("report", str(corrupt), "-o", str(out)), "corrupt capture")
    assert out.read_text() == "the old report"
    assert_one_line_error(icetools("report", str(BUILD), "-o", str(tmp_path)), "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(icetools("report", str(BUILD), "-o", str(blocker / "r.html")), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.icecap", "file", "g.icecap", "r.html"]  # no temp files
    ok = icetools("report", str(BUILD), "-o", str(out))
    assert ok.returncode == 0 and ok.stderr == ""
    assert out.read_text().startswith("<!doctype html>")


# ---- in the browser -----------------------------------------------------------------------


@pytest.fixture
def report_of(tmp_path: Path) -> Iterator[Any]:
    def make(capture: Path) -> Path:
        out = tmp_path / f"{capture.stem}.html"
        result = icetools("report", str(capture), "-o", str(out))
        assert result.returncode == 0, result.stderr
        return out

    yield make


def open_report(t: Tab, path: Path) -> list[str]:
    """Open the report from file://; the URLs it requested (it must need nothing)."""
    requests: list[str] = []
    t.page.on("request", lambda r: requests.append(r.url))
    t.page.goto(path.as_uri())
    t.wait("() => window.icetoolsReport && window.icetoolsReport.rendered")
    assert t.js("() => window.icetoolsReport.failed") == []
    return requests


def figures(t: Tab) -> dict[str, str]:
    return t.js("() => Object.fromEntries(Array.from(document.querySelectorAll('[data-figure]'), e => [e.dataset.figure, e.textContent]))")


def table_rows(t: Tab, selector: str) -> list[dict[str, str]]:
    return t.js(
        "(s) => Array.from(document.querySelectorAll(s + ' tbody tr:not(.empty)'), tr => Object.fromEntries(Array.from(tr.cells, c => [c.dataset.col, c.textContent])))",
        selector,
    )


@pytest.mark.parametrize("capture", [BUILD, DEMO], ids=["build", "demo"])
def test_the_report_shows_the_figures_of_stats(capture: Path, report_of: Any, tab: Tab) -> None:  # noqa: F811
    path = report_of(capture)
    stats = stats_json(capture)
    rows = jobs_json(capture)
    requests = open_report(tab, path)
    assert requests == [path.as_uri()]  # nothing fetched: d3, data and code are inside
    shown = figures(tab)
    for key in ("remote", "local", "failed", "lost", "rerun_locally"):
        assert shown[f"jobs.{key}"] == str(stats["jobs"][key]), key
    assert shown["peak_jobs_per_second"] == str(stats["peak_jobs_per_second"])
    # waits: stats --json's where it has them (issue 11's stats), else from the job rows (remote
    # jobs whose request and start were recorded, whole ms), which stats' definition matches
    waits = [round(r["wait_ms"]) for r in rows if r["kind"] == "remote" and r["wait_ms"] is not None]
    assert len(waits) >= 10
    wait = stats["wait"]["cluster"] if "wait" in stats else {
        "count": len(waits), "p50_ms": nearest_rank(waits, 50), "p95_ms": nearest_rank(waits, 95), "max_ms": max(waits)
    }
    assert wait["count"] == len(waits)
    for key in ("p50_ms", "p95_ms", "max_ms"):
        assert shown[f"wait.cluster.{key}"] == str(wait[key]), key
    assert tab.js("() => document.querySelector('#waits-note').textContent").startswith(f"{len(waits)} remote jobs")
    # per host: stats' counts, and busy slot time from the job rows
    hosts = table_rows(tab, "#hosts-table")
    assert [h["name"] for h in hosts] == sorted(h["name"] for h in stats["hosts"])
    by_name = {h["name"]: h for h in stats["hosts"]}
    end = embedded(path.read_text())["end"]
    for h in hosts:
        s = by_name[h["name"]]
        for key in ("compiled", "submitted", "local", "failed", "lost"):
            assert h[key] == str(s[key]), (h["name"], key)
        busy = sum(
            (r["ended"] if r["ended"] is not None else end) - r["started"]
            for r in rows
            if r["kind"] == "remote" and r["server"] == h["name"] and r["started"] is not None
        )
        use = {u["name"]: u for u in stats["utilisation"]["hosts"]} if "utilisation" in stats else None
        if use is not None:  # stats' own figure (capped at the host's slots)
            expected = f'{use[h["name"]]["busy_slot_s"]:.1f}' if h["name"] in use else "–"
        else:  # a host that offered no slots (a submitter) has no entry
            offering = {u["name"] for u in embedded(path.read_text())["stats"]["utilisation"]["hosts"]}
            expected = f"{busy:.1f}" if h["name"] in offering else "–"
        assert h["busy_slot_s"] == expected, h["name"]
    failing = table_rows(tab, "#failing-table")
    assert {f["name"]: (int(f["failed"]), int(f["lost"])) for f in failing} == {
        h["name"]: (h["failed"], h["lost"]) for h in stats["hosts"] if h["failed"] or h["lost"]
    }
    slowest = table_rows(tab, "#slowest-table")
    assert [(r["file"], r["host"], int(r["real_msec"])) for r in slowest] == [
        (f["file"], f["host"], f["real_msec"]) for f in stats["slowest_files"]
    ]
    # the charts are there: three lines, a bar per host, the wait bars, a span per job
    assert tab.js("() => document.querySelectorAll('#series-chart path.series').length") == 3
    assert tab.js("() => document.querySelectorAll('#hosts-chart g.bar').length") == len(stats["hosts"])
    assert tab.js("() => document.querySelectorAll('#waits-chart rect.count').length") == len(rep.WAIT_BOUNDS_MS) + 1
    started = sum(1 for r in rows if r["started"] is not None)
    assert tab.js("() => document.querySelectorAll('#jobs-chart rect.span').length") == min(started, rep.TIMELINE_JOBS)
    assert tab.js("() => document.querySelectorAll('#builds-chart rect.span').length") >= 1
    # the job timeline zooms: the wheel over it widens the bars
    width = "() => Math.max(...Array.from(document.querySelectorAll('#jobs-chart rect.span'), r => r.width.baseVal.value))"
    before = tab.js(width)
    box = tab.page.locator("#jobs-chart svg").bounding_box()
    tab.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    tab.page.mouse.wheel(0, -600)
    tab.wait(f"() => ({width})() > {before} * 2")
    tab.assert_clean()


HOSTILE_HOSTS = (
    '</script><script>window.__xss=1</script>',
    '<img src=x onerror="window.__xss=2">\x1b[31m\x07q"uo\'te & <!--',
)
HOSTILE_FILE = "/src/</SCRIPT><script>window.__xss=3</script>\u2028.c"
HOSTILE_CAPTURE = "<img src=x onerror=window.__xss=4>@@DATA@@ & .icecap"  # its name is the title


def test_hostile_names_are_text_in_the_report(tmp_path: Path, report_of: Any, tab: Tab) -> None:  # noqa: F811
    capture = tmp_path / HOSTILE_CAPTURE
    write_known(capture, HOSTILE_HOSTS, HOSTILE_FILE)
    path = report_of(capture)
    html = path.read_text()
    assert len(re.findall("</script", html, re.I)) == 3  # the data cannot close its element
    assert "<img" not in html and "</SCRIPT>" not in html
    open_report(tab, path)
    assert tab.js("() => document.querySelector('#report-title').textContent") == HOSTILE_CAPTURE
    assert tab.js("() => document.title") == f"{HOSTILE_CAPTURE} - icetools report"
    hosts = [h["name"] for h in table_rows(tab, "#hosts-table")]
    assert sorted(hosts) == sorted(HOSTILE_HOSTS)
    failing = [h["name"] for h in table_rows(tab, "#failing-table")]
    assert failing == [HOSTILE_HOSTS[1]]
    slowest = table_rows(tab, "#slowest-table")
    assert HOSTILE_FILE in [r["file"] for r in slowest]
    labels = tab.js("() => Array.from(document.querySelectorAll('#builds-chart .lane-label'), e => e.textContent)")
    assert labels == [HOSTILE_HOSTS[0]]
    titles = tab.js("() => Array.from(document.querySelectorAll('#jobs-chart rect.span title'), e => e.textContent)")
    assert any(HOSTILE_FILE in t for t in titles)
    assert tab.js("() => document.querySelectorAll('img, [onerror]').length") == 0
    assert tab.js("() => document.scripts.length") == 3  # d3, the data, the code: nothing injected
    tab.page.wait_for_timeout(300)  # an injected image's error event would fire asynchronously
    assert tab.js("() => window.__xss") is None
    tab.assert_clean()


def test_a_report_of_several_files_shows_the_gaps(tmp_path: Path, tab: Tab) -> None:  # noqa: F811
    """Two files of one scheduler an hour apart: the report reads them as one recording, says
    there is one gap and shades it on the slots chart, and its figures (gaps included) are
    those of `stats --json` over the same files."""
    from .test_many_files import split

    source = RECORDINGS / "build.icecap"
    with CaptureReader(source) as reader:
        times = [r.t for r in reader]
    middle = times[len(times) // 2]
    parts = split(source, tmp_path / "parts", [middle], gap=3600.0)
    out = tmp_path / "two.html"
    result = icetools("report", str(parts[0].parent), "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = embedded(out.read_text())
    stats = stats_json(parts[0].parent)
    assert len(stats["gaps"]) == 1 and stats["gaps"][0]["seconds"] > 3000
    assert data["stats"]["gaps"] == stats["gaps"]
    assert data["stats"]["jobs"] == stats["jobs"] and data["stats"]["utilisation"] == stats["utilisation"]
    open_report(tab, out)
    assert figures(tab)["gaps"] == "1"
    assert tab.js("() => document.querySelectorAll('#series-chart rect.band.gap').length") == 1
    title = tab.js("() => document.querySelector('#series-chart rect.band.gap title').textContent")
    assert title.startswith("no recording from ")
    tab.assert_clean()
