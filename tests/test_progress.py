"""Progress bars: on a terminal for reads that take over a second, and nothing when piped."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from bench.grow import grow

DEMO = Path(__file__).resolve().parent.parent / "recordings" / "demo.icecap"


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.icecap"
    grow(DEMO, path, 400_000)
    return path


def run_with_terminal_stderr(args: list[str], show_after: float | None = None) -> tuple[int, str]:
    """Run icetools with stderr on a pseudo-terminal (stdout piped); return (status, stderr).
    ``show_after`` sets how long a read must take before a bar shows (default: a second)."""
    env = dict(os.environ)
    env.pop("ICETOOLS_PROGRESS_AFTER", None)
    if show_after is not None:
        env["ICETOOLS_PROGRESS_AFTER"] = str(show_after)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "icetools", *args], stdout=subprocess.DEVNULL, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(60), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("command", [["stats"], ["replay", "--fast"], ["dump", "--json"]])
def test_progress_on_a_terminal(long_capture: Path, command: list[str]) -> None:
    # How long the read takes depends on the machine: the bar is asked for at once.
    status, stderr = run_with_terminal_stderr([*command, str(long_capture)], show_after=0)
    assert status == 0
    assert "%" in stderr and "frames" in stderr and "[#" in stderr
    assert stderr.endswith("\r\x1b[2K")  # the bar is wiped at the end


def test_no_progress_for_short_reads_or_when_piped(long_capture: Path) -> None:
    status, stderr = run_with_terminal_stderr(["stats", str(DEMO)])
    assert status == 0 and stderr == ""  # well under a second
    piped = subprocess.run(
        [sys.executable, "-m", "icetools", "stats", str(long_capture)], capture_output=True, text=True, timeout=60
    )
    assert piped.returncode == 0 and piped.stderr == ""
