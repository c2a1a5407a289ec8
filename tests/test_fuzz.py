"""Property tests: on random and mutated input, decoders and the capture reader raise only
icetools' own errors, never hang, and never return a silently empty result."""

from __future__ import annotations

import os
import re
import struct
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icetools import messages as m
from icetools.capture import MAGIC, CaptureReader, CaptureWriter
from icetools.errors import CaptureError, IcetoolsError
from icetools.protocol import NEED_DATA, Channel

from .test_messages import sample

VERSIONS = st.integers(m.MIN_PROTOCOL_VERSION, m.PROTOCOL_VERSION)
VALID_FRAMES = [
    m.encode(sample(cls), v)
    for cls in m.MESSAGE_CLASSES.values()
    if cls is not m.Text
    for v in (21, 28, 29, 38, 39, 43, 44)
]


@st.composite
def mutated(draw: st.DrawFn, base: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(base)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and data:
            i = draw(st.integers(0, len(data)))
            data = data[:i]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.binary(max_size=64), mutated(VALID_FRAMES)), version=VERSIONS, monitor=st.booleans())
def test_decode_raises_only_icetools_errors(data: bytes, version: int, monitor: bool) -> None:
    try:
        msg = m.decode(data, version, monitor=monitor)
    except IcetoolsError:
        return
    # Whatever decodes re-encodes to the very same bytes, except that a boolean sent as a
    # non-zero value other than 1 (true to icecream too) comes back as 1.
    again = m.encode(msg, version)
    assert m.decode(again, version, monitor=monitor) == msg
    if not any(f.kind is m.Kind.BOOL for f in msg.FIELDS):
        assert again == data


@settings(max_examples=200, deadline=None)
@given(stream=st.one_of(st.binary(max_size=200), mutated([b"".join(VALID_FRAMES[:20])])), chunk=st.integers(1, 64))
def test_channel_stream_raises_only_icetools_errors(stream: bytes, chunk: int) -> None:
    channel = Channel(44)
    try:
        for i in range(0, len(stream), chunk):
            channel.receive_data(stream[i : i + chunk])
            while channel.next_event() is not NEED_DATA:
                pass
        channel.receive_data(b"")
        while channel.next_event() is not NEED_DATA:
            pass
    except IcetoolsError:
        pass


def _sample_capture() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.icecap"
        with CaptureWriter(path) as w:
            w.connected(43, 43, 44, "127.0.0.1:8765")
            w.frames(VALID_FRAMES[:12])
            w.disconnected("gone")
            w.connected(38, 43, 38, "127.0.0.1:8765")
            w.frames(VALID_FRAMES[12:20])
        return path.read_bytes()


SAMPLE_CAPTURE = _sample_capture()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=100), mutated([SAMPLE_CAPTURE])))
def test_capture_reader_raises_only_capture_errors(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("fuzz") / "f.icecap"
    path.write_bytes(data)
    try:
        with CaptureReader(path) as reader:
            records = list(reader)
    except CaptureError:
        return
    # A file that reads without error either has records or says why it has fewer.
    if len(data) > len(SAMPLE_CAPTURE) // 2 and data[:14] == SAMPLE_CAPTURE[:14]:
        assert records or reader.torn_bytes


# ---- every reading command over damaged real recordings ------------------------------------

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
#: The reading commands, each with and without --salvage where it has it. ``{until}`` is a
#: moment in the middle of the recording.
READING_COMMANDS = [
    ["dump"], ["dump", "--json"], ["dump", "--salvage"],
    ["stats"], ["stats", "--json", "--salvage"],
    ["replay", "--fast"], ["replay", "--fast", "--salvage"], ["replay", "--fast", "--until", "{until}"],
    ["replay", "--json", "--until", "{until}", "--salvage"],  # not --fast: a moment, not a pace
    ["anonymize"], ["anonymize", "--salvage"],
]
RUN_TIMEOUT = 20.0
#: One run in this many is a real subprocess (the rest run cli.main in-process, ten times faster).
SUBPROCESS_EVERY = 8
FUZZ_SEED = 20261201


class _Hang(BaseException):
    pass


def _run_in_process(args: list[str]) -> tuple[object, str, str]:
    """cli.main() as ``icetools ARGS`` would run it: (exit status, stdout, stderr); the status is
    "hang" past RUN_TIMEOUT and "traceback" for an exception that escaped main()."""
    import io
    import signal
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    from icetools.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")

    def alarm(*_: object) -> None:
        raise _Hang

    old_argv, old_handler = sys.argv, signal.signal(signal.SIGALRM, alarm)
    sys.argv = ["icetools", *args]
    status: object = 0
    signal.setitimer(signal.ITIMER_REAL, RUN_TIMEOUT)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
    except SystemExit as e:
        status = e.code if e.code is not None else 0
    except _Hang:
        status = "hang"
    except BaseException:  # noqa: BLE001 - what the user would have seen as a traceback
        status = "traceback"
        err.write(traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        sys.argv = old_argv
    out.flush()
    err.flush()
    return status, out.buffer.getvalue().decode(errors="replace"), err.buffer.getvalue().decode(errors="replace")


def _run_subprocess(args: list[str]) -> tuple[object, str, str]:
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True,
                              text=True, errors="replace", timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "hang", "", ""
    status: object = "traceback" if "Traceback (most recent call last)" in done.stderr else done.returncode
    return status, done.stdout, done.stderr


def _offsets(data: bytes) -> list[int]:
    pos = 14 + int.from_bytes(data[10:14], "big")
    out = []
    while pos + 13 <= len(data):
        out.append(pos)
        pos += 13 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    return out


def _variants(rng: "random.Random", tmp: Path) -> list[tuple[str, Path, list[int], bytes]]:
    """(what, path, record offsets of the original, original bytes) for damaged copies of the
    real recordings: truncations, same-length mutations (byte flips, in record headers or
    anywhere), insertions and deletions, hostile headers, special files."""
    out = []
    n = 0

    def add(what: str, data: bytes, offsets: list[int], original: bytes) -> None:
        nonlocal n
        n += 1
        path = tmp / f"v{n}.icecap"
        path.write_bytes(data)
        out.append((what, path, offsets, original))

    for source in sorted(RECORDINGS.glob("*.icecap")):
        data = source.read_bytes()
        offsets = _offsets(data)
        for _ in range(2):
            add("truncated", data[: rng.randrange(len(data))], offsets, data)
        for _ in range(6):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.6:  # a record header's byte: kind, length or time
                    at = rng.choice(offsets) + rng.randrange(13)
                else:
                    at = rng.randrange(len(MAGIC), len(data))
                mutated[at] ^= rng.randrange(1, 256)
            if rng.random() < 0.3:
                mutated = mutated[: rng.randrange(len(mutated))]
            add("mutated", bytes(mutated), offsets, data)
        spliced = bytearray(data)
        at = rng.randrange(len(spliced))
        if rng.random() < 0.5:
            spliced[at:at] = rng.randbytes(rng.randint(1, 40))
        else:
            del spliced[at : at + rng.randint(1, 40)]
        add("spliced", bytes(spliced), [], data)
    deep = b"[" * 20000 + b"]" * 20000
    base = (RECORDINGS / "build.icecap").read_bytes()
    header_end = 14 + int.from_bytes(base[10:14], "big")
    header = base[14:header_end]
    for hostile in (b'{"x":' + deep + b"," + header[1:], header.replace(b'"protocol":', b'"protocol":1e400,"p0":'),
                    header.replace(b'"start":', b'"start":NaN,"s0":'), b"[]", b"\xff\xfe", b'{"protocol":43}'):
        add("hostile header", MAGIC + struct.pack(">HI", 1, len(hostile)) + hostile + base[header_end:], [], base)
    return out


def _special(tmp: Path) -> list[Path]:
    import socket

    fifo = tmp / "fifo.icecap"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "sock.icecap"))
    sock.close()
    (tmp / "dir.icecap").mkdir()
    return [fifo, tmp / "sock.icecap", tmp / "dir.icecap", Path("/dev/null")]


def test_reading_commands_over_damaged_captures(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every reading command over damaged real recordings: no traceback, no hang, exit 0 or 1,
    one error line on failure, and damage followed by more data never passed off as a torn
    tail. Prints the outcome counts (run with -s to see them)."""
    import collections
    import random

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = random.Random(FUZZ_SEED)
    work = tmp_path / "variants"
    work.mkdir()
    variants = _variants(rng, work)
    variants += [("special file", p, [], b"") for p in _special(work)]
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    runs = 0
    for what, path, offsets, original in variants:
        for command in READING_COMMANDS:
            args = [a.replace("{until}", "30") for a in command] + [str(path)]
            target = work / f"anon{runs}.icecap"
            if command[0] == "anonymize":
                args.insert(1, str(path))
                args[-1] = str(target)
            runs += 1
            runner = _run_subprocess if runs % SUBPROCESS_EVERY == 0 else _run_in_process
            status, _, err = runner(args)
            lines = err.strip().splitlines()
            if status == 0:
                torn = re.search(r"ignored (\d+) trailing bytes", err)
                outcome = "ok, salvaged" if "damaged bytes" in err else "ok, torn tail" if torn else "ok"
                if torn and what == "mutated" and offsets:
                    # A real torn tail starts at one of the original's records and is shorter
                    # than it: no whole record of the original inside what was ignored.
                    size = path.stat().st_size
                    start = size - int(torn.group(1))
                    if any(start < o < size for o in offsets) or (start not in offsets):
                        problems.append(f"{what} {path.name} {command}: torn tail from byte {start} of {size}: {err}")
            elif status == 1:
                outcome = "error: corrupt" if "corrupt capture" in err else "error"
                if len(lines) != 1 or not lines[0].startswith("icetools: error: "):
                    problems.append(f"{what} {path.name} {command}: not one error line: {err!r}")
                if command[0] == "anonymize" and target.exists():
                    problems.append(f"{what} {path.name} {command}: failed but left {target.name}")
            else:
                outcome = str(status)
                problems.append(f"{what} {path.name} {command}: {status}: {err[-2000:]}")
            counts[f"{command[0]:<9} {outcome}"] += 1
            target.unlink(missing_ok=True)
    report = "\n".join(f"{n:6}  {k}" for k, n in sorted(counts.items()))
    print(f"\n{runs} runs over {len(variants)} damaged captures:\n{report}")
    assert not problems, "\n".join(problems[:10]) + f"\n\noutcomes:\n{report}"
