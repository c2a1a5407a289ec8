"""``icetools report``: a recording as one self-contained HTML file of charts.

The figures come from one fast replay through the Monitor: ``stats``' report as it is (so the
page shows the same numbers as ``stats --json``), the job rows of ``jobs`` (wait times, builds,
per-host busy time, the job timeline) and the hosts' slots while they were online (offered
slots). Time series are kept in a fixed number of buckets whatever the length of the recording
(:class:`Buckets`), and the job timeline holds the last :data:`TIMELINE_JOBS` jobs, so the file
stays small. The definitions are in docs/analysis.md.

The page is the web page's own chart code: web/report.js and the modules it imports (the same
files the live page loads from /static/) are inlined, imports removed, into one module script,
with d3 from web/vendor and the data as JSON escaped for a <script> element. Nothing is fetched,
so the file opens from file:// and can be mailed. Its CSP allows only those inline scripts (by
hash): text in the recording cannot become markup or script.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from .capture import CaptureReader
from .errors import OutputError
from .jobs import COLUMNS, JobsPublisher, Row
from .monitor import Event, EventKind, Monitor, Publisher
from .output import replaced
from .replay import ReplayResult, replay_file
from .stats import WhyAnalysis, gaps_json
from .stats import report as stats_report

#: Buckets of the time series (busy, offered, waiting): at most this many, at least half.
SERIES_BUCKETS = 400
#: Jobs drawn on the job timeline: the last ones to start.
TIMELINE_JOBS = 3000
#: Builds listed: the last ones.
MAX_BUILDS = 500
#: Upper bounds (ms) of the wait-time distribution's bars; the last bar is everything above.
WAIT_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)

def _web_root() -> Path:
    """The page's folder (as server.web_root: the installed package's, or web/ of a checkout)."""
    packaged = resources.files("icetools") / "web"
    if packaged.is_dir() and (packaged / "report.js").is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "web"


WEB = _web_root()

_I = {c: i for i, c in enumerate(COLUMNS)}
_REQ, _START, _END, _WAIT, _RUN = _I["requested"], _I["started"], _I["ended"], _I["wait_ms"], _I["run_ms"]
_KIND, _OUTCOME, _SERVER, _SUBMITTER, _FILE, _ID = (
    _I["kind"], _I["outcome"], _I["server"], _I["submitter"], _I["file"], _I["id"]
)


class Buckets:
    """Time-weighted means of a few quantities over ``[0, end)`` in at most ``limit`` buckets of
    equal width: the width doubles (neighbours merge) when the recording outgrows them, so memory
    is fixed however long it is. ``add(name, a, b, value)`` adds ``value`` over ``[a, b)``."""

    def __init__(self, names: tuple[str, ...], limit: int = SERIES_BUCKETS, width: float = 0.25) -> None:
        self.names = names
        self.limit = limit
        self.width = width
        self.sums: dict[str, list[float]] = {n: [] for n in names}

    def _grow(self, end: float) -> None:
        while end > self.width * self.limit:
            for n in self.names:
                s = self.sums[n]
                self.sums[n] = [sum(s[i:i + 2]) for i in range(0, len(s), 2)]
            self.width *= 2
        count = int(end / self.width) + 1
        for s in self.sums.values():
            if len(s) < count:
                s.extend([0.0] * (count - len(s)))

    def add(self, name: str, a: float, b: float, value: float) -> None:
        if b <= a or not value:
            return
        self._grow(b)
        s, w = self.sums[name], self.width
        i = int(a / w)
        while a < b:
            edge = min(b, (i + 1) * w)
            s[i] += (edge - a) * value
            a = edge
            i += 1

    def series(self, end: float) -> dict[str, Any]:
        """The means per bucket up to ``end`` (the last bucket's mean over its covered part)."""
        self._grow(end)
        w = self.width
        count = max(1, -(-end // w)) if end > 0 else 1
        count = int(count)
        out: dict[str, Any] = {"bucket_s": w, "t": [round(i * w, 3) for i in range(count)]}
        for n in self.names:
            s = self.sums[n][:count] + [0.0] * max(0, count - len(self.sums[n]))
            spans = [min(w, end - i * w) or w for i in range(count)]
            out[n] = [round(v / span, 3) for v, span in zip(s, spans)]
        return out


class ReportPublisher(Publisher):
    """Hosts' offered slots from the Monitor's host events; everything about jobs from the rows
    of a :class:`JobsPublisher` fed through :meth:`row`. Call :meth:`finish` at the end."""

    kinds = frozenset({EventKind.HOST_ADDED, EventKind.HOST_CHANGED, EventKind.HOST_OFFLINE, EventKind.RESET})

    def __init__(self) -> None:
        self.buckets = Buckets(("busy", "offered", "waiting"))
        #: host id -> (name, slots, since): hosts online now and the slots they offer.
        self._online: dict[int, tuple[str, int, float]] = {}
        self.wait_bars = [0] * (len(WAIT_BOUNDS_MS) + 1)
        self.jobs: collections.deque[Row] = collections.deque(maxlen=TIMELINE_JOBS)
        self.rows: list[Row] = []  # rows of the current batch, placed in finish()
        self.job_count = 0
        self.unfinished: list[Row] = []
        self.end = 0.0

    # -- hosts --------------------------------------------------------------------------------

    def _close(self, host_id: int, t: float) -> None:
        name, slots, since = self._online.pop(host_id)
        if t > since and slots:
            self.buckets.add("offered", since, t, slots)

    def publish(self, event: Event, monitor: Monitor) -> None:
        kind, t, host, _ = event
        if kind is EventKind.RESET:
            for host_id in list(self._online):
                self._close(host_id, t)
            return
        assert host is not None
        now = self._online.get(host.id)
        if kind is EventKind.HOST_OFFLINE:
            if now is not None:
                self._close(host.id, t)
            return
        name = host.name or f"#{host.id}"
        slots = 0 if host.no_remote else host.max_jobs  # a host that takes no remote jobs offers none
        if now is None or now[0] != name or now[1] != slots:
            if now is not None:
                self._close(host.id, t)
            self._online[host.id] = (name, slots, t)

    # -- jobs ---------------------------------------------------------------------------------

    def row(self, row: Row) -> None:
        self.job_count += 1
        if row[_OUTCOME] == "unfinished":
            self.unfinished.append(row)  # their end is the recording's: known in finish()
            return
        self._job(row, row[_END])

    def _job(self, row: Row, end: float | None) -> None:
        requested, started = row[_REQ], row[_START]
        remote = row[_KIND] == "remote"
        if remote and requested is not None:
            self.buckets.add("waiting", requested, started if started is not None else (end or requested), 1)
        if remote and started is not None and end is not None:
            self.buckets.add("busy", started, end, 1)
        wait = row[_WAIT]
        if remote and wait is not None:
            ms = int(round(wait))
            i = 0
            while i < len(WAIT_BOUNDS_MS) and ms > WAIT_BOUNDS_MS[i]:
                i += 1
            self.wait_bars[i] += 1
        if started is not None:
            self.jobs.append(row[:_END] + (end,) + row[_END + 1:])

    def finish(self, monitor: Monitor) -> None:
        self.end = end = monitor.now
        for row in self.unfinished:
            self._job(row, end)
        for host_id in list(self._online):
            self._close(host_id, end)

    # -- the figures --------------------------------------------------------------------------

    def figures(self, stats: dict[str, Any]) -> dict[str, Any]:
        """What the page draws: ``stats --json``'s report (its figures are the page's numbers),
        with the chart of builds cut to the last ones, and the series, bars and job timeline."""
        out = dict(stats)
        builds_total = len(out["builds"])
        out["builds"] = out["builds"][-MAX_BUILDS:]
        jobs = sorted(self.jobs, key=lambda r: (r[_START], r[_ID]))
        return {
            "stats": out,
            "end": round(self.end, 6),
            "series": self.buckets.series(self.end),
            "wait_bars": {"bounds_ms": list(WAIT_BOUNDS_MS), "counts": self.wait_bars},
            "builds_total": builds_total,
            "timeline": {
                "total": self.job_count,
                "columns": ["id", "file", "submitter", "server", "kind", "outcome", "started", "ended", "wait_ms"],
                "jobs": [
                    [r[_ID], r[_FILE], r[_SUBMITTER], r[_SERVER], r[_KIND], r[_OUTCOME], r[_START], r[_END], r[_WAIT]]
                    for r in jobs
                ],
            },
        }


def collect(reader: CaptureReader, *, progress_stream: TextIO | None = None) -> tuple[dict[str, Any], ReplayResult]:
    """Replay the capture as fast as possible; the report's data and the replay's result. The
    figures are stats' own (its WhyAnalysis beside the same replay), so the report and
    ``stats --json`` cannot disagree."""
    figures = ReportPublisher()
    jobs = JobsPublisher(figures.row)
    why = WhyAnalysis()
    monitor = Monitor(publishers=[jobs, figures, why])
    result = replay_file(monitor, reader, progress_stream=progress_stream)
    jobs.finish(monitor)
    figures.finish(monitor)
    why.finish(monitor)
    stats = stats_report(monitor, why)
    if len(getattr(reader, "files", ())) > 1:
        # Several files read as one: where nothing was recorded, as stats --json says it.
        stats["gaps"] = gaps_json(reader.gaps)  # type: ignore[attr-defined]
    return figures.figures(stats), result


# ---- the page -------------------------------------------------------------------------------

_IMPORT = re.compile(r'^import \{[\w\s,]+\} from "\./([\w/.-]+\.js)";\n', re.M)
_EXPORT = re.compile(r"^export (?=(?:async )?function\b|const\b|let\b|class\b)", re.M)


def _module_order(entry: str) -> list[Path]:
    """``entry`` and the modules it imports (relative ``import {..} from "./x.js"`` only), each
    before its importers."""
    order: list[Path] = []

    def visit(path: Path, stack: tuple[Path, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise RuntimeError(f"import cycle through {path.name}")
        text = path.read_text(encoding="utf-8")
        for dep in _IMPORT.findall(text):
            visit((path.parent / dep).resolve(), stack + (path,))
        order.append(path)

    visit((WEB / entry).resolve(), ())
    return order


def bundle(entry: str = "report.js") -> str:
    """The modules as one module script: imports dropped, ``export`` keywords dropped (the names
    are unique across the modules; a clash is a SyntaxError the browser test catches)."""
    parts = []
    for path in _module_order(entry):
        text = _IMPORT.sub("", path.read_text(encoding="utf-8"))
        text = _EXPORT.sub("", text)
        if re.search(r"^\s*(import|export)\b", text, re.M):
            raise RuntimeError(f"{path.name}: only 'import {{..}} from \"./x.js\";' and 'export function/const' can be inlined")
        parts.append(f"// ---- {path.relative_to(WEB)}\n{text}")
    return "\n".join(parts)


def script_json(data: Any) -> str:
    """JSON that can stand inside a <script> element: no ``<``, ``>`` or ``&`` (no ``</script>``,
    no ``<!--``), no line separators JavaScript once choked on."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (
        text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    )


def _inline_safe(text: str, what: str) -> str:
    if re.search(r"</script|<!--", text, re.I):
        raise RuntimeError(f"{what} cannot be inlined: it holds </script or <!--")
    return text


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render_html(data: dict[str, Any], title: str) -> str:
    """The report page: d3, the data and the page's modules inline; a CSP that lets only these
    scripts and this style run."""
    d3 = _inline_safe((WEB / "vendor" / "d3.v7.min.js").read_text(encoding="utf-8"), "d3")
    code = _inline_safe(bundle(), "the page's modules")
    style = _inline_safe((WEB / "report.css").read_text(encoding="utf-8"), "report.css")
    csp = (
        f"default-src 'none'; script-src {_sha256(d3)} {_sha256(code)}; style-src {_sha256(style)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    template = (WEB / "report.html").read_text(encoding="utf-8")
    parts = {
        "CSP": html.escape(csp),
        "TITLE": html.escape(title),
        "STYLE": style,
        "D3": d3,
        "DATA": script_json(data),
        "CODE": code,
    }
    # One pass, so that nothing substituted is searched again for placeholders.
    return re.sub(r"@@(\w+)@@", lambda m: parts[m.group(1)], template)


def write_report(reader: CaptureReader, target: Path, title: str, *, progress_stream: TextIO | None = None) -> ReplayResult:
    """Replay the capture and write its report to ``target``, replaced atomically (a damaged
    capture or a failure leaves any previous file as it was)."""
    if Path(target).is_dir():  # said before the replay, which may take a while
        raise OutputError(f"{target} is a directory")
    data, result = collect(reader, progress_stream=progress_stream)
    page = render_html(data, title).encode("utf-8")
    with replaced(target, binary=True) as out:
        out.write(page)
    return result
