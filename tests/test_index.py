"""The seek index: the state at any moment equals a replay from the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from icetools import index
from icetools.capture import CaptureReader
from icetools.monitor import Monitor
from icetools.replay import replay

DEMO = Path(__file__).resolve().parent.parent / "recordings" / "demo.icecap"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def full_replay(path: Path, until: float | None) -> Monitor:
    monitor = Monitor()
    with CaptureReader(path) as reader:
        replay(monitor, reader, until=until)
    return monitor


def test_state_at_any_moment_equals_a_full_replay() -> None:
    checkpoints = index.build(DEMO, every=100)  # many checkpoints in a small recording
    assert len(checkpoints) == 1577 // 100
    assert [c.t for c in checkpoints] == sorted(c.t for c in checkpoints)
    assert index.load(DEMO) is not None
    for t in (0.0, 7.5, 33.3, 80.0, 121.7, 161.99, None):
        assert index.state_at(DEMO, t).snapshot() == full_replay(DEMO, t).snapshot(), t


def test_first_use_builds_the_index_and_a_changed_file_gets_a_new_one(tmp_path: Path) -> None:
    copy = tmp_path / "demo.icecap"
    copy.write_bytes(DEMO.read_bytes())
    assert index.load(copy) is None
    index.state_at(copy, 50.0)
    assert index.load(copy) is not None
    with open(copy, "ab") as f:
        f.write(b"\x01")  # the file changed (a torn byte appended): the old index no longer applies
    assert index.load(copy) is None


def test_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    index.build(DEMO, every=200)
    index.index_path(DEMO).write_bytes(b"ICETIDX1 garbage")
    assert index.load(DEMO) is None
    assert index.state_at(DEMO, 42.0).snapshot() == full_replay(DEMO, 42.0).snapshot()


def test_an_index_of_another_shape_or_a_fifo_is_ignored(tmp_path: Path) -> None:
    """An index pickled with the right magic but another shape raised TypeError; a FIFO in its
    place blocked the read."""
    import os
    import pickle
    import zlib

    path = index.index_path(DEMO)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(index.INDEX_MAGIC + zlib.compress(pickle.dumps([(1, 2)])))
    assert index.load(DEMO) is None
    path.unlink()
    os.mkfifo(path)
    assert index.load(DEMO) is None
