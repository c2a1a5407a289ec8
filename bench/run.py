"""icetools performance figures, side by side, in one run.

    python bench/run.py              # N = 1M and 5M frames (a few minutes)
    python bench/run.py --quick      # N = 200k frames only
    python bench/run.py --frames 2M,10M --keep
    python bench/run.py --no-summaries  # without stats over 30 files (bench/summaries.py)

For each size N it grows recordings/demo.icecap into an N-frame capture (bench/grow.py), extracts
the raw frame stream for the C++ reference reader (bench/reference/icecc_read, icecream's own
libicecc), then measures each figure in its own subprocess: frames (or lines) per second and the
child's peak RSS. It prints a table with the targets and the ratio to the reference. Benchmarks
print figures; nothing here asserts a timing.

Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recordings" / "demo.icecap"
GROW = ROOT / "bench" / "grow.py"
REF_DIR = ROOT / "bench" / "reference"
REF_BIN = REF_DIR / "icecc_read"
REF_HOWTO = (
    "apt-get install -y libicecc-dev liblzo2-dev libzstd-dev libarchive-dev libcap-ng-dev "
    "&& bench/reference/build.sh"
)
DEFAULT_FRAMES = "1000000,5000000"
QUICK_FRAMES = [200_000]
#: A measurement that takes less than this is run a second time and the better run kept.
BEST_OF_2_BELOW = 3.0
RSS_LIMIT_MB = 150.0

# ------------------------------------------------------------------------------------------
# Workers: the in-process measurements, each run as `python bench/run.py --worker KIND FILE`
# in a fresh interpreter so that its peak RSS is its own. Each prints one JSON line.


def _worker(kind: str, path: str, out: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from icetools.capture import CaptureReader, FrameRecord

    if kind == "read":
        # Baseline: iterate the capture's records without decoding anything.
        frames = 0
        t0 = time.perf_counter()
        with CaptureReader(path) as reader:
            for record in reader:
                if type(record) is FrameRecord:
                    frames += 1
        seconds = time.perf_counter() - t0
        print(json.dumps({"frames": frames, "seconds": seconds}))
    elif kind == "decode":
        from icetools.messages import decode

        t0 = time.perf_counter()
        with CaptureReader(path) as reader:
            protocol = reader.header.protocol
            data = [r.data for r in reader if type(r) is FrameRecord and r.protocol == protocol]
            if reader.frames != len(data):
                raise SystemExit(f"{path}: frames at more than one protocol; decode-only wants one")
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        for frame in data:
            decode(frame, protocol)
        seconds = time.perf_counter() - t0
        print(json.dumps({"frames": len(data), "seconds": seconds, "load_seconds": load}))
    elif kind == "extract":
        # The raw stream for the reference: the frames' bytes back to back, no capture records.
        # Also the recorded time of frame number `out`'s middle (for the seek row) and the last.
        assert out is not None
        raw_path, expected = out.split(",")
        middle = int(expected) // 2
        frames = 0
        protocols: set[int] = set()
        t_mid = t_last = 0.0
        batch: list[bytes] = []
        with CaptureReader(path) as reader, open(raw_path, "wb") as f:
            for record in reader:
                if type(record) is FrameRecord:
                    frames += 1
                    protocols.add(record.protocol)
                    batch.append(record.data)
                    t_last = record.t
                    if frames == middle:
                        t_mid = record.t
                    if len(batch) >= 4096:
                        f.write(b"".join(batch))
                        batch.clear()
            f.write(b"".join(batch))
        print(
            json.dumps(
                {"frames": frames, "protocols": sorted(protocols), "t_mid": t_mid, "t_last": t_last}
            )
        )
    else:
        raise SystemExit(f"unknown worker {kind!r}")


# ------------------------------------------------------------------------------------------
# Running and measuring children


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    seconds: float  # wall time of the whole child process
    rss_kb: int | None  # the child's peak RSS (ru_maxrss)
    rc: int
    stdout: str
    stderr: str

    def error(self) -> str:
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.rc}"


def gnu_time() -> str | None:
    """/usr/bin/time if it is GNU time (-f/-o), else None."""
    exe = "/usr/bin/time"
    if not os.access(exe, os.X_OK):
        return None
    with tempfile.NamedTemporaryFile("r") as out:
        try:
            p = subprocess.run(
                [exe, "-f", "%M", "-o", out.name, "true"],
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return exe if p.returncode == 0 and out.read().strip().isdigit() else None


class Runner:
    """Runs children and reads their peak RSS.

    Linux carries the RSS high-water mark of the memory a process had before exec() into the
    exec'd program's ru_maxrss, and a Python child is spawned from this (much larger) process.
    So children are started under GNU time (a small C program whose fork() children start from
    its own tiny footprint) when it is there; otherwise os.wait4() is used and every figure
    includes this process's own RSS as a floor, which the report says.
    """

    def __init__(self, work: Path) -> None:
        self.work = work
        self.time = gnu_time()
        self.env = dict(os.environ)
        # icetools keeps its seek index in $XDG_CACHE_HOME/icetools: point that into the work
        # folder, so every run starts without an index and leaves nothing behind in ~/.cache.
        self.cache = work / "cache"
        self.env["XDG_CACHE_HOME"] = str(self.cache)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])
        )

    def run(self, cmd: list[str], *, keep_stdout: bool = False) -> Run:
        out_path = self.work / "child.out"
        err_path = self.work / "child.err"
        rss_path = self.work / "child.rss"
        if self.time:
            cmd = [self.time, "-f", "%M", "-o", str(rss_path), *cmd]
        with open(err_path, "wb") as err, (
            open(out_path, "wb") if keep_stdout else open(os.devnull, "wb")
        ) as out:
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 cwd=ROOT, env=self.env)
            if self.time:
                rc = p.wait()
                rusage_kb = None
            else:
                _, status, ru = os.wait4(p.pid, 0)
                rc = p.returncode = os.waitstatus_to_exitcode(status)
                rusage_kb = ru.ru_maxrss
            seconds = time.perf_counter() - t0
        stdout = out_path.read_text(errors="replace") if keep_stdout else ""
        stderr = err_path.read_text(errors="replace")
        rss_kb = rusage_kb
        if self.time:
            # GNU time writes "Command exited with non-zero status N" before %M on failure.
            lines = rss_path.read_text().split() if rss_path.exists() else []
            rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else None
        return Run(seconds, rss_kb, rc, stdout, stderr)

    def self_rss_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass
class Figure:
    rate: float | None = None  # frames (or lines) per second
    rss_mb: float | None = None
    seconds: float | None = None  # the time the rate was computed from
    error: str | None = None
    note: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


def best(runs: list[Figure]) -> Figure:
    ok = [f for f in runs if f.error is None and f.rate is not None]
    if not ok:
        return runs[-1]
    top = max(ok, key=lambda f: f.rate or 0.0)
    # Peak RSS: the largest seen, so a repeat never hides a worse peak.
    rss = [f.rss_mb for f in ok if f.rss_mb is not None]
    top.rss_mb = max(rss) if rss else None
    return top


def measure(fn, label: str, *, repeat: bool = True) -> Figure:  # type: ignore[no-untyped-def]
    """Run ``fn`` once, and once more if it was quick; keep the better."""
    first = fn()
    figs = [first]
    if repeat and first.error is None and first.seconds is not None and first.seconds < BEST_OF_2_BELOW:
        figs.append(fn())
    fig = best(figs)
    if fig.error:
        log(f"  {label}: FAILED: {fig.error}")
    else:
        runs = f" (best of {len(figs)})" if len(figs) > 1 else ""
        log(f"  {label}: {fmt_rate(fig.rate)} in {fig.seconds:.2f} s, "
            f"peak RSS {fmt_mb(fig.rss_mb)}{runs}")
    return fig


def mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


# ------------------------------------------------------------------------------------------
# The measurements


PY = sys.executable
ICETOOLS = [PY, "-m", "icetools"]


def cli_figure(runner: Runner, args: list[str], capture: Path, frames: int, *, uncached: bool = False) -> Figure:
    if uncached:
        # stats caches what it needs from a file (a summary, beside the seek index): every run
        # measured here reads the whole file (bench/summaries.py measures the cache).
        for entry in runner.cache.glob("icetools/*.sum"):
            entry.unlink()
    r = runner.run([*ICETOOLS, *args, str(capture)])
    if r.rc != 0:
        return Figure(error=r.error())
    note = None
    if r.stderr.strip():
        note = f"{' '.join(args)} warned: {r.stderr.strip().splitlines()[-1]}"
    return Figure(rate=frames / r.seconds, rss_mb=mb(r.rss_kb), seconds=r.seconds, note=note)


def worker_figure(runner: Runner, kind: str, capture: Path, frames: int) -> Figure:
    r = runner.run([PY, str(Path(__file__).resolve()), "--worker", kind, str(capture)],
                   keep_stdout=True)
    if r.rc != 0:
        return Figure(error=r.error())
    data = json.loads(r.stdout.strip().splitlines()[-1])
    if data["frames"] != frames:
        return Figure(error=f"{kind} saw {data['frames']} frames, expected {frames}")
    fig = Figure(rate=data["frames"] / data["seconds"], rss_mb=mb(r.rss_kb),
                 seconds=data["seconds"])
    fig.extra = {"wall": r.seconds, **data}
    return fig


def reference_figure(runner: Runner, raw: Path, protocol: int, frames: int) -> Figure:
    r = runner.run([str(REF_BIN), str(raw), str(protocol)], keep_stdout=True)
    if r.rc != 0:
        return Figure(error=r.error())
    data = json.loads(r.stdout.strip().splitlines()[-1])
    if data["frames"] != frames:
        return Figure(error=f"reference decoded {data['frames']} frames, expected {frames}")
    # Its own figures: only the get_msg() loop is timed; max_rss_kb is its getrusage(SELF).
    fig = Figure(rate=float(data["frames_per_second"]), rss_mb=data["max_rss_kb"] / 1024,
                 seconds=float(data["seconds"]))
    fig.extra = {"wall": r.seconds, "rss_by_time": mb(r.rss_kb)}
    return fig


def reference_available() -> str | None:
    """None when the reference reader can run, else one line saying how to get it."""
    if not (REF_BIN.exists() and os.access(REF_BIN, os.X_OK)):
        if (REF_DIR / "build.sh").exists():
            log("reference: bench/reference/icecc_read is not built, trying bench/reference/build.sh")
            p = subprocess.run(["sh", str(REF_DIR / "build.sh")], capture_output=True, text=True)
            if p.returncode == 0 and REF_BIN.exists():
                return None
            why = (p.stderr.strip().splitlines() or ["build failed"])[-1]
            log(f"reference: {why}")
        return f"C++ reference skipped: icecc_read not built; get it with: {REF_HOWTO}"
    return None


@dataclasses.dataclass
class SizeResult:
    frames: int
    figures: dict[str, Figure]
    seek: tuple[float, float] | None = None
    seek_t: float | None = None
    seek_error: str | None = None
    index_files: list[str] = dataclasses.field(default_factory=list)
    capture_mb: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


def files_under(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``folder`` except the runner's own."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath) / name
            if p.parent == folder and name.startswith("child."):
                continue
            try:
                out[str(p.relative_to(folder))] = p.stat().st_size
            except OSError:
                pass
    return out


def bench_size(runner: Runner, n: int, ref_skip: str | None) -> SizeResult:
    work = runner.work
    tag = fmt_n(n)
    capture = work / f"{tag}.icecap"
    raw = work / f"{tag}.frames"
    figs: dict[str, Figure] = {}
    res = SizeResult(n, figs)

    log(f"[N={tag}] generating {capture.name} with bench/grow.py ...")
    r = runner.run([PY, str(GROW), str(DEMO), str(capture), "--frames", str(n)])
    if r.rc != 0:
        raise SystemExit(f"bench/grow.py failed: {r.error()}")
    figs["grow"] = Figure(rate=n / r.seconds, rss_mb=mb(r.rss_kb), seconds=r.seconds)
    res.capture_mb = capture.stat().st_size / 1e6
    log(f"  grow: {r.seconds:.1f} s, {res.capture_mb:.0f} MB")

    log(f"[N={tag}] extracting the raw frame stream ...")
    r = runner.run([PY, str(Path(__file__).resolve()), "--worker", "extract", str(capture),
                    f"{raw},{n}"], keep_stdout=True)
    if r.rc != 0:
        raise SystemExit(f"extracting frames failed: {r.error()}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["frames"] != n:
        res.notes.append(f"capture holds {info['frames']} frames, asked for {n}")
    protocols = info["protocols"]
    log(f"  extract: {r.seconds:.1f} s, protocol {protocols}, recording spans {info['t_last']:.0f} s")

    log(f"[N={tag}] measuring ...")
    figs["read"] = measure(lambda: worker_figure(runner, "read", capture, n), "read-only")
    figs["decode"] = measure(lambda: worker_figure(runner, "decode", capture, n), "decode-only")
    figs["replay"] = measure(lambda: cli_figure(runner, ["replay", "--fast"], capture, n),
                             "replay --fast")
    figs["dump"] = measure(lambda: cli_figure(runner, ["dump", "--json"], capture, n),
                           "dump --json")
    figs["stats"] = measure(lambda: cli_figure(runner, ["stats"], capture, n, uncached=True), "stats")
    figs["jobs"] = measure(lambda: cli_figure(runner, ["jobs", "--json"], capture, n), "jobs --json")
    figs["trace"] = measure(lambda: cli_figure(runner, ["trace", "-o", "-"], capture, n), "trace")
    if ref_skip is not None:
        figs["ref"] = Figure(error="skipped")
    elif len(protocols) != 1:
        figs["ref"] = Figure(error=f"frames at several protocols {protocols}")
    else:
        figs["ref"] = measure(lambda: reference_figure(runner, raw, protocols[0], n),
                              "C++ reference")
    for f in figs.values():
        if f.note:
            res.notes.append(f.note)
    d = figs["decode"]
    if d.error is None and "load_seconds" in d.extra:
        res.notes.append(
            f"decode-only: loading the {fmt_n(n)} frames into a list took "
            f"{d.extra['load_seconds']:.1f} s (not timed); its RSS is that list."
        )

    # State at T: replay --until the middle of the recording, twice. The first call may build
    # a seek index (icetools keeps it under $XDG_CACHE_HOME, pointed into the work folder);
    # whatever files appear anywhere in the work folder after it are reported.
    t_mid = round(info["t_mid"], 3)
    res.seek_t = t_mid
    before = files_under(work)
    times = []
    outputs = []
    for i in (1, 2):
        r = runner.run([*ICETOOLS, "replay", "--fast", "--until", str(t_mid), str(capture)],
                       keep_stdout=True)
        if r.rc != 0:
            res.seek_error = r.error()
            break
        times.append(r.seconds)
        outputs.append(r.stdout)
        if i == 1:
            after = files_under(work)
            res.index_files = [
                f"{name} ({after[name] / 1e6:.1f} MB)" for name in sorted(set(after) - set(before))
            ]
    if len(times) == 2:
        res.seek = (times[0], times[1])
        if outputs[0] != outputs[1]:
            res.notes.append("replay --until printed different states on its 1st and 2nd call")
        log(f"  replay --until {t_mid:g}: 1st {times[0]:.2f} s, 2nd {times[1]:.2f} s"
            + (f", new: {', '.join(res.index_files)}" if res.index_files else ", no index file"))
    else:
        log(f"  replay --until: FAILED: {res.seek_error}")

    if not KEEP:
        for p in (capture, raw):
            p.unlink(missing_ok=True)
        shutil.rmtree(runner.cache, ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------------
# Report


def fmt_n(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.0f}k/s"
    return f"{r:.0f}/s"


def fmt_mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MB"


def fmt_ratio(x: float) -> str:
    if x >= 10:
        return f"{x:.0f}×"
    if x >= 1:
        return f"{x:.1f}×"
    return f"{x:.2g}×"


#: Row key -> (label, unit of the rate, rate target or None, whether the RSS target applies).
ROWS = [
    ("grow", "generate (grow.py)", "frames", None, False),
    ("read", "read-only (baseline)", "frames", None, False),
    ("decode", "decode-only", "frames", 1_000_000, False),
    ("replay", "replay --fast", "frames", 500_000, True),
    ("dump", "dump --json", "lines", 250_000, True),
    ("stats", "stats", "frames", 300_000, True),  # with the "why slow" analysis (issue 11)
    ("jobs", "jobs --json", "frames", 300_000, True),
    ("trace", "trace -o -", "frames", 300_000, True),
    ("ref", "C++ ref (libicecc)", "frames", None, False),
]


def target_text(rate: int | None, rss: bool) -> str:
    parts = []
    if rate:
        parts.append(f">={rate / 1e6:g}M/s" if rate >= 1e6 else f">={rate / 1e3:g}k/s")
    if rss:
        parts.append(f"<{RSS_LIMIT_MB:.0f}MB")
    return ", ".join(parts) if parts else "-"


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def measure_startup(runner: Runner) -> Figure | None:
    """The fixed cost in every CLI figure: interpreter start and icetools' imports."""
    runs = [runner.run([*ICETOOLS, "--version"]) for _ in range(3)]
    ok = [r for r in runs if r.rc == 0]
    if not ok:
        return None
    fastest = min(ok, key=lambda r: r.seconds)
    log(f"CLI start-up (python -m icetools --version): {fastest.seconds:.2f} s, "
        f"peak RSS {fmt_mb(mb(fastest.rss_kb))}")
    return Figure(seconds=fastest.seconds, rss_mb=mb(fastest.rss_kb))


def render(results: list[SizeResult], ref_skip: str | None, startup: Figure | None) -> str:
    label_w, target_w = 21, 18
    col_w = [11, 9, 10]  # rate+mark, RSS+mark, vs ref
    size_w = sum(col_w) + len(col_w) - 1
    lines = []
    head = f"{'':<{label_w}} {'':<{target_w}}"
    for res in results:
        head += " | " + f"N = {res.frames:,} frames".center(size_w)
    lines.append(head)
    sub = f"{'measurement':<{label_w}} {'target':<{target_w}}"
    for _ in results:
        sub += " | " + f"{'rate':>{col_w[0]}} {'peak RSS':>{col_w[1]}} {'vs ref':>{col_w[2]}}"
    lines.append(sub)
    lines.append("-" * len(sub))
    for key, label, unit, rate_target, rss_target in ROWS:
        row = f"{label:<{label_w}} {target_text(rate_target, rss_target):<{target_w}}"
        for res in results:
            fig = res.figures.get(key)
            ref = res.figures.get("ref")
            if fig is None or fig.error:
                why = "skipped" if fig and fig.error == "skipped" else "FAILED"
                row += " | " + f"{why:^{size_w}}"
                continue
            rate = fmt_rate(fig.rate)
            if unit == "lines":
                rate = rate.replace("/s", " l/s")
            if rate_target:
                rate += " " + mark((fig.rate or 0) >= rate_target)
            else:
                rate += "  "
            rss = fmt_mb(fig.rss_mb)
            if rss_target and fig.rss_mb is not None:
                rss += " " + mark(fig.rss_mb < RSS_LIMIT_MB)
            else:
                rss += "  "
            if key == "ref":
                vs = "1×" if not fig.error else "-"
            elif key == "grow" or ref is None or ref.error or not ref.rate:
                vs = "-"
            else:
                vs = fmt_ratio((fig.rate or 0) / ref.rate) + " ref"
            row += " | " + f"{rate:>{col_w[0]}} {rss:>{col_w[1]}} {vs:>{col_w[2]}}"
        lines.append(row)
    # State at T.
    any_index = any(r.index_files for r in results)
    seek_target = "- (has index)" if any_index else "n/a (no index)"
    row = f"{'state at T (seek)':<{label_w}} {seek_target:<{target_w}}"
    for res in results:
        if res.seek is None:
            cell = "FAILED"
        else:
            a, b = res.seek
            cell = f"1st {a:.2f} s, 2nd {b:.2f} s"
        row += " | " + f"{cell:^{size_w}}"
    lines.append(row)
    lines.append("-" * len(sub))

    notes = []
    notes.append(
        "rate: frames/s (dump: JSON lines/s). replay/dump/stats/jobs/trace/grow: wall time of the whole "
        "command (interpreter start included); read-only, decode-only: the loop only; C++ ref: "
        "its get_msg() loop, socket transfer included."
    )
    notes.append(
        f"peak RSS: the child's ru_maxrss (MiB). ✓/✗ against the targets; the <{RSS_LIMIT_MB:.0f}MB "
        "target is stated for 5M frames and checked at every size. decode-only holds every "
        "frame in a list, so its RSS grows with N by design."
    )
    if startup is not None and startup.seconds:
        notes.append(
            f"CLI start-up (`python -m icetools --version`): {startup.seconds:.2f} s, "
            f"{fmt_mb(startup.rss_mb)}; it is inside every replay/dump/stats/jobs/trace figure."
        )
    for res in results:
        if startup is not None and startup.seconds:
            net = []
            for key, name in (("replay", "replay"), ("dump", "dump"), ("stats", "stats"),
                              ("jobs", "jobs"), ("trace", "trace")):
                f = res.figures.get(key)
                if f and not f.error and f.seconds and f.seconds > startup.seconds:
                    net.append(f"{name} {fmt_rate(res.frames / (f.seconds - startup.seconds))}")
            if net:
                notes.append(f"N={fmt_n(res.frames)}: without start-up: {', '.join(net)}.")
        if res.seek is not None:
            a, b = res.seek
            idx = (f"the 1st call created {', '.join(res.index_files)}"
                   if res.index_files else "no index file was created, so no seek yet")
            notes.append(
                f"N={fmt_n(res.frames)}: seek = `replay --fast --until {res.seek_t:g}` (the middle "
                f"frame's time), 2nd/1st = {b / a:.2f}; {idx}."
            )
        elif res.seek_error:
            notes.append(f"N={fmt_n(res.frames)}: replay --until failed: {res.seek_error}")
        for key, fig in res.figures.items():
            if fig.error and fig.error != "skipped":
                notes.append(f"N={fmt_n(res.frames)}: {key} failed: {fig.error}")
        ref = res.figures.get("ref")
        if ref and not ref.error and ref.extra.get("wall"):
            notes.append(
                f"N={fmt_n(res.frames)}: C++ ref process took {ref.extra['wall']:.2f} s in all "
                f"(pre-scan of the file + handshake + loop); loop {ref.seconds:.3f} s."
            )
        for n in res.notes:
            notes.append(f"N={fmt_n(res.frames)}: {n}")
    if ref_skip:
        notes.append(ref_skip)
    lines.append("")
    lines.extend(f"* {n}" for n in notes)
    return "\n".join(lines)


def machine(runner: Runner) -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    nproc = f"{usable}" + (f" (of {os.cpu_count()})" if os.cpu_count() != usable else "")
    try:
        mem = next(
            int(line.split()[1]) // 1024
            for line in open("/proc/meminfo")
            if line.startswith("MemTotal:")
        )
        mem_s = f", {mem / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem_s = ""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    try:
        libicecc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libicecc-dev"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        libicecc = ""
    rss = ("GNU time (%M)" if runner.time else
           f"os.wait4 ru_maxrss (includes this runner's own ~{runner.self_rss_mb():.0f} MB as "
           "a floor: no GNU time)")
    return "\n".join([
        f"machine: {nproc} CPUs, {model}{mem_s}; {platform.system()} {platform.release()}",
        f"python:  {platform.python_implementation()} {platform.python_version()} ({PY})",
        f"icetools: {ROOT} {rev}; run as `python -m icetools`"
        + (f"; libicecc-dev {libicecc}" if libicecc else ""),
        f"peak RSS read with {rss}",
    ])


# ------------------------------------------------------------------------------------------

KEEP = False


def parse_frames(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1
        if part.endswith("m"):
            mult, part = 1_000_000, part[:-1]
        elif part.endswith("k"):
            mult, part = 1_000, part[:-1]
        try:
            n = int(float(part) * mult)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a frame count: {part!r}") from None
        if n <= 0:
            raise argparse.ArgumentTypeError("frame counts must be positive")
        out.append(n)
    return out


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        return
    parser = argparse.ArgumentParser(
        description="Print icetools' performance figures side by side (see bench/README.md)."
    )
    parser.add_argument("--frames", type=parse_frames, default=parse_frames(DEFAULT_FRAMES),
                        metavar="N[,N...]",
                        help=f"capture sizes in frames, e.g. 1M,5M (default {DEFAULT_FRAMES})")
    parser.add_argument("--quick", action="store_true",
                        help=f"only N={QUICK_FRAMES[0]:,} (overrides --frames)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated captures and frame streams (path printed)")
    parser.add_argument("--no-summaries", action="store_true",
                        help="skip stats over many files (bench/summaries.py: 30 files of 1M frames, "
                        "4 of 200k with --quick)")
    args = parser.parse_args()
    global KEEP
    KEEP = args.keep
    sizes = QUICK_FRAMES if args.quick else args.frames

    if not DEMO.exists():
        raise SystemExit(f"{DEMO} is missing")
    work = Path(tempfile.mkdtemp(prefix="icetools-bench-", dir="/tmp"))
    started = time.perf_counter()
    try:
        runner = Runner(work)
        header = machine(runner)
        log(header)
        ref_skip = reference_available()
        if ref_skip:
            log(ref_skip)
        startup = measure_startup(runner)
        results = [bench_size(runner, n, ref_skip) for n in sizes]
        many = None
        if not args.no_summaries:
            from summaries import bench as bench_summaries  # (bench/summaries.py, beside this file)

            folder = work / "summaries"
            folder.mkdir()
            files, frames = (4, QUICK_FRAMES[0]) if args.quick else (30, 1_000_000)
            many = bench_summaries(frames, files, folder)
            shutil.rmtree(folder, ignore_errors=True)  # (about 2 GB at 30 x 1M)
        elapsed = time.perf_counter() - started
        print(header)
        print(f"run: {' '.join(['bench/run.py', *sys.argv[1:]])}, {elapsed:.0f} s, "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
        print()
        print(render(results, ref_skip, startup))
        if many is not None:
            print()
            print(many)
    finally:
        if KEEP:
            log(f"kept the generated files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
