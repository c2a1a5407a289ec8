"""`stats` over many files: the first pass (a process per core) and the cached pass.

    python bench/summaries.py                      # 30 files of 1M frames (about 2 GB in /tmp)
    python bench/summaries.py --files 4 --frames 200000

It grows recordings/demo.icecap into one N-frame capture (bench/grow.py), copies it FILES times
with increasing header start times (each file starts a minute after the previous one ended, as
a day's files would follow each other), then measures, each as a whole `python -m icetools`
command with its own empty cache folder:

* single file: `stats` of one of the files, uncached (today's single-file rate, measured in the
  same run so that a loaded machine affects both alike);
* first pass: `stats` of all the files, nothing cached: a process per core;
* cached: the same command again: every summary comes from the cache;
* rounds of one file alone then as many files as cores at once, back to back: the speed-up where
  the machine's load has no time to change.

It prints the figures and the ratio of the first pass's rate to the single-file rate beside its
target (0.8 x cores), and removes the files. Nothing here asserts a timing. run.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recordings" / "demo.icecap"
CACHED_TARGET_S = 2.0
PARALLEL_TARGET = 0.8  # x cores x the single-file rate
PAIRED_ROUNDS = 3
_PREAMBLE = struct.Struct(">8sHI")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _copy_with_start(source: Path, target: Path, start: float) -> None:
    """A copy of ``source`` whose header says it started at ``start`` (the rest byte for byte)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        pre = src.read(_PREAMBLE.size)
        magic, version, length = _PREAMBLE.unpack(pre)
        header = json.loads(src.read(length))
        header["start"] = start
        raw = json.dumps(header, separators=(",", ":")).encode()
        dst.write(_PREAMBLE.pack(magic, version, len(raw)) + raw)
        shutil.copyfileobj(src, dst, 1 << 20)


def _duration(path: Path) -> tuple[float, float]:
    """The capture's header start and the time of its last record."""
    sys.path.insert(0, str(ROOT))
    from icetools.capture import CaptureReader

    with CaptureReader(path) as reader:
        result = reader.pump({}, lambda record: None)
        return reader.header.start, result.last_t or 0.0


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Wall seconds, stdout and CPU seconds (user + system, the command and its workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, p.stdout, cpu


def bench(frames: int, files: int, work: Path) -> str:
    """Measure and return the report (a few lines of text)."""
    base = work / "base.icecap"
    log(f"summaries: growing a {frames:,}-frame capture")
    subprocess.run([sys.executable, str(ROOT / "bench" / "grow.py"), str(DEMO), str(base), "--frames", str(frames)],
                   check=True, stdout=subprocess.DEVNULL)
    start, span = _duration(base)
    paths = []
    for i in range(files):
        path = work / f"part-{i:02d}.icecap"
        _copy_with_start(base, path, start + i * (span + 60.0))
        paths.append(str(path))
    base.unlink()
    size = sum(os.path.getsize(p) for p in paths)
    log(f"summaries: {files} files of {frames:,} frames ({size / 1e9:.2f} GB)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    stats = [sys.executable, "-m", "icetools", "stats", "--json"]

    def fresh_cache(name: str) -> dict[str, str]:
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        return {**env, "XDG_CACHE_HOME": str(folder)}

    # One file uncached right before and right after the first pass, their mean as the base:
    # the machine may be shared, and its load changes over minutes.
    before = _run([*stats, paths[0]], fresh_cache("cache-single-0"))
    log(f"summaries: one file uncached {before[0]:.2f} s ({frames / before[0]:,.0f} frames/s)")
    cache = fresh_cache("cache-all")
    first, first_out, first_cpu = _run([*stats, *paths], cache)
    first_rate = files * frames / first
    log(f"summaries: first pass {first:.2f} s ({first_rate:,.0f} frames/s, {first_cpu:.1f} CPU s)")
    after = _run([*stats, paths[0]], fresh_cache("cache-single-1"))
    log(f"summaries: one file uncached {after[0]:.2f} s ({frames / after[0]:,.0f} frames/s)")
    single = (before[0] + after[0]) / 2
    single_cpu = (before[2] + after[2]) / 2
    single_rate = frames / single
    # The same speed-up measured where the load has no time to change: rounds of one file
    # alone then `cores` files at once, back to back, nothing cached.
    cores = os.cpu_count() or 1
    rounds = []
    for i in range(PAIRED_ROUNDS):
        alone = _run([*stats, paths[0]], fresh_cache(f"cache-round-{i}-a"))
        together = _run([*stats, *paths[:cores]], fresh_cache(f"cache-round-{i}-b"))
        rounds.append((cores * frames / together[0]) / (frames / alone[0]))
        log(f"summaries: round {i + 1}: one file {alone[0]:.2f} s, {cores} files at once {together[0]:.2f} s: "
            f"{rounds[-1]:.2f}x")
    cached_runs = [_run([*stats, *paths], cache) for _ in range(2)]
    cached = min(s for s, _, _ in cached_runs)
    log(f"summaries: cached {cached:.2f} s")
    if any(out != first_out for _, out, _ in cached_runs):
        raise SystemExit("the cached pass printed another report than the first pass")
    ratio = first_rate / single_rate
    target = PARALLEL_TARGET * cores
    total = files * frames
    lines = [
        f"stats over {files} files of {frames:,} frames ({total:,} frames, {size / 1e9:.2f} GB), {cores} cores:",
        f"  {'figure':<28} {'seconds':>8} {'frames/s':>11} {'CPU s':>7} {'cores used':>10} {'target':>16} {'met':>4}",
        f"  {'one file, uncached':<28} {single:>8.2f} {single_rate:>11,.0f} {single_cpu:>7.1f} "
        f"{single_cpu / single:>10.2f} {'(the base)':>16} {'':>4}",
        f"  {'first pass (nothing cached)':<28} {first:>8.2f} {first_rate:>11,.0f} {first_cpu:>7.1f} "
        f"{first_cpu / first:>10.2f} {f'>= {target:.1f}x base':>16} {'yes' if ratio >= target else 'NO':>4}",
        f"  {'cached':<28} {cached:>8.2f} {total / cached:>11,.0f} {'':>7} {'':>10} "
        f"{f'< {CACHED_TARGET_S:g} s':>16} {'yes' if cached < CACHED_TARGET_S else 'NO':>4}",
        f"  first pass / one file: {ratio:.2f}x on {cores} cores ({ratio / cores:.2f} x cores; target "
        f"{PARALLEL_TARGET} x cores). The base is the mean of one file read just before and just "
        f"after the first pass ({frames / before[0]:,.0f} and {frames / after[0]:,.0f} frames/s): "
        "the machine may be shared, so the speed-up is measured as a ratio in one run.",
        f"  {cores} files at once vs one file, back to back ({PAIRED_ROUNDS} rounds): "
        + ", ".join(f"{r:.2f}x" for r in rounds) + f"; median {sorted(rounds)[len(rounds) // 2]:.2f}x "
        f"(target {target:.1f}x).",
        f"  CPU per file: {single_cpu:.2f} s alone, {first_cpu / files:.2f} s in the first pass "
        f"(the pool's own cost: {100 * (first_cpu / files / single_cpu - 1):+.0f} %); 'cores used' "
        "= CPU s / wall s, what the machine gave the command.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames per file (default 1M)")
    parser.add_argument("--files", type=int, default=30, help="how many files (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the files (path printed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="icetools-summaries-", dir="/tmp"))
    try:
        print(bench(args.frames, args.files, work))
    finally:
        if args.keep:
            log(f"kept the files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
