"""Damaged and hostile captures through every reading command, as a user runs them (real
processes): one ``icetools: error:`` line and exit 1, never a traceback or a hang; a torn tail
only where the file really ends inside its last record; --salvage past damage; text from a
capture escaped on its way to a terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from icetools import messages as m
from icetools.capture import MAGIC, CaptureReader, CaptureWriter

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
DEMO = RECORDINGS / "demo.icecap"
_RECORD = struct.Struct(">BIQ")


def icetools(*args: str, timeout: float = 30, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icetools", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str = "") -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icetools: error: "), result.stderr
    assert text in lines[0], (text, lines[0])
    return lines[0]


def record_offsets(data: bytes) -> list[int]:
    """The file offsets of the records of a (well-formed) capture, and its end."""
    pos = 14 + struct.unpack_from(">I", data, 10)[0]
    out = []
    while pos + 13 <= len(data):
        out.append(pos)
        pos += 13 + struct.unpack_from(">I", data, pos + 1)[0]
    return out + [pos]


def capture(header: bytes, *records: bytes) -> bytes:
    return MAGIC + struct.pack(">HI", 1, len(header)) + header + b"".join(records)


def record(kind: int, body: bytes, us: int = 5) -> bytes:
    return _RECORD.pack(kind, len(body), us) + body


HEADER = b'{"protocol":43,"peer_version":43,"offered":44,"scheduler":"127.0.0.1:8765","start":1764312000.25,"icetools":"0.1.0"}'
CONNECT = b'{"protocol":43,"peer_version":43,"offered":44,"scheduler":"127.0.0.1:8765","reconnect":false}'
DEEP = b"[" * 20000 + b"]" * 20000
STATS = m.encode(m.MonStats(1, "Name:node1\nIP:10.0.0.1\nMaxJobs:2\n"), 43)

#: Captures whose JSON is hostile or of the wrong types: each must be one error line.
HOSTILE = {
    "header nested 20000 deep": capture(b'{"x":' + DEEP + b"," + HEADER[1:], record(2, CONNECT)),
    "connect nested 20000 deep": capture(HEADER, record(2, b'{"x":' + DEEP[:30000] + b"," + CONNECT[1:])),
    "disconnect nested 20000 deep": capture(HEADER, record(2, CONNECT), record(3, b'{"reason":' + DEEP[:40000] + b"}")),
    "header protocol 1e400": capture(HEADER.replace(b'"protocol":43', b'"protocol":1e400'), record(2, CONNECT)),
    "connect protocol 1e400": capture(HEADER, record(2, CONNECT.replace(b'"protocol":43', b'"protocol":1e400'))),
    "end frames 1e400": capture(HEADER, record(2, CONNECT), record(1, STATS), record(4, b'{"frames":1e400,"reason":"signal"}')),
    "header start NaN": capture(HEADER.replace(b'"start":1764312000.25', b'"start":NaN'), record(2, CONNECT)),
    "header start Infinity": capture(HEADER.replace(b'"start":1764312000.25', b'"start":Infinity'), record(2, CONNECT)),
    "end frames 2.5": capture(HEADER, record(2, CONNECT), record(1, STATS), record(4, b'{"frames":2.5,"reason":"signal"}')),
    "connect protocol a string": capture(HEADER, record(2, CONNECT.replace(b'"protocol":43', b'"protocol":"43"'))),
    "connect reconnect a number": capture(HEADER, record(2, CONNECT.replace(b'"reconnect":false', b'"reconnect":0'))),
    "disconnect reason a list": capture(HEADER, record(2, CONNECT), record(3, b'{"reason":["x"]}')),
    "record time 2^64-1": capture(HEADER, record(2, CONNECT), record(1, STATS, us=2**64 - 1)),
    # format 2: the new header keys, the rotated connect record and carried frames
    "header series uppercase": capture(HEADER[:-1] + b',"series":"0123456789ABCDEF0123456789ABCDEF"}', record(2, CONNECT)),
    "header part a string": capture(HEADER[:-1] + b',"part":"1"}', record(2, CONNECT)),
    "header netname null": capture(HEADER[:-1] + b',"netname":null}', record(2, CONNECT)),
    "connect rotated a number": capture(HEADER, record(2, CONNECT[:-1] + b',"rotated":1}')),
    "carried frame received after it was carried": capture(HEADER, record(2, CONNECT), record(5, struct.pack(">q", 6) + STATS)),
}

READING = [
    ["dump"], ["dump", "--json"], ["stats"], ["replay", "--fast"], ["replay", "--fast", "--until", "1"],
    ["jobs"], ["jobs", "--json"],
]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_json_and_times_are_one_line_errors(tmp_path: Path, case: str) -> None:
    path = tmp_path / "hostile.icecap"
    path.write_bytes(HOSTILE[case])
    for command in READING:
        assert_one_line_error(icetools(*command, str(path)))
    target = tmp_path / "anon.icecap"
    assert_one_line_error(icetools("anonymize", str(path), str(target)))
    assert_one_line_error(icetools("trace", str(path), "-o", str(target)))
    assert not target.exists() and os.listdir(tmp_path) == ["hostile.icecap"]


ESC = "\x1b]0;pwned\x07"


def test_text_from_a_capture_is_escaped_on_terminals_and_exact_in_json(tmp_path: Path) -> None:
    """Host, file and scheduler names with terminal escapes, an undecodable byte in a file name
    and a lone surrogate in a disconnect reason; stdout strictly UTF-8, as in a UTF-8 locale."""
    path = tmp_path / f"{ESC}.icecap"
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, f"sched{ESC}:8765")
        w.frames([
            m.encode(m.MonStats(1, f"Name:{ESC}\nIP:10.0.0.1\nMaxJobs:2\n"), 43),
            m.encode(m.MonLocalJobBegin(1, 5, 0, f"src/{ESC}a\udcff.c"), 43),
        ])
        w.disconnected("bad \ud800 reason")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    for command in (["dump"], ["stats"], ["replay", "--fast"], ["jobs"]):
        result = icetools(*command, str(path), env=env)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, result.stdout
        assert "\\x1b]0;pwned\\x07" in result.stdout, result.stdout
    text = icetools("dump", str(path), env=env).stdout
    assert "src/\\x1b]0;pwned\\x07a\\xff.c" in text and "bad \\ud800 reason" in text
    result = icetools("dump", "--json", str(path), env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["scheduler"] == f"sched{ESC}:8765"
    assert lines[1]["stats"]["Name"] == ESC
    assert lines[2]["file"] == f"src/{ESC}a\udcff.c"
    assert lines[3]["reason"] == "bad \ud800 reason"
    # The trace, a file of JSON: names exact, an undecodable byte as its JSON escape.
    trace = tmp_path / "trace.json"
    result = icetools("trace", str(path), "-o", str(trace), env=env)
    assert result.returncode == 0, result.stderr
    files = {e["args"].get("file") for e in json.loads(trace.read_text())["traceEvents"] if "args" in e}
    assert f"src/{ESC}a\udcff.c" in files
    # Errors and warnings that quote a path or file content are escaped too.
    missing = tmp_path / f"gone{ESC}.icecap"
    line = assert_one_line_error(icetools("dump", str(missing)), "no such file")
    assert "\x1b" not in line and "gone\\x1b]0;pwned\\x07" in line
    torn = tmp_path / f"torn{ESC}.icecap"
    torn.write_bytes(path.read_bytes()[:-5])
    result = icetools("dump", str(torn))
    assert result.returncode == 0 and "trailing bytes" in result.stderr
    assert "\x1b" not in result.stderr


def _special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.icecap"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.icecap"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    directory = tmp_path / "dir.icecap"
    directory.mkdir()
    return {"a FIFO": fifo, "a socket": sock_path, "a device": Path("/dev/null"), "a directory": directory}


def test_special_files_are_errors_at_once(tmp_path: Path) -> None:
    """A FIFO without a writer used to block dump and stats forever."""
    commands = [*READING, ["dump", "--follow"], ["replay", "--serve", "--listen", "127.0.0.1:1"],
                ["replay", "--as-scheduler", "--listen", "127.0.0.1:1"]]
    for kind, path in _special_files(tmp_path).items():
        for command in commands:
            assert_one_line_error(icetools(*command, str(path), timeout=20), f"is {kind}, not a capture file")
        assert_one_line_error(icetools("anonymize", str(path), str(tmp_path / "a.icecap"), timeout=20), f"is {kind}")
        if kind != "a device":  # writing targets: never replaced, never blocked on
            for command in (["anonymize", str(DEMO), str(path), "--overwrite"],
                            ["record", "-s", "127.0.0.1:1", "-o", str(path), "--overwrite"]):
                assert_one_line_error(icetools(*command, timeout=20), f"cannot create {path}: it is {kind}")


def _without_root_powers() -> list[str]:
    """A command prefix that runs without the power to read or write other people's files."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if os.environ.get("CI") == "true":
            pytest.fail("setpriv (util-linux) is needed to test unreadable files as root")
        pytest.skip("setpriv (util-linux) is needed to test unreadable files as root")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_unreadable_and_unwritable_paths_are_icetools_errors(tmp_path: Path) -> None:
    """click's own checks answered with 'Error: Invalid value ... not readable' and exit 2."""
    prefix = _without_root_powers()
    secret = tmp_path / "secret.icecap"
    shutil.copy(DEMO, secret)
    secret.chmod(0)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, sys.executable, "-m", "icetools", *args],
                              capture_output=True, text=True, timeout=30)

    for command in [*READING, ["dump", "--follow"], ["anonymize"]]:
        extra = [str(tmp_path / "out.icecap")] if command == ["anonymize"] else []
        assert_one_line_error(run(*command, str(secret), *extra), f"cannot open {secret}: Permission denied")
    blocked = readonly / "x.icecap"
    for command in (["anonymize", str(DEMO), str(blocked)],
                    ["record", "-s", "127.0.0.1:1", "-o", str(blocked)],
                    ["serve", "-s", "127.0.0.1:1", "--record", str(blocked), "--listen", "127.0.0.1:1"]):
        assert_one_line_error(run(*command), f"cannot create {blocked}: Permission denied")
    for command in (["anonymize", str(DEMO), str(tmp_path)], ["record", "-s", "127.0.0.1:1", "-o", str(tmp_path)]):
        assert_one_line_error(run(*command, "--overwrite"), "it is a directory")
    assert os.listdir(readonly) == []


def _damaged_first_record(tmp_path: Path) -> tuple[Path, int]:
    """demo.icecap with one length byte of its first record changed: the record now claims
    more bytes (fewer than the file holds) than it has."""
    data = bytearray(DEMO.read_bytes())
    first = record_offsets(bytes(data))[0]
    data[first + 3] ^= 0x01  # +256 bytes: a 349-byte connect record
    path = tmp_path / "damaged.icecap"
    path.write_bytes(bytes(data))
    return path, first


def test_damage_in_the_first_record_is_not_a_torn_tail(tmp_path: Path) -> None:
    path, first = _damaged_first_record(tmp_path)
    for command in READING:
        assert_one_line_error(icetools(*command, str(path)), f"corrupt capture {path} at byte {first}")
    whole = icetools("dump", "--json", str(DEMO)).stdout.splitlines()
    result = icetools("dump", "--json", "--salvage", str(path))
    assert result.returncode == 0, result.stderr
    got = result.stdout.splitlines()
    # Everything but the damaged connect record (and the frames inside its claimed length).
    assert whole[-1] == got[-1] and len(got) > len(whole) - 10, (len(got), len(whole))
    assert re.fullmatch(
        rf"icetools: warning: {re.escape(str(path))}: skipped \d+ damaged bytes in 1 region "
        rf"\(the first at byte {first}\) and kept \d+ frames\n",
        result.stderr,
    ), result.stderr
    for command in (["stats", "--json"], ["replay", "--fast", "--json"], ["replay", "--fast", "--json", "--until", "60"]):
        salvaged = icetools(*command, "--salvage", str(path))
        assert salvaged.returncode == 0 and "skipped" in salvaged.stderr, salvaged.stderr
        assert json.loads(salvaged.stdout)
    anon = tmp_path / "anon.icecap"
    assert_one_line_error(icetools("anonymize", str(path), str(anon)), "corrupt capture")
    assert not anon.exists()


def test_a_torn_tail_is_only_the_last_record_cut_short(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    offsets = record_offsets(data)
    path = tmp_path / "t.icecap"
    # Every cut inside the last two records is a torn tail: exit 0 and the bytes counted.
    for cut in range(offsets[-3] + 1, len(data)):
        if cut in offsets:
            continue
        path.write_bytes(data[:cut])
        with CaptureReader(path) as reader:
            list(reader)
        last = max(o for o in offsets if o < cut)
        assert reader.torn_bytes == cut - last, cut
    # ... and reads the same through the fast path (dump) and iteration (dump --follow would wait).
    path.write_bytes(data[: offsets[-2] + 20])
    result = icetools("dump", str(path))
    assert result.returncode == 0 and "ignored 20 trailing bytes" in result.stderr
    # Bytes after the end record are damage, not silently ignored.
    path.write_bytes(data + data[offsets[5] : offsets[8]])
    assert_one_line_error(icetools("dump", str(path)), f"at byte {len(data)}: {offsets[8] - offsets[5]} bytes follow the end record")
    result = icetools("stats", "--salvage", str(path))
    assert result.returncode == 0 and "skipped" in result.stderr


def test_salvage_resumes_at_the_next_record_and_counts_regions(tmp_path: Path) -> None:
    data = bytearray(DEMO.read_bytes())
    offsets = record_offsets(bytes(data))
    # Two damaged regions: a frame record's kind, and garbage over three records further on.
    data[offsets[100]] = 0x33
    data[offsets[500] + 2 : offsets[503] - 3] = bytes(offsets[503] - 5 - offsets[500])
    path = tmp_path / "two.icecap"
    path.write_bytes(bytes(data))
    line = assert_one_line_error(icetools("dump", str(path)), f"at byte {offsets[100]}: unknown record kind 0x33")
    assert "--salvage" in line
    with CaptureReader(path, salvage=True) as reader:
        records = list(reader)
    assert sorted(reader.damage.items()) == [
        (offsets[100], offsets[101] - offsets[100]), (offsets[500], offsets[503] - offsets[500])
    ]
    with CaptureReader(DEMO) as whole:
        everything = list(whole)
    assert len(records) == len(everything) - 4
    assert records == everything[: 100] + everything[101:500] + everything[503:]
    result = icetools("dump", "--salvage", str(path))
    assert result.returncode == 0
    assert f"skipped {offsets[101] - offsets[100] + offsets[503] - offsets[500]} damaged bytes in 2 regions" in result.stderr


def test_follow_waits_for_a_torn_tail_but_not_for_damage(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    offsets = record_offsets(data)
    path = tmp_path / "f.icecap"
    # A record whose bytes so far cannot start a record: dump --follow used to wait forever.
    bad = data[offsets[3] : offsets[4]]
    bad = bad[:1] + struct.pack(">I", len(bad) + 1000) + bad[5:]
    path.write_bytes(data[: offsets[3]] + bad)
    assert_one_line_error(icetools("dump", "--follow", str(path), timeout=20), "frame length prefix disagrees")
    # A torn record is waited for (and the rest, when it comes, read).
    path.write_bytes(data[: offsets[4] - 3])
    proc = subprocess.Popen([sys.executable, "-m", "icetools", "dump", "--follow", "--json", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert [json.loads(x)["t"] for x in lines]
        with open(path, "ab") as f:
            f.write(data[offsets[4] - 3 :])
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert len(lines) + len(out.splitlines()) == len(offsets) - 1


def test_serve_and_stand_in_refuse_a_damaged_capture_before_listening(tmp_path: Path) -> None:
    path, first = _damaged_first_record(tmp_path)
    for mode in ("--serve", "--as-scheduler"):
        assert_one_line_error(
            icetools("replay", mode, "--listen", "127.0.0.1:1", str(path), timeout=20), f"at byte {first}"
        )


def test_anonymize_without_a_connect_record_writes_nothing(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    offsets = record_offsets(data)
    source = tmp_path / "s.icecap"
    source.write_bytes(data[: offsets[0] + 20])  # the header, and the connect record torn
    target = tmp_path / "t.icecap"
    assert_one_line_error(icetools("anonymize", str(source), str(target)), "no complete connect record")
    assert sorted(os.listdir(tmp_path)) == ["s.icecap"]
    # A failing anonymize leaves an existing target as it was.
    target.write_bytes(b"precious")
    assert_one_line_error(icetools("anonymize", str(source), str(target), "--overwrite"), "no complete connect record")
    assert target.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["s.icecap", "t.icecap"]


def test_an_optional_record_claiming_gigabytes_is_damage(tmp_path: Path) -> None:
    """A first record turned into an unknown optional kind with a huge length used to swallow
    the whole file as a 'torn tail' (and buffer all of it on the way)."""
    data = DEMO.read_bytes()
    first = record_offsets(data)[0]
    path = tmp_path / "o.icecap"
    path.write_bytes(data[:first] + _RECORD.pack(0x90, 2**32 - 1, 1) + data[first:])
    for command in READING:
        assert_one_line_error(icetools(*command, str(path)), f"at byte {first}: optional record (kind 0x90) of 4294967295 bytes")
    result = icetools("dump", "--salvage", "--json", str(path))
    assert result.returncode == 0 and "skipped 13 damaged bytes in 1 region" in result.stderr
    assert result.stdout == icetools("dump", "--json", str(DEMO)).stdout


def test_json_output_stays_strict_json_whatever_hosts_report(tmp_path: Path) -> None:
    """A daemon reporting Speed "1e400", "nan" or "-inf" made replay --json print Infinity
    and NaN, which no strict JSON parser reads."""
    path = tmp_path / "w.icecap"
    with CaptureWriter(path) as w:
        w.connected(43, 43, 44, "x:1")
        w.frames([
            m.encode(m.MonStats(1, "Name:a\nIP:10.0.0.1\nMaxJobs:2\nSpeed:1e400\nLoad:nan\n"), 43),
            m.encode(m.MonStats(2, "Name:b\nIP:10.0.0.2\nMaxJobs:2\nSpeed:12.5\n"), 43),
            m.encode(m.MonStats(2, "Name:b\nIP:10.0.0.2\nMaxJobs:2\nSpeed:-inf\n"), 43),
            m.encode(m.MonStats(1, "Name:a\nIP:10.0.0.1\nMaxJobs:2\nSpeed:nan\n"), 43),
        ])

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))

    for command in (["replay", "--fast", "--json"], ["replay", "--json", "--until", "5"], ["stats", "--json"]):
        result = icetools(*command, str(path))
        assert result.returncode == 0, result.stderr
        strict(result.stdout)
    hosts = {h["name"]: h for h in strict(icetools("replay", "--fast", "--json", str(path)).stdout)["hosts"]}
    assert hosts["a"]["speed"] == 0.0 and hosts["b"]["speed"] == 12.5  # malformed: the last good value
