"""The real recordings in recordings/ still decode exactly as their golden dump says."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from icetools.capture import CaptureReader

from .golden import golden_lines

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
CAPTURES = sorted(RECORDINGS.glob("*.icecap"))


def test_there_are_recordings() -> None:
    names = {p.name for p in CAPTURES}
    assert {"build.icecap", "failures-local.icecap", "daemon-dies.icecap", "demo.icecap"} <= names
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
