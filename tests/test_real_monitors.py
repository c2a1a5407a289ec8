"""Real icecream monitors against ``icetools replay --as-scheduler``, and its UDP discovery.

- icecream-sundae (curses) runs in a private tmux server; its screen must show the recording's
  hosts and its job counters must move and end at what the recording implies.
- icemon (Qt) runs under Xvfb; it must log in and stay connected while every frame is played,
  and the screenshot (kept in test-artifacts/icemon.png) must show hosts drawn in colour.
- ``record -n NET`` must find the stand-in by broadcast over a veth pair, and not find it under
  another network name.

Every monitor, the stand-in and the recorder run in a network namespace each test creates (only
``lo``, or a veth pair with both ends inside), so no packet (a monitor's discovery broadcast, say)
can leave the machine. Xvfb runs outside: it only listens on a Unix socket. Missing programs, no
root or no working ``ip netns``: skipped with the reason, or failed under CI=true (tests/netns.py).

Test artifacts (git-ignored): test-artifacts/sundae.txt (sundae's last screen), icemon.png, and
the stand-in's stderr of each monitor test.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import CaptureReader, ConnectRecord, FrameRecord

from .netns import (
    GONE_RE,
    LOGIN_RE,
    Namespace,
    StandIn,
    Tmux,
    Xvfb,
    missing_programs,
    netns_unsupported,
    require,
    stop_process,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
DEMO = RECORDINGS / "demo.icecap"
BUILD = RECORDINGS / "build.icecap"
ARTIFACTS = ROOT / "test-artifacts"

#: demo.icecap is 162 s long: 8.1 s at 20x, with jobs from 0.3 s on.
SPEED = 20.0
#: Not the default 8765, so the monitors' port options are what gets them there.
MONITOR_PORT = 18765
SCHEDULER_VARS = ("ICECC_SCHEDULER", "USE_SCHEDULER")


# --------------------------------------------------------------------------------------------
# What the recording says (through icetools' own reader and decoder)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RecordingFacts:
    login_names: list[str]  # hosts a monitor hears of first (the scheduler's login MON_STATS)
    names: set[str]  # every host name in the recording
    duration: float  # first frame to last frame, recorded seconds
    #: What icecream-sundae's "Total: Remote:N Local:M" line must say after the whole recording:
    #: it counts a MON_JOB_BEGIN only for a job it heard of by MON_GET_CS (and that is not done
    #: yet), and every MON_LOCAL_JOB_BEGIN (icecream-sundae src/main.cpp, Job::createRemote).
    sundae_remote: int
    sundae_local: int


def recording_facts(path: Path) -> RecordingFacts:
    login: list[str] = []
    names: set[str] = set()
    first_t: float | None = None
    last_t = 0.0
    known: set[int] = set()
    remote = local = 0
    with CaptureReader(path) as reader:
        for record in reader:
            if not isinstance(record, FrameRecord):
                continue
            msg = m.decode(record.data, record.protocol)
            if first_t is None:
                first_t = record.t
            last_t = record.t
            if isinstance(msg, m.MonStats):
                name = msg.stats.get("Name")
                if name:
                    names.add(name)
                    if record.t == first_t and name not in login:
                        login.append(name)
            elif isinstance(msg, m.MonGetCS):
                known.add(msg.job_id)
            elif isinstance(msg, m.MonJobBegin):
                if msg.job_id in known:
                    remote += 1
            elif isinstance(msg, m.MonJobDone | m.JobLocalDone):
                known.discard(msg.job_id)
            elif isinstance(msg, m.MonLocalJobBegin):
                local += 1
                known.add(msg.job_id)
    assert first_t is not None and login, f"{path.name} has no hosts to show"
    return RecordingFacts(login, names, last_t - first_t, remote, local)


def monitor_env(**extra: str) -> dict[str, str]:
    """The environment without any scheduler address of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARS}
    env.update(extra)
    return env


def keep_artifact(name: str, text_or_path: str | Path) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    if isinstance(text_or_path, Path):
        target.write_bytes(text_or_path.read_bytes())
    else:
        target.write_text(text_or_path)
    return target


def gone_lines(standin: StandIn, peer: str) -> list[str]:
    return [match.group(0) for match in standin.matches(GONE_RE) if match.group(1) == peer]


# --------------------------------------------------------------------------------------------
# icecream-sundae
# --------------------------------------------------------------------------------------------

TOTALS_RE = re.compile(r"Total: Remote:(\d+) Local:(\d+)")


def sundae_missing() -> str | None:
    return netns_unsupported() or missing_programs(["icecream-sundae", "tmux"], "icecream-sundae tmux")


def totals(screen: str) -> tuple[int, int] | None:
    match = TOTALS_RE.search(screen)
    return (int(match.group(1)), int(match.group(2))) if match else None


def shown(name: str, screen: str) -> bool:
    return re.search(rf"(?<!\S){re.escape(name)}(?!\S)", screen) is not None


class Sundae:
    """icecream-sundae in tmux inside ``ns``, pointed at 127.0.0.1:port by ICECC_SCHEDULER (its
    ``-s HOST`` takes no port: libicecc's DiscoverSched then always uses 8765)."""

    def __init__(self, ns: Namespace, port: int) -> None:
        self.tmux = Tmux(ns, ["env", f"ICECC_SCHEDULER=127.0.0.1:{port}", "icecream-sundae"], env=monitor_env())
        self.last = ""

    def screen(self) -> str:
        self.last = self.tmux.capture()
        return self.last

    def describe(self) -> str:
        dead = self.tmux.pane_dead()
        state = "running" if dead is None else f"exited (status {dead})"
        return f"icecream-sundae is {state}; its screen:\n{self.screen()}"

    def close(self) -> None:
        self.tmux.close()


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A fresh network namespace (only lo), deleted afterwards with whatever still runs in it."""
    require(netns_unsupported())
    with Namespace() as ns:
        yield ns


def test_sundae_shows_the_recorded_hosts_and_counts_every_job(namespace: Namespace) -> None:
    require(sundae_missing())
    facts = recording_facts(DEMO)
    standin = StandIn(namespace, DEMO, "--listen", f"127.0.0.1:{MONITOR_PORT}", "--speed", str(SPEED))
    sundae: Sundae | None = None
    try:
        port = standin.ready()
        sundae = Sundae(namespace, port)
        login = standin.wait_for(LOGIN_RE, 15, "icecream-sundae's login")
        peer, protocol = login.group(1), int(login.group(2))
        assert 21 <= protocol <= standin_protocol(DEMO), login.group(0)

        # Every host of the scheduler's login burst, on one screen.
        wait_until(
            lambda: all(shown(n, sundae.screen()) for n in facts.login_names), 15,
            f"icecream-sundae to list {', '.join(facts.login_names)}", describe=sundae.describe,
        )
        first = wait_until(lambda: totals(sundae.screen()), 5, "sundae's Total line", describe=sundae.describe)
        # The job counters move while frames flow...
        wait_until(
            lambda: (now := totals(sundae.screen())) is not None and now[0] > first[0], 15,
            f"sundae's remote job count to move past {first[0]}", describe=sundae.describe,
        )
        # ...and end where the recording says, once all of it has been played.
        expected = (facts.sundae_remote, facts.sundae_local)
        wait_until(
            lambda: totals(sundae.screen()) == expected, facts.duration / SPEED + 15,
            f"sundae's totals to reach Remote:{expected[0]} Local:{expected[1]}", describe=sundae.describe,
        )
        final = sundae.screen()
        assert sundae.tmux.pane_dead() is None, sundae.describe()
        assert not gone_lines(standin, peer), standin.stderr
        # demo.icecap ends with every host online (node6 left at 80 s and came back as a new host
        # id at 117 s): each name the recording has is listed on the last screen.
        listed = {n for n in facts.names if shown(n, final)}
        assert listed == facts.names, final
    finally:
        if sundae is not None:
            keep_artifact("sundae.txt", sundae.last or "(no screen captured)\n")
            sundae.close()
        standin.stop()
        keep_artifact("sundae-standin.log", standin.stderr + "\n")


def test_standin_notices_sundae_quitting_after_the_recording(namespace: Namespace) -> None:
    require(sundae_missing())
    facts = recording_facts(BUILD)
    standin = StandIn(namespace, BUILD, "--listen", f"127.0.0.1:{MONITOR_PORT}", "--speed", str(SPEED))
    sundae: Sundae | None = None
    try:
        sundae = Sundae(namespace, standin.ready())
        peer = standin.wait_for(LOGIN_RE, 15, "icecream-sundae's login").group(1)
        expected = (facts.sundae_remote, facts.sundae_local)
        wait_until(lambda: totals(sundae.screen()) == expected, facts.duration / SPEED + 15,
                   f"sundae's totals to reach {expected}", describe=sundae.describe)
        time.sleep(1.0)  # past the last frame: the stand-in is idle now
        sundae.tmux.send_keys("q")
        wait_until(lambda: sundae.tmux.pane_dead() is not None, 10, "icecream-sundae to quit on 'q'",
                   describe=sundae.describe)
        standin.wait_for(re.compile(rf"icetools: monitor {re.escape(peer)} gone: "), 5,
                         "that icecream-sundae has gone")
    finally:
        if sundae is not None:
            sundae.close()
        standin.stop()


def test_standin_stops_quietly_with_sundae_connected(namespace: Namespace) -> None:
    require(sundae_missing())
    standin = StandIn(namespace, BUILD, "--listen", f"127.0.0.1:{MONITOR_PORT}", "--speed", "1")
    sundae: Sundae | None = None
    try:
        sundae = Sundae(namespace, standin.ready())
        standin.wait_for(LOGIN_RE, 15, "icecream-sundae's login")
        wait_until(lambda: totals(sundae.screen()), 10, "sundae's Total line", describe=sundae.describe)
        status = standin.stop()
        assert status == 0, standin.stderr
        assert "Traceback" not in standin.stderr, standin.stderr
    finally:
        if sundae is not None:
            sundae.close()
        standin.stop()


def standin_protocol(path: Path) -> int:
    with CaptureReader(path) as reader:
        return max(reader.header.protocol, reader.header.peer_version)


# --------------------------------------------------------------------------------------------
# icemon
# --------------------------------------------------------------------------------------------


def icemon_missing() -> str | None:
    return netns_unsupported() or missing_programs(
        ["icemon", "Xvfb", "import", "convert"], "icecc-monitor xvfb imagemagick"
    )


def saturated_pixels(png: Path) -> int:
    """Pixels with HSL saturation over 30%: icemon draws hosts as coloured ellipses and
    everything else (menus, the scheduler node, "No scheduler available") in greys."""
    result = subprocess.run(
        ["convert", str(png), "-colorspace", "HSL", "-channel", "G", "-separate", "+channel",
         "-threshold", "30%", "-format", "%[fx:round(mean*w*h)]", "info:"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return int(float(result.stdout.strip()))


def test_icemon_logs_in_stays_connected_and_draws_the_hosts(namespace: Namespace, tmp_path: Path) -> None:
    require(icemon_missing())
    facts = recording_facts(DEMO)
    xvfb = Xvfb()
    standin = StandIn(namespace, DEMO, "--listen", f"127.0.0.1:{MONITOR_PORT}", "--speed", str(SPEED))
    icemon: subprocess.Popen[bytes] | None = None
    log = tmp_path / "icemon.log"
    try:
        port = standin.ready()
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        env = monitor_env(
            DISPLAY=xvfb.display, QT_QPA_PLATFORM="xcb", HOME=str(tmp_path),
            XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_RUNTIME_DIR=str(runtime),
        )
        with open(log, "wb") as out:
            icemon = namespace.popen(
                ["icemon", "-geometry", "1280x800+0+0", "-s", "127.0.0.1", "-p", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )

        def icemon_state() -> str:
            status = "running" if icemon.poll() is None else f"exited with status {icemon.returncode}"
            return f"icemon is {status}; its output:\n{log.read_text(errors='replace')}\nstand-in:\n{standin.stderr}"

        login = standin.wait_for(LOGIN_RE, 20, "icemon's login")
        logged_in = time.monotonic()
        peer, protocol = login.group(1), int(login.group(2))
        assert 21 <= protocol <= standin_protocol(DEMO), login.group(0)

        # The hosts are drawn (as coloured nodes) once the window is up and the first frames are in;
        # wait for a moment with jobs running (40 recorded seconds in) before keeping the picture.
        shot = tmp_path / "icemon.png"

        def hosts_drawn() -> bool:
            if time.monotonic() - logged_in < 40 / SPEED:
                return False
            assert icemon.poll() is None, icemon_state()
            xvfb.screenshot(shot)
            return saturated_pixels(shot) > 1500

        wait_until(hosts_drawn, 20, "icemon to draw the hosts", interval=0.5, describe=icemon_state)
        keep_artifact("icemon.png", shot)

        # It stays connected (and keeps reading: the stand-in drops a monitor that does not)
        # until the last frame of the recording has been sent, and a little longer.
        until = logged_in + facts.duration / SPEED + 1.0
        while time.monotonic() < until:
            assert icemon.poll() is None, icemon_state()
            assert not gone_lines(standin, peer), icemon_state()
            time.sleep(0.2)
        assert icemon.poll() is None, icemon_state()
        assert not gone_lines(standin, peer), icemon_state()
        assert [g.group(1) for g in standin.matches(LOGIN_RE)] == [peer], icemon_state()
    finally:
        if icemon is not None:
            stop_process(icemon)
        standin.stop()
        keep_artifact("icemon-standin.log", standin.stderr + "\n")
        xvfb.stop()


# --------------------------------------------------------------------------------------------
# UDP discovery
# --------------------------------------------------------------------------------------------


def test_standin_answers_discovery_like_the_scheduler(namespace: Namespace, tmp_path: Path) -> None:
    """`record -n TESTNET` (no -s, no ICECC_SCHEDULER/USE_SCHEDULER) broadcasts on the veth pair
    to port 8765, the stand-in answers for TESTNET, and record connects where the answer came from."""
    require(netns_unsupported())
    namespace.add_veth_pair("v0", "10.88.0.1/24", "v1", "10.88.0.2/24")
    standin = StandIn(namespace, BUILD, "--listen", "0.0.0.0:8765", "--netname", "TESTNET")
    try:
        assert standin.ready() == 8765
        env = monitor_env()
        path = tmp_path / "found.icecap"
        result = namespace.run(
            [sys.executable, "-m", "icetools", "record", "-n", "TESTNET", "--count", "3", "-o", str(path)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        with CaptureReader(path) as reader:
            records = list(reader)
        connects = [r for r in records if isinstance(r, ConnectRecord)]
        assert len(connects) == 1, records
        assert re.fullmatch(r"10\.88\.0\.[12]:8765", connects[0].scheduler), connects[0]
        assert reader.header.scheduler == connects[0].scheduler
        assert sum(isinstance(r, FrameRecord) for r in records) == 3
        assert standin.matches(LOGIN_RE), standin.stderr

        other = tmp_path / "other.icecap"
        wrong = namespace.run(
            [sys.executable, "-m", "icetools", "record", "-n", "OTHERNET", "--count", "3", "-o", str(other)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
        )
        assert wrong.returncode == 1, (wrong.returncode, wrong.stderr)
        assert "no scheduler for network 'OTHERNET'" in wrong.stderr, wrong.stderr
        assert not other.exists()
        assert len(standin.matches(LOGIN_RE)) == 1, standin.stderr
    finally:
        standin.stop()
