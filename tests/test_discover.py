"""`icetools discover`: every scheduler that answers icecream's discovery broadcast.

Everything runs inside network namespaces of our own: the real test joins one namespace to the
namespaces A of two real clusters (scheduler + daemon each, different netnames), so its
broadcasts reach exactly those two schedulers; the hostile test answers from a scripted UDP
responder in a namespace whose only link is a veth pair with both ends inside.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from icetools.messages import PROTOCOL_VERSION

from .netns import Namespace, netns_unsupported, require, stop_process
from .realcluster import PROTOCOL_VERSION as REAL_SCHEDULER_VERSION
from .realcluster import Cluster, skip_or_fail_if_unsupported

ROOT = Path(__file__).resolve().parent.parent
NETNAMES = ("ALPHA", "Beta-2")  # the second also checks that -n folds case as icecream does


def env() -> dict[str, str]:
    """Without the caller's scheduler address: discover must not depend on it."""
    return {k: v for k, v in os.environ.items() if k not in ("ICECC_SCHEDULER", "USE_SCHEDULER")}


def icetools(ns: Namespace, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return ns.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True,
                  timeout=timeout, cwd=ROOT, env=env())


# --------------------------------------------------------------------------------------------
# Two real schedulers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_networks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Cluster], Namespace, float]]:
    """Two real clusters (scheduler + one daemon each, netnames ALPHA and Beta-2), and a
    namespace of ours linked to each one's namespace A: 10.79.k.2 here, 10.79.k.1 there."""
    skip_or_fail_if_unsupported()
    clusters = [Cluster(1, tmpdir=tmp_path_factory.mktemp(f"net{k}"), netname=name)
                for k, name in enumerate(NETNAMES, 1)]
    before = time.time()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # start-up is mostly waiting
            for started in [pool.submit(c.start) for c in clusters]:
                started.result()
        with Namespace() as ns:
            for k, cluster in enumerate(clusters, 1):
                ns.link_to(cluster.netns_a, f"sched{k}", f"10.79.{k}.2/24", "asker", f"10.79.{k}.1/24")
            yield clusters, ns, before
    finally:
        for cluster in clusters:
            cluster.stop()


def test_discover_lists_both_real_schedulers(two_networks: tuple[list[Cluster], Namespace, float]) -> None:
    """Both real schedulers answer one broadcast; --json says where, which network, protocol 43
    (what icecream 1.4 reports) and a start time between our starting them and now."""
    clusters, ns, before = two_networks
    result = icetools(ns, "discover", "--json")
    after = time.time()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = json.loads(result.stdout)
    assert [f["netname"] for f in found] == list(NETNAMES), found  # grouped by netname
    for k, (f, cluster) in enumerate(zip(found, clusters), 1):
        assert (f["address"], f["port"], f["protocol"]) == (f"10.79.{k}.1", cluster.scheduler_port,
                                                            REAL_SCHEDULER_VERSION), f
        assert int(before) <= f["start_time"] <= after, (before, f, after)
        started = datetime.datetime.fromtimestamp(f["start_time"], datetime.timezone.utc)
        assert f["started"] == started.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert 0 <= f["uptime"] <= after - f["start_time"] + 1, f
    assert found[0]["start_time"] != 0 and set(found[0]) == {
        "address", "port", "netname", "protocol", "start_time", "started", "uptime"}

    table = icetools(ns, "discover", "--timeout", "1")
    assert table.returncode == 0 and table.stderr == "", table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "PORT", "NETNAME", "PROTOCOL", "STARTED", "UPTIME"]
    rows = [line.split() for line in lines[1:]]
    assert [row[:4] for row in rows] == [["10.79.1.1", "8765", "ALPHA", "43"], ["10.79.2.1", "8765", "Beta-2", "43"]]
    for row, f in zip(rows, found):
        local = datetime.datetime.fromtimestamp(f["start_time"]).strftime("%Y-%m-%d %H:%M:%S")
        assert " ".join(row[4:6]) == local
        assert re.fullmatch(r"00:0\d:\d\d", row[6]), row  # started well under ten minutes ago


def test_discover_netname_finds_just_that_scheduler(two_networks: tuple[list[Cluster], Namespace, float]) -> None:
    """-n compares as icecream does (case folded): beta-2 is Beta-2, and only that one answers;
    an unknown netname is one error line naming the networks that did answer."""
    clusters, ns, _ = two_networks
    result = icetools(ns, "discover", "-n", "beta-2", "--json", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [(f["address"], f["netname"]) for f in found] == [("10.79.2.1", "Beta-2")]

    missing = icetools(ns, "discover", "-n", "NOSUCHNET", "--timeout", "1")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == ("icetools: error: no scheduler for network 'NOSUCHNET' answered a broadcast "
                              "within 1 s (schedulers of other networks did: 'ALPHA', 'Beta-2')\n")


def test_record_picks_the_scheduler_of_its_netname(two_networks: tuple[list[Cluster], Namespace, float],
                                                   tmp_path: Path) -> None:
    """record's discovery is the same machinery: with two networks answering, -n ALPHA connects
    to ALPHA's scheduler and not to the other."""
    clusters, ns, _ = two_networks
    path = tmp_path / "alpha.icecap"
    result = icetools(ns, "record", "-n", "alpha", "--count", "1", "-o", str(path))
    assert result.returncode == 0, result.stderr
    dumped = subprocess.run([sys.executable, "-m", "icetools", "dump", "--json", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    connect = json.loads(dumped.stdout.splitlines()[0])
    assert connect["type"] == "connect" and connect["scheduler"] == f"10.79.1.1:{clusters[0].scheduler_port}"


# --------------------------------------------------------------------------------------------
# Hostile answers
# --------------------------------------------------------------------------------------------

#: Answers each distinct asker (address, port) once with the datagrams in the file argv[1]
#: (JSON list of hex strings), so every icetools run gets exactly one copy of each even if its
#: broadcast arrives twice; prints each request it answered.
RESPONDER = r"""
import json, socket, sys
answers = [bytes.fromhex(h) for h in json.load(open(sys.argv[1]))]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 8765))
print("ready", flush=True)
seen = set()
while True:
    data, source = s.recvfrom(4096)
    if source in seen:
        continue
    seen.add(source)
    for answer in answers:
        s.sendto(answer, source)
    print("answered", data.hex(), flush=True)
"""


def current(version: int, start: int, name: bytes, *, size: int = 268, mark: int = PROTOCOL_VERSION + 3) -> bytes:
    """A protocol >= 38 answer, by hand: mark, BE version, BE start time in halves, netname."""
    body = bytes([mark]) + version.to_bytes(4, "big") + (start >> 32).to_bytes(4, "big") \
        + (start & 0xFFFFFFFF).to_bytes(4, "big") + name
    return body.ljust(size, b"\0")[:size]


def hostile_answers(now: int) -> list[bytes]:
    good = current(43, now - 3725, b"GOOD\0")
    return [
        good,
        good,                                                      # the same scheduler twice: once
        good[:267],                                                # truncated: ignored
        good + b"\0" * 32,                                         # oversized: ignored
        b"",                                                       # empty: ignored
        current(0xFFFFFFFF, now, b"HUGEVERSION\0"),                # bogus version: ignored
        current(0, now, b"ZEROVERSION\0"),                         # bogus version: ignored
        current(43, now, b"WRONGMARK\0", mark=0x99),               # not an answer to us: ignored
        current(43, now, b"evil\x1b]0;pwned\x07\x1b[31m\nred\0"),  # escape sequences and a newline
        current(43, now, b"caf\xe9\0"),                            # not UTF-8
        current(43, now, b"N" * 300),                              # no NUL: icecream keeps 254 bytes
        current(43, 2**64 - 1, b"FAR\0"),                          # a start time no date can hold
        current(43, now + 10**6, b"FUTURE\0"),                     # started in our future
        bytes([PROTOCOL_VERSION + 1]) + b"OLD".ljust(15, b"\0"),   # protocol <= 32: no version, no time
    ]


IGNORED = 6


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Namespace, subprocess.Popen[str]]]:
    """A scripted responder answering with hostile_answers(now), now = just before the test."""
    require(netns_unsupported())
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([a.hex() for a in hostile_answers(int(time.time()))]))
    with Namespace() as ns:
        ns.add_veth_pair("v0", "10.88.0.1/24", "v1", "10.88.0.2/24")
        responder = ns.popen([sys.executable, "-c", RESPONDER, str(answers)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert responder.stdout is not None and responder.stdout.readline() == "ready\n", responder.stderr
            yield ns, responder
        finally:
            stop_process(responder)


def test_hostile_answers_are_ignored_or_shown_escaped(hostile: tuple[Namespace, subprocess.Popen[str]]) -> None:
    ns, responder = hostile
    result = icetools(ns, "discover", "--json", "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert responder.stdout is not None
    assert responder.stdout.readline() == f"answered {PROTOCOL_VERSION:02x}\n"  # the request: our version
    assert result.stderr == f"icetools: warning: ignored {IGNORED} datagrams that were not scheduler answers\n"
    assert "\udce9" not in result.stdout and "\x1b" not in result.stdout  # strict, escaped JSON
    found = {f["netname"]: f for f in json.loads(result.stdout)}
    assert sorted(found) == sorted(["GOOD", "evil\x1b]0;pwned\x07\x1b[31m\nred", "caf\udce9", "N" * 254,
                                    "FAR", "FUTURE", "OLD"])
    assert found["GOOD"]["uptime"] in range(3725, 3725 + 20) and found["GOOD"]["protocol"] == 43
    assert (found["FAR"]["start_time"], found["FAR"]["started"], found["FAR"]["uptime"]) == (2**64 - 1, None, None)
    assert found["FUTURE"]["started"] is not None and found["FUTURE"]["uptime"] is None
    assert (found["OLD"]["protocol"], found["OLD"]["start_time"], found["OLD"]["started"]) == (32, 0, None)
    assert {f["address"] for f in found.values()} <= {"10.88.0.1", "10.88.0.2"}

    table = icetools(ns, "discover", "--timeout", "1")
    assert table.returncode == 0 and table.stderr == result.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    lines = table.stdout.splitlines()
    assert len(lines) == 1 + 7  # the header, each scheduler once, the newline escaped
    names = {line.split()[2]: line for line in lines[1:]}
    assert set(names) == {"GOOD", "evil\\x1b]0;pwned\\x07\\x1b[31m\\nred", "caf\\xe9", "N" * 254, "FAR", "FUTURE", "OLD"}
    assert re.fullmatch(r"01:02:(0[5-9]|1\d)", names["GOOD"].split()[-1]), names["GOOD"]
    assert names["FAR"].split()[-2:] == ["?", "?"] and names["OLD"].split()[3:] == ["32", "?", "?"]
    assert names["FUTURE"].split()[-1] == "?"


def test_nothing_answers_is_one_error_line(tmp_path: Path) -> None:
    """Only hostile noise answering (or nothing at all) is the error record gives, plus the
    count of what was ignored; a namespace with no interface to broadcast on says so."""
    require(netns_unsupported())
    answers = tmp_path / "answers.json"
    now = int(time.time())
    answers.write_text(json.dumps([current(43, now, b"ICECREAM\0")[:267].hex(), current(0, now, b"ICECREAM\0").hex()]))
    with Namespace() as ns:
        bare = icetools(ns, "discover")
        assert (bare.returncode, bare.stdout) == (1, "")
        assert bare.stderr == ("icetools: error: no network interface to broadcast on "
                               "(loopback and point-to-point links are not used)\n")
        ns.add_veth_pair("v0", "10.88.0.1/24", "v1", "10.88.0.2/24")
        silent = icetools(ns, "discover", "--timeout", "0.3")
        assert (silent.returncode, silent.stdout) == (1, "")
        assert silent.stderr == "icetools: error: no scheduler answered a broadcast within 0.3 s\n"
        responder = ns.popen([sys.executable, "-c", RESPONDER, str(answers)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert responder.stdout is not None and responder.stdout.readline() == "ready\n"
            noise = icetools(ns, "discover", "-n", "ICECREAM", "--timeout", "0.5")
        finally:
            stop_process(responder)
        assert (noise.returncode, noise.stdout) == (1, "")
        assert noise.stderr == ("icetools: error: no scheduler for network 'ICECREAM' answered a broadcast "
                                "within 0.5 s; ignored 2 datagrams that were not scheduler answers\n")
