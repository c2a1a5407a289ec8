"""Builds put through a real cluster the way a team's builds overlap: two submitters building at
once with more jobs than slots (so jobs wait), a pause, then a third build. Shared by
recordings/make_recordings.py (``builds.icecap``) and tests/test_stats_why.py (the same builds,
recorded live), so both check the same story.

Each build compiles its own files with ``icecc gcc -c`` from its submitter's host (node1 in
namespace A, node2 in its spoke: :meth:`Cluster.popen_on`), all at once, and then links the
objects (``-r``: a local job on the submitter). What each build did is returned as a
:class:`BuildRun`, for the checks.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from pathlib import Path

from .realcluster import Cluster


@dataclass
class BuildRun:
    """One build as run: who submitted it, the sources compiled, the object linked at the end,
    and when it ran (time.monotonic() around it)."""

    submitter: str
    sources: list[str]
    link: str
    began: float
    ended: float


def warm_up(cluster: Cluster, work: Path, nodes: tuple[int, ...]) -> None:
    """One compile from each submitter before recording: its daemon packs the compiler
    environment (icecc-create-env, seconds) on first use, which is not what the builds test."""
    for node in nodes:
        results = cluster.compile_files(1, work / f"warm{node}", tag=f"warm{node}", node=node)
        assert all(r.ok for r in results), [r.stderr for r in results]


def build(cluster: Cluster, work: Path, node: int, tag: str, files: int, weight: int) -> BuildRun:
    """Compile ``files`` sources of ``weight`` (see realcluster._c_source) from daemon ``node``'s
    host, all at once, then link them: one build."""
    began = time.monotonic()
    folder = work / tag
    results = cluster.compile_files(files, folder, jobs=files, tag=tag, work=weight, node=node)
    assert all(r.ok for r in results), [r.stderr for r in results if not r.ok]
    link = cluster.link([r.output for r in results if r.output], folder / f"{tag}.o", extra_args=["-r"], node=node)
    assert link.ok, link.stderr
    return BuildRun(
        cluster.daemon(node).node,
        [str(r.source) for r in results if r.source],
        str(folder / f"{tag}.o"),
        began,
        time.monotonic(),
    )


def overlapping_builds(
    cluster: Cluster, work: Path, *, files: int = 4, weight: int = 80, pause: float = 3.0
) -> list[BuildRun]:
    """Node1 and node2 build at once (``files`` each, all requested together: more jobs than
    the cluster's slots when ``2 * files`` exceeds them), then nothing for ``pause`` seconds,
    then node1 builds again. Returns the three builds in the order they began."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(build, cluster, work, 1, "alpha", files, weight)
        second = pool.submit(build, cluster, work, 2, "beta", files, weight)
        runs = [first.result(), second.result()]
    time.sleep(pause)  # the pause between builds is the point: nothing to wait for
    runs.append(build(cluster, work, 1, "gamma", files, weight))
    return sorted(runs, key=lambda r: r.began)
