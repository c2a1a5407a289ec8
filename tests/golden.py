"""Golden files: the ``dump --json`` lines of a recording, exactly as ``icetools dump`` prints them.

Recordings are fixed files, so their decoding is deterministic to the last digit: nothing needs
normalising, and any change in how a frame decodes shows up as a golden mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from icetools.capture import CaptureReader
from icetools.monitor import Monitor
from icetools.render import decode_records, json_line
from icetools.replay import replay
from icetools.stats import StatsCollector


def golden_lines(reader: CaptureReader) -> Iterator[str]:
    for item in decode_records(reader):
        yield json_line(item)


def replay_state(path: Path) -> dict[str, Any]:
    """What ``icetools replay --fast --json PATH`` prints, as data."""
    monitor = Monitor()
    with CaptureReader(path) as reader:
        replay(monitor, reader)
    return monitor.snapshot()


def stats_report(path: Path) -> dict[str, Any]:
    """What ``icetools stats --json PATH`` prints, as data."""
    collector = StatsCollector()
    monitor = Monitor(publishers=[collector])
    with CaptureReader(path) as reader:
        replay(monitor, reader)
    return collector.report(monitor)


def write_goldens(path: Path) -> None:
    """NAME.golden.jsonl (dump --json), NAME.replay.json and NAME.stats.json beside NAME.icecap."""
    with CaptureReader(path) as reader:
        lines = list(golden_lines(reader))
    path.with_suffix(".golden.jsonl").write_text("".join(line + "\n" for line in lines))
    path.with_suffix(".replay.json").write_text(json.dumps(replay_state(path), indent=1) + "\n")
    path.with_suffix(".stats.json").write_text(json.dumps(stats_report(path), indent=1) + "\n")
