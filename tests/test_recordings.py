"""The real recordings in recordings/ still decode exactly as their golden dump says."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from icetools.capture import CaptureReader

from .golden import golden_lines, replay_state, stats_report

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
CAPTURES = sorted(RECORDINGS.glob("*.icecap"))


def test_there_are_recordings() -> None:
    names = {p.name for p in CAPTURES}
    assert {"build.icecap", "builds.icecap", "failures-local.icecap", "daemon-dies.icecap", "demo.icecap"} <= names
    assert {f"protocol-{v}.icecap" for v in (21, 28, 29, 38, 39, 43)} <= names


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_recording_matches_its_golden_dump(path: Path) -> None:
    golden = path.with_suffix(".golden.jsonl")
    assert golden.exists(), f"{golden.name} is missing: run recordings/make_recordings.py --golden-only"
    expected = golden.read_text().splitlines()
    with CaptureReader(path) as reader:
        actual = list(golden_lines(reader))
        assert reader.torn_bytes == 0 and reader.ended
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(expected, actual, "golden", "decoded", lineterm="", n=1))
        pytest.fail(f"{path.name} decodes differently from {golden.name}:\n{diff[:4000]}")
    assert path.stat().st_size < 1_000_000
    # Nothing in a real recording is undecodable.
    assert not any(json.loads(line)["type"] == "UNDECODABLE" for line in actual)


def test_layout_recordings_use_their_protocol() -> None:
    for version in (21, 28, 29, 38, 39, 43):
        with CaptureReader(RECORDINGS / f"protocol-{version}.icecap") as reader:
            assert reader.header.protocol == version
            assert reader.header.offered == version


@pytest.mark.parametrize("path", CAPTURES, ids=[p.name for p in CAPTURES])
def test_replay_state_and_stats_match_their_goldens(path: Path) -> None:
    expected_state = json.loads(path.with_suffix(".replay.json").read_text())
    expected_stats = json.loads(path.with_suffix(".stats.json").read_text())
    assert replay_state(path) == expected_state
    assert stats_report(path) == expected_stats
    # replay --fast and stats read through CaptureReader.pump(): the same story to the digit.
    assert replay_state(path, fast=True) == expected_state
    assert stats_report(path, fast=True) == expected_stats


def test_the_packaged_demo_is_the_recording() -> None:
    packaged = Path(__file__).resolve().parent.parent / "icetools" / "data" / "demo.icecap"
    assert packaged.read_bytes() == (RECORDINGS / "demo.icecap").read_bytes()


def test_demo_is_a_busy_cluster() -> None:
    stats = json.loads((RECORDINGS / "demo.stats.json").read_text())
    assert len(stats["hosts"]) >= 5
    assert stats["jobs"]["remote"] >= 300 and stats["jobs"]["failed"] > 0 and stats["jobs"]["local"] > 0
    assert stats["duration"] >= 120
