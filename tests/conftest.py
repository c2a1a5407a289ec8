"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


@pytest.fixture(scope="session")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400k-frame capture grown from demo: big enough for the formatter process of trace and
    jobs (icetools.feed) and for a run that a signal can reach half-way (about 1.5 s)."""
    from bench.grow import grow

    path = tmp_path_factory.mktemp("grown") / "grown-400k.icecap"
    grow(RECORDINGS / "demo.icecap", path, 400_000)
    return path
