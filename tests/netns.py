"""Run real programs (monitors, the stand-in scheduler) where no packet can leave the machine.

Standard library and pytest only. Used by ``tests/test_real_monitors.py``.

- :func:`require` is the suite's rule for missing prerequisites: ``pytest.fail`` under
  ``CI=true`` (CI is expected to have everything), ``pytest.skip`` elsewhere, one line either way.
- :class:`Namespace` is a network namespace of our own (``icet-mon-<pid>-<seq>``) with only ``lo``
  up, plus optionally a veth pair whose *both* ends stay inside it. Everything a test starts
  through it runs there; closing it kills by PID whatever is still inside and deletes it.
  Namespaces left by a dead test run (their pid no longer exists) are swept on the next start.
- :class:`StandIn` runs ``icetools replay --as-scheduler`` inside a namespace and collects its
  stderr lines ("monitor ... logged in (protocol N)", "monitor ... gone: ...").
- :class:`Xvfb` starts an X server on a free display (``-displayfd``), outside any namespace:
  it listens on a Unix socket only, which every namespace shares.
- :class:`Tmux` is a tmux server on a private socket (never the user's default server), started
  from inside a namespace so the programs in its panes run there too.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

# One set of `ip` helpers for all our namespaces (the cluster's and these).
from .realcluster import _ip, _netns_pids
from .realcluster import list_netns as list_namespaces

T = TypeVar("T")

NS_PREFIX = "icet-mon-"
_NS_RE = re.compile(r"^icet-mon-(\d+)-(\d+)$")
_seq = itertools.count(1)


# --------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------


def require(reason: str | None) -> None:
    """Nothing if ``reason`` is None; else fail (CI=true) or skip, with that one-line reason."""
    import pytest

    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def missing_programs(programs: Iterable[str], packages: str) -> str | None:
    absent = [p for p in programs if shutil.which(p) is None]
    if absent:
        return f"needs {', '.join(absent)} (Debian: apt-get install {packages})"
    return None


_netns_reason: str | None | bool = False


def netns_unsupported() -> str | None:
    """Why this process cannot create network namespaces, or None (checked once, for real)."""
    global _netns_reason
    if _netns_reason is not False:
        return _netns_reason  # type: ignore[return-value]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = f"network namespaces need Linux (platform is {sys.platform})"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None:
        reason = "network namespaces need 'ip' (Debian: apt-get install iproute2)"
    else:
        probe = f"{NS_PREFIX}{os.getpid()}-0"
        add = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if add.returncode != 0:
            reason = f"'ip netns add' does not work here: {add.stderr.strip() or add.returncode}"
        else:
            subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    _netns_reason = reason
    return reason


# --------------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], T], timeout: float, what: str, *, interval: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy; return that. AssertionError naming
    ``what`` (and ``describe()``, for the state at the deadline) if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting for someone else to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def kill_pid(pid: int, timeout: float = 3.0) -> None:
    """SIGTERM one process by PID, then SIGKILL if it is still there after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
                if done:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 3.0) -> int | None:
    """Terminate one child we started (by its PID) and reap it; its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# --------------------------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------------------------


def cleanup_stale() -> list[str]:
    """Delete namespaces of ours whose creating process is gone (after killing what is inside)."""
    removed = []
    for name in list_namespaces():
        match = _NS_RE.match(name)
        if not match or _alive(int(match.group(1))):
            continue
        for pid in _netns_pids(name):
            kill_pid(pid, 1.0)
        _ip("netns", "delete", name, check=False)
        removed.append(name)
    return removed


class Namespace:
    """A network namespace with ``lo`` up and no way out. Context manager."""

    def __init__(self) -> None:
        cleanup_stale()
        self.name = f"{NS_PREFIX}{os.getpid()}-{next(_seq)}"
        _ip("netns", "add", self.name)
        self._closed = False
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _ip("-n", self.name, *args)

    def add_veth_pair(self, a: str, a_cidr: str, b: str, b_cidr: str) -> None:
        """A veth pair with both ends in this namespace (nothing reaches the host's network)."""
        self.ip("link", "add", a, "type", "veth", "peer", "name", b)
        for dev, cidr in ((a, a_cidr), (b, b_cidr)):
            self.ip("addr", "add", cidr, "brd", "+", "dev", dev)
            self.ip("link", "set", dev, "up")

    def link_to(self, other: str, dev: str, cidr: str, other_dev: str, other_cidr: str) -> None:
        """A veth pair from here into namespace ``other`` (one we created too, e.g. a real
        cluster's namespace A): still nothing reaches the host's network. Deleting either
        namespace deletes the pair."""
        self.ip("link", "add", dev, "type", "veth", "peer", "name", other_dev, "netns", other)
        self.ip("addr", "add", cidr, "brd", "+", "dev", dev)
        _ip("-n", other, "addr", "add", other_cidr, "brd", "+", "dev", other_dev)
        _ip("-n", other, "link", "set", other_dev, "up")
        self.ip("link", "set", dev, "up")

    def argv(self, command: Sequence[str]) -> list[str]:
        # `ip netns exec` execs the command itself: the Popen's pid is the program's pid.
        return ["ip", "netns", "exec", self.name, *command]

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(command), **kwargs)

    def run(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.argv(command), **kwargs)

    def pids(self) -> list[int]:
        return _netns_pids(self.name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pid in self.pids():  # only what we started in here can be in here
            kill_pid(pid, 2.0)
        _ip("netns", "delete", self.name, check=False)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# The stand-in scheduler
# --------------------------------------------------------------------------------------------

LOGIN_RE = re.compile(r"icetools: monitor (\S+) logged in \(protocol (\d+)\)")
GONE_RE = re.compile(r"icetools: monitor (\S+) gone: (.*)")
READY_RE = re.compile(r"icetools: standing in for the scheduler of .* on (\S+):(\d+)")


class StandIn:
    """``icetools replay FILE --as-scheduler ...`` inside ``ns``; its stderr, line by line."""

    def __init__(self, ns: Namespace, recording: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.command = [sys.executable, "-m", "icetools", "replay", str(recording), "--as-scheduler", *args]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = ns.popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """The first stderr line matching ``pattern``, waiting for it (fails if the stand-in exits)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    status = self.proc.poll()
                    state = "still running" if status is None else f"exited with status {status}"
                    raise AssertionError(
                        f"stand-in ({state}) did not log {what} within {timeout:g} s; its stderr:\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def ready(self, timeout: float = 15.0) -> int:
        """Wait for the 'standing in ... on HOST:PORT' line; the bound port."""
        return int(self.wait_for(READY_RE, timeout, "that it listens").group(2))

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        with self._cond:
            return [m for line in self.lines if (m := pattern.search(line))]

    def stop(self, timeout: float = 5.0) -> int | None:
        status = stop_process(self.proc, timeout)
        self._reader.join(2)
        return status


# --------------------------------------------------------------------------------------------
# Xvfb and tmux
# --------------------------------------------------------------------------------------------


class Xvfb:
    """An X server on the first free display, found by Xvfb itself (``-displayfd``)."""

    def __init__(self, size: str = "1280x800x24", timeout: float = 15.0) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", size, "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True,
            )
        finally:
            os.close(write_fd)
        try:
            data = b""
            deadline = time.monotonic() + timeout
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                ready, _, _ = select.select([read_fd], [], [], max(left, 0))
                if not ready:
                    raise AssertionError(f"Xvfb did not report a display within {timeout:g} s")
                chunk = os.read(read_fd, 64)
                if not chunk:
                    err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
                    raise AssertionError(f"Xvfb exited before reporting a display: {err.strip()[-500:]}")
                data += chunk
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_fd)
        self.display = f":{int(data.strip())}"

    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.display}

    def screenshot(self, path: Path) -> Path:
        """The whole screen as a PNG (ImageMagick's ``import -window root``)."""
        env = {**os.environ, "DISPLAY": self.display}
        subprocess.run(["import", "-window", "root", str(path)], check=True, env=env, timeout=30,
                       capture_output=True)
        return path

    def stop(self) -> None:
        stop_process(self.proc)


class Tmux:
    """A tmux server of our own (private socket), started inside ``ns``, one detached session."""

    def __init__(self, ns: Namespace, command: Sequence[str], *, width: int = 150, height: int = 40,
                 env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="icet-tmux-"))  # short path: socket names are limited
        self.socket = self.dir / "sock"
        config = self.dir / "tmux.conf"
        # Keep a dead pane on screen (with its exit status) instead of losing the evidence.
        config.write_text("set -g remain-on-exit on\nset -g history-limit 1000\n")
        self.session = f"icet-{os.getpid()}-{next(_seq)}"
        self.server_pid: int | None = None
        self.pane_pid: int | None = None
        client_env = {**(env or os.environ), "TERM": "xterm-256color"}
        client_env.pop("TMUX", None)
        result = ns.run(
            ["tmux", "-S", str(self.socket), "-f", str(config), "new-session", "-d", "-s", self.session,
             "-x", str(width), "-y", str(height), *command],
            capture_output=True, text=True, env=client_env, timeout=20,
        )
        if result.returncode != 0:
            self.close()
            raise AssertionError(f"tmux new-session failed: {result.stderr.strip()}")
        pids = self.tmux("display-message", "-p", "-t", self.session, "#{pid} #{pane_pid}").split()
        self.server_pid, self.pane_pid = int(pids[0]), int(pids[1])

    def tmux(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                                timeout=10)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def send_keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def pane_dead(self) -> str | None:
        """None while the program runs; else its exit status as tmux reports it."""
        dead, status = (self.tmux("display-message", "-p", "-t", self.session,
                                  "#{pane_dead} #{pane_dead_status}").split() + [""])[:2]
        return status or "?" if dead == "1" else None

    def close(self) -> None:
        if self.socket.exists():
            subprocess.run(["tmux", "-S", str(self.socket), "kill-session", "-t", self.session],
                           capture_output=True, timeout=10)
        for pid in (self.pane_pid, self.server_pid):
            if pid is not None:
                kill_pid(pid, 2.0)
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = [
    "GONE_RE",
    "LOGIN_RE",
    "Namespace",
    "StandIn",
    "Tmux",
    "Xvfb",
    "cleanup_stale",
    "kill_pid",
    "missing_programs",
    "netns_unsupported",
    "require",
    "stop_process",
    "wait_until",
]
