"""Helpers for the tests of the commands that write with a formatter process (trace and jobs,
see icetools.feed): a capture with hostile names, and the processes a command leaves."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from icetools import messages as m
from icetools.capture import CaptureWriter


def evil_capture(path: Path) -> Path:
    """A capture whose names hold terminal escapes, quotes and an undecodable byte."""
    evil = "evil\x1b]0;pwned\x07\"\\"
    with CaptureWriter(path) as writer:
        writer.connected(43, 43, 44, "x:1")
        writer.frames([m.encode(m.MonStats(1, f"Name:{evil}1\nIP:10.0.0.1\nMaxJobs:4\n"), 43)], 0.0)
        writer.frames([m.encode(m.MonStats(2, f"Name:{evil}\udcff2\nIP:10.0.0.2\nMaxJobs:4\n"), 43)], 0.0)
        for i, file in enumerate([f"src/{evil}\na\udcff.c", f"{evil}/\x01\t.c", "/"] * 2):
            t, job_id = float(i + 1), i + 1
            for at, msg in [
                (t, m.MonGetCS(filename=file, job_id=job_id, client_id=1)),
                (t + 0.0009998, m.MonJobBegin(job_id=job_id, stime=0, host_id=2)),
                (t + 0.5000004, m.MonJobDone(job_id=job_id, exitcode=0, real_msec=7, in_uncompressed=9)),
            ]:
                writer.frames([m.encode(msg, 43)], round(at, 6))
    return path


def processes_naming(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (a path unique to the test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of its main thread)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stop_and_check(process: subprocess.Popen[str], formatter: int, how: str, what: str) -> None:
    """Stop a command whose formatter process is at work, ``how`` a user or the system would
    (SIGTERM to the command, Ctrl-C to both from a terminal, the formatter killed), and check
    that it ends as it should: its exit status, one line or nothing on stderr, the formatter gone."""
    if how == "SIGTERM":
        os.kill(process.pid, signal.SIGTERM)
    elif how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # (a terminal sends it to both processes)
    else:
        os.kill(formatter, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert "Traceback" not in stderr
    if how == "SIGTERM":
        assert (process.returncode, stderr) == (143, "")
    elif how == "Ctrl-C":
        assert (process.returncode, stderr.strip()) == (130, "icetools: aborted")
    else:
        assert process.returncode == 1
        assert stderr.splitlines() == [f"icetools: error: the {what} formatter process died (exit code -9)"]
    assert not Path(f"/proc/{formatter}").exists()
