"""Host.report(): the fast path for MON_STATS (stable lines skipped, report shapes matched by
regex, reports applied only when a field is read) must give exactly what updating the host from
every whole report in turn gives, whatever the reports look like."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from icetools import messages as m
from icetools.monitor import Host

FIELDS = ("name", "ip", "platform", "protocol", "features", "max_jobs", "no_remote", "speed", "load", "load_avg", "free_mem")
STATIC = "Name:node6\nIP:10.77.6.2\nMaxJobs:3\nNoRemote:false\nPlatform:x86_64\nVersion:43\nFeatures:env_xz env_zstd\n"


def icecream_report(speed: float, load: int, averages: tuple[int, int, int, int] | None) -> str:
    """What icecream's scheduler sends: the static lines, speed and load, and load averages and
    free memory when the report was triggered by the daemon's own stats."""
    text = STATIC + f"Speed:{speed:f}\nLoad:{load}\n"
    if averages is not None:
        a1, a5, a10, mem = averages
        text += f"LoadAvg1:{a1}\nLoadAvg5:{a5}\nLoadAvg10:{a10}\nFreeMem:{mem}\n"
    return text


def values(host: Host) -> dict[str, Any]:
    return {name: getattr(host, name) for name in FIELDS}


def reference(reports: list[str]) -> dict[str, Any]:
    """The plain semantics: parse every whole report and update the host from it, in order."""
    host = Host(1)
    for text in reports:
        host.update(m.parse_statmsg(text))
    return values(host)


def fast(reports: list[str], read_every: int | None = None) -> dict[str, Any]:
    host = Host(1)
    for i, text in enumerate(reports):
        host.report(text)
        if read_every and i % read_every == 0:
            values(host)  # reading applies what is pending; the end result must not change
    return values(host)


numbers = st.integers(min_value=0, max_value=10**6)
icecream_reports = st.lists(
    st.builds(
        icecream_report,
        st.floats(min_value=0, max_value=1000, allow_nan=False),
        numbers,
        st.none() | st.tuples(numbers, numbers, numbers, numbers),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(icecream_reports, st.sampled_from([None, 1, 3]))
def test_icecream_reports_give_what_whole_updates_give(reports: list[str], read_every: int | None) -> None:
    assert fast(reports, read_every) == reference(reports)


# Anything at all: keys from a small set (so they repeat and collide), odd values, missing
# newlines, lines without ':', duplicate keys, Name changing in the changing part.
keys = st.sampled_from(["Name", "IP", "Load", "LoadAvg1", "LoadAvg5", "LoadAvg10", "FreeMem", "Speed", "MaxJobs", "Other", ""])
value = st.sampled_from(["1", "2", "x", "", "3.5", "a:b", "-4", "env_xz env_zstd", "--"])
line = st.builds(lambda k, v, colon: f"{k}:{v}" if colon else f"{k}{v}", keys, value, st.booleans())
odd_report = st.builds(
    lambda lines, newline: "\n".join(lines) + ("\n" if newline else ""),
    st.lists(line, max_size=8),
    st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(odd_report, min_size=1, max_size=12), st.sampled_from([None, 1, 2]))
# A key of the stable lines that comes again after them, then not: the earlier value is back.
@example(["IP:a\nLoad:5\nSpeed:1\nLoad:7\n", "IP:a\nLoad:5\nSpeed:2\nLoad:8\n", "IP:a\nLoad:5\nSpeed:3\n"], None)
@example(["IP:a\nLoad:5\nSpeed:1\n", "IP:a\nLoad:5\nSpeed:2\n", "IP:a\nLoad:5\nSpeed:3\nLoad:9\n", "IP:a\nLoad:5\nSpeed:4\n"], None)
# A malformed number in a report that would supersede a pending one: the pending value is the
# one it keeps.
@example(["IP:a\nLoad:1\n", "IP:a\nLoad:2\n", "IP:a\nLoad:3\n", "IP:a\nLoad:4\n", "IP:a\nLoad:x\n"], None)
@example(["IP:a\nSpeed:1.5\n", "IP:a\nSpeed:2.5\n", "IP:a\nSpeed:3\n", "IP:a\nSpeed:nan\n"], None)
def test_any_reports_give_what_whole_updates_give(reports: list[str], read_every: int | None) -> None:
    assert fast(reports, read_every) == reference(reports)


@settings(max_examples=100, deadline=None)
@given(st.lists(odd_report, min_size=1, max_size=12), icecream_reports)
def test_mixed_reports_and_a_checkpoint_in_between(odd: list[str], real: list[str]) -> None:
    """A host pickled (a seek-index checkpoint) with reports pending goes on exactly."""
    reports = real + odd + real
    host = Host(1)
    half = len(reports) // 2
    for text in reports[:half]:
        host.report(text)
    host = pickle.loads(pickle.dumps(host))
    for text in reports[half:]:
        host.report(text)
    assert values(host) == reference(reports)


def test_a_superseded_report_is_never_applied() -> None:
    host = Host(1)
    for i in range(3):  # the first reports teach it the stable lines and both shapes
        host.report(icecream_report(1.0, i, None))
        host.report(icecream_report(1.0, i, (i, i, i, i)))
    full = [icecream_report(1.0, i, (i, i, i, i)) for i in range(50)]
    for text in full:
        host.report(text)
    assert len(host._pending) == 1  # each full report supersedes the one before
    short = icecream_report(1.0, 7, None)
    host.report(short)
    assert len(host._pending) == 2  # a short one does not: its load averages must survive
    assert host.load == 7 and host.load_avg == (49, 49, 49) and host.free_mem == 49
    assert host._pending == []


def test_fields_can_be_set_and_stats_reads_the_last_report() -> None:
    host = Host(1)
    host.report(icecream_report(1.0, 5, None))
    host.report(icecream_report(1.0, 6, None))
    host.load = 42
    assert host.load == 42
    host.report(icecream_report(1.0, 7, None))
    assert host.load == 7
    assert host.stats["Load"] == "7" and host.stats["Name"] == "node6"



def loads_read(reports: list[str]) -> list[int]:
    """Host.reported_load() after each report, and what reading host.load would give then (read
    from a copy: reading it applies the pending reports, which reported_load must not need)."""
    host = Host(1)
    out = []
    for text in reports:
        host.report(text)
        out.append((host.reported_load(), pickle.loads(pickle.dumps(host)).load))
    return out


@settings(max_examples=300, deadline=None)
@given(st.one_of(icecream_reports, st.lists(odd_report, min_size=1, max_size=12)))
# A malformed load after a good one keeps the good one (as a whole update does).
@example(["IP:a\nLoad:5\n", "IP:a\nLoad:6\n", "IP:a\nLoad:x\n", "IP:a\nLoad:7\nFreeMem:1\n", "IP:a\nLoad:x\n"])
def test_the_reported_load_is_the_load(reports: list[str]) -> None:
    read = loads_read(reports)
    assert [a for a, _ in read] == [b for _, b in read]


@settings(max_examples=200, deadline=None)
@given(icecream_reports)
def test_the_reported_load_is_the_load_whole_updates_give(reports: list[str]) -> None:
    host = Host(1)
    expected = []
    for text in reports:
        host.update(m.parse_statmsg(text))
        expected.append(host.load)
    assert [a for a, _ in loads_read(reports)] == expected


def test_the_reported_load_leaves_reports_pending() -> None:
    """What trace reads at every report must not apply them in full (see Host.report)."""
    host = Host(1)
    for i in range(3):  # the first reports teach it the stable lines and both shapes
        host.report(icecream_report(1.0, i, None))
        host.report(icecream_report(1.0, i, (i, i, i, i)))
    host.report(icecream_report(1.0, 40, (4, 4, 4, 4)))
    host.report(icecream_report(1.0, 41, None))
    assert host.reported_load() == 41
    assert len(host._pending) == 2
    assert host.load == 41 and host.load_avg == (4, 4, 4)
