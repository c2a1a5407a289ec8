"""Golden files: the ``dump --json`` lines of a recording, exactly as ``icetools dump`` prints them.

Recordings are fixed files, so their decoding is deterministic to the last digit: nothing needs
normalising, and any change in how a frame decodes shows up as a golden mismatch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tracemalloc

from icetools import messages as m
from icetools.capture import CaptureReader, FrameRecord
from icetools.jobs import write_jobs
from icetools.monitor import Monitor
from icetools.render import decode_records, json_line
from icetools.replay import replay, replay_fast
from icetools.stats import analyse

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def golden_lines(reader: CaptureReader) -> Iterator[str]:
    for item in decode_records(reader):
        yield json_line(item)


def replayed(path: Path, *, fast: bool = False) -> Monitor:
    """A Monitor that replayed ``path``, record by record or (``fast``) as replay --fast does."""
    monitor = Monitor()
    with CaptureReader(path) as reader:
        if fast:
            replay_fast(monitor, reader)
        else:
            replay(monitor, reader)
    return monitor


def replay_state(path: Path, *, fast: bool = False) -> dict[str, Any]:
    """What ``icetools replay --fast --json PATH`` prints, as data."""
    return replayed(path, fast=fast).snapshot()


def stats_report(path: Path, *, fast: bool = False) -> dict[str, Any]:
    """What ``icetools stats --json PATH`` prints, as data (the "why" figures included, with the
    default gap between builds)."""
    with CaptureReader(path) as reader:
        return analyse(reader, fast=fast)[0]


def jobs_csv(path: Path) -> str:
    """What ``icetools jobs --csv PATH`` prints."""
    out = io.StringIO()
    with CaptureReader(path) as reader:
        write_jobs(reader, out, "csv")
    return out.getvalue()


def write_goldens(path: Path) -> None:
    """NAME.golden.jsonl (dump --json), NAME.replay.json, NAME.stats.json and NAME.jobs.csv
    (jobs --csv) beside NAME.icecap."""
    with CaptureReader(path) as reader:
        lines = list(golden_lines(reader))
    path.with_suffix(".golden.jsonl").write_text("".join(line + "\n" for line in lines))
    path.with_suffix(".replay.json").write_text(json.dumps(replay_state(path), indent=1) + "\n")
    path.with_suffix(".stats.json").write_text(json.dumps(stats_report(path), indent=1) + "\n")
    path.with_suffix(".jobs.csv").write_text(jobs_csv(path))


def memory_growth(monitor: Monitor, cycles: int, *, warm: int = 10) -> tuple[int, int]:
    """Feed the demo recording's messages into ``monitor`` ``cycles`` times over, job ids shifted
    each time so that every cycle is new jobs (a long day of the same cluster); return the
    memory traced after the first ``warm`` cycles and at the end. Whatever keeps per-job state
    without bound shows up as the difference."""
    with CaptureReader(RECORDINGS / "demo.icecap") as reader:
        template = [m.decode(r.data, r.protocol) for r in reader if isinstance(r, FrameRecord)]
    max_job = max(getattr(msg, "job_id", 0) for msg in template)
    tracemalloc.start()
    try:
        for n in range(cycles):
            if n == warm:
                early, _ = tracemalloc.get_traced_memory()
            for msg in template:
                if hasattr(msg, "job_id"):
                    msg = msg.replace(job_id=msg.job_id + n * max_job)
                monitor.feed(msg, float(n))
        late, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return early, late
