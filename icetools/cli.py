"""The ``icetools`` command line.

Errors the user can cause are :class:`~icetools.errors.IcetoolsError`; :func:`main` turns them
into one line on stderr and exit status 1. Nothing else should ever reach the user as a
traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import click

from . import __version__
from .capture import FILE_SUFFIX, CaptureReader, CaptureWriter
from .defaults import SERVE_LISTEN as DEFAULT_LISTEN
from .defaults import SERVE_MAX_CLIENTS
from .defaults import SERVE_PORT as DEFAULT_PORT
from .defaults import STANDIN_LISTEN
from .discovery import DEFAULT_PORT as DEFAULT_SCHEDULER_PORT
from .discovery import DEFAULT_NETNAME, DISCOVERY_WINDOW, locate_scheduler, parse_hostport, scheduler_from_environment
from .errors import IcetoolsError, OptionError, describe_os_error
from .messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from .monitor import DEFAULT_MAX_FINISHED, Monitor
from .progress import Progress
from .render import TYPE_NAMES, Dumper, printable
from .replay import paced, render_state, replay_file
from .replay import replay as replay_records
from .rotation import Rotation, RotatingWriter, is_pattern, output_pattern, parse_rotation
from .index import recording_at
from .recordings import Recording, open_recording, parse_time, to_seconds
from .stats import DEFAULT_GAP, analyse, render_report

# The servers, the recorder and the stand-in (and with them asyncio and websockets) are imported
# by the commands that use them: every command pays for what is imported here at start-up, and
# `replay --fast` and `stats` on a short file would spend most of their time importing.

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def warn(message: str) -> None:
    click.echo(f"icetools: warning: {printable(message)}", err=True)


#: Path arguments are checked by icetools itself (CaptureReader, CaptureWriter), which reports
#: a problem as its one-line error with exit status 1; click's own checks would answer with a
#: usage error (exit 2) instead, and only for some of the problems.
PATH = click.Path(path_type=Path, readable=False)
#: Where a recording goes: kept as typed (a Path would drop the '/' that says "a directory").
OUTPUT = click.Path(path_type=str, readable=False)

_salvage_option = click.option(
    "--salvage",
    is_flag=True,
    help="Read on past damage in the capture (from the next record that checks out) and say "
    "how much was skipped, instead of stopping with an error.",
)


def _text_output() -> None:
    """Text that came from the network or a file may hold lone surrogates (undecodable bytes,
    a bad JSON escape): write them as backslash escapes (``\\udcff``, which is also the JSON
    escape) rather than fail in the middle of the output."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


class _ReaderGone(Exception):
    """The reader of standard output went away (``icetools jobs x | head``)."""


class _Commands(click.Group):
    """icetools' commands: a reader of the output going away ends a command quietly, as
    main() says, rather than with click's own exit status 1 for it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _ReaderGone() from e


@click.group(cls=_Commands, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="icetools")
def cli() -> None:
    """Record, decode, replay and watch icecream (icecc) build clusters.

    icetools logs in to an icecream scheduler as a monitor (like icemon or icecream-sundae),
    keeps what it says in capture files, and turns them into text, JSON and statistics.

    \b
    Examples:
      icetools record -s buildhost -o build.icecap --duration 600
      icetools dump build.icecap --type MON_JOB_DONE
    """


# ---------------------------------------------------------------------------------- record


def _scheduler_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "-n",
        "--netname",
        metavar="NETNAME",
        help="Network name to discover the scheduler for by UDP broadcast (default ICECREAM).",
    )(f)
    f = click.option(
        "-s",
        "--scheduler",
        metavar="HOST[:PORT]",
        help="Scheduler to connect to (default: $ICECC_SCHEDULER, $USE_SCHEDULER, "
        "else broadcast discovery); port 8765 unless given.",
    )(f)
    return f


_protocol_option = click.option(
    "--protocol",
    type=click.IntRange(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
    default=PROTOCOL_VERSION,
    show_default=True,
    metavar="V",
    help="Protocol version to offer; the scheduler answers with the lower of its own and V.",
)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange without nan and inf, which it lets through (nan compares false with
    any bound): a NaN speed would pace nothing and end up in the page's JSON."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class MomentType(click.ParamType):
    """--since/--until/--start: seconds since the recording started, or a wall-clock time (ISO
    8601, local time without an offset), made seconds once the recording's start is known."""

    name = "moment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_time(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


MOMENT = MomentType()


class RotationType(click.ParamType):
    """--rotate: a duration (30m, 1h, 1d, 90s) or a size (64KB, 100MB, 1GiB)."""

    name = "rotation"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Rotation):
            return value
        try:
            return parse_rotation(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _rotation_options(f):  # type: ignore[no-untyped-def]
    """--rotate and --keep (record, serve --record)."""
    f = click.option(
        "--keep",
        type=click.IntRange(min=1),
        metavar="N",
        help="With --rotate: keep the newest N files of this recording, deleting older ones "
        "after each rotation (default: keep all).",
    )(f)
    f = click.option(
        "--rotate",
        type=RotationType(),
        metavar="WHEN",
        help="Go on in a new file every duration (30m, 1h, 1d, 90s) or once the file has a size "
        "(64KB, 100MB, 1GB; KiB/MiB/GiB); each file stands on its own (it carries the hosts "
        "and running jobs over). The output may then be a directory or a strftime pattern "
        "(farm-%Y%m%d-%H%M.icecap).",
    )(f)
    return f


def _looked_for(scheduler: str | None, netname: str | None) -> str | None:
    """The netname a recording looks for (its header's ``netname``): None when it connects
    by address (-s or ICECC_SCHEDULER), which is how locate_scheduler decides too."""
    if scheduler or scheduler_from_environment(None):
        return None
    return netname or DEFAULT_NETNAME


def _recording_sink(
    output: str | None,
    *,
    rotate: Rotation | None,
    keep: int | None,
    overwrite: bool,
    netname: str | None,
) -> CaptureWriter | RotatingWriter:
    """The capture a recording writes to: one file, or with ``rotate`` a rotating series
    (after :func:`_check_recording_usage`)."""
    if rotate is None:
        if output is None:
            output = time.strftime("icecream-%Y%m%d-%H%M%S") + FILE_SUFFIX
        return CaptureWriter(Path(output), overwrite=overwrite, netname=netname)
    return RotatingWriter(output_pattern(output), rotate, keep=keep, netname=netname)


def _check_recording_usage(
    output: str | None, *, rotate: Rotation | None, keep: int | None, overwrite: bool, option: str
) -> None:
    """Usage errors for what only goes with --rotate (``option`` names the output option),
    before anything else happens."""
    if rotate is None:
        if keep is not None:
            raise click.UsageError("--keep goes with --rotate")
        if output is not None and is_pattern(output):
            raise click.UsageError(f"{option} {output} is a strftime pattern, which goes with --rotate")
    elif overwrite:
        raise click.UsageError("--overwrite does not go with --rotate (a rotating recording never replaces a file)")


def _web_options(f):  # type: ignore[no-untyped-def]
    """--allow-origin, --allow-host and --max-clients of the web server (serve, replay --serve)."""
    f = click.option(
        "--max-clients",
        type=click.IntRange(min=1),
        default=SERVE_MAX_CLIENTS,
        show_default=True,
        metavar="N",
        help="Browsers (websockets) served at once; more are answered 503.",
    )(f)
    f = click.option(
        "--allow-host",
        "allow_hosts",
        multiple=True,
        metavar="NAME",
        help="Also answer requests for this host name (e.g. a reverse proxy's); repeatable. "
        "By default only the names it listens as: localhost and the address, or for 0.0.0.0 "
        "the machine's names and addresses.",
    )(f)
    f = click.option(
        "--allow-origin",
        "allow_origins",
        multiple=True,
        metavar="ORIGIN",
        help="Also accept websockets from pages of this origin (e.g. https://ice.example.com); repeatable.",
    )(f)
    return f


def _scheduler_locator(scheduler: str | None, netname: str | None) -> tuple[tuple[str, int], Callable[[], tuple[str, int]]]:
    """The scheduler's address now (so a bad one fails before anything starts), and a function
    that gives it for each later (re)connection, asking discovery again if that is how it was
    found."""
    first = locate_scheduler(scheduler, netname)
    addresses = iter([first])

    def locate() -> tuple[str, int]:
        return next(addresses, None) or locate_scheduler(scheduler, netname)

    return first, locate


@cli.command(context_settings=CONTEXT_SETTINGS)
@_scheduler_options
@click.option(
    "-o",
    "--output",
    type=OUTPUT,
    help=f"Capture file to write (default: icecream-YYYYmmdd-HHMMSS{FILE_SUFFIX}); with --rotate "
    "also a directory or a strftime pattern.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the output file if it exists (once the scheduler has answered).",
)
@click.option(
    "--duration", type=FiniteFloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds."
)
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="Stop after N frames.")
@_protocol_option
@click.option(
    "--no-reconnect",
    is_flag=True,
    help="End the recording (exit 0) when the scheduler closes the connection, "
    "instead of reconnecting with backoff.",
)
@_rotation_options
def record(
    scheduler: str | None,
    netname: str | None,
    output: str | None,
    overwrite: bool,
    duration: float | None,
    count: int | None,
    protocol: int,
    no_reconnect: bool,
    rotate: Rotation | None,
    keep: int | None,
) -> None:
    """Log in to a scheduler as a monitor and record every frame it sends.

    The capture is append-only and written as frames arrive: stopping with Ctrl-C or SIGTERM
    writes an end record, and even a recorder killed outright keeps every complete frame.
    When the scheduler goes away, record reconnects with backoff and the recording goes on
    (one file can span scheduler restarts). With --rotate it goes on in a new file every
    duration or size, each file standing on its own; --keep deletes the oldest files of the
    recording beyond N.

    \b
    Examples:
      icetools record -s scheduler.example:8765 -o build.icecap
      icetools record --duration 3600 --protocol 38    # as a protocol-38 monitor sees it
      ICECC_SCHEDULER=buildhost icetools record --count 10000
      icetools record -o /var/lib/icetools/ --rotate 1d --keep 30
      icetools record -o 'farm-%Y%m%d-%H%M.icecap' --rotate 100MB
    """
    # Resolve the first address before creating the file, so a bad address leaves nothing behind.
    from .record import Recorder, run_recorder

    _check_recording_usage(output, rotate=rotate, keep=keep, overwrite=overwrite, option="-o")
    _, locate = _scheduler_locator(scheduler, netname)
    writer = _recording_sink(
        output, rotate=rotate, keep=keep, overwrite=overwrite, netname=_looked_for(scheduler, netname)
    )
    interactive = sys.stderr.isatty()
    recorder = Recorder(
        writer,
        locate,
        offer=protocol,
        duration=duration,
        count=count,
        reconnect=not no_reconnect,
        status_stream=sys.stderr if interactive else None,
        log_stream=None if interactive else sys.stderr,
    )
    reason = "error"
    try:
        reason = run_recorder(recorder)
    finally:
        # With nothing recorded the writer leaves no file behind (and an old one in place).
        writer.close(reason)
    if not interactive:
        where = f"{writer.path}" if isinstance(writer, CaptureWriter) else f"{writer.parts} files (the last {writer.path})"
        click.echo(
            f"icetools: recorded {writer.frames_written} frames ({writer.bytes_written} bytes) "
            f"to {printable(where)}, stopped by {reason}",
            err=True,
        )


# ------------------------------------------------------------------------------------ dump


def _type_filter(types: tuple[str, ...]) -> set[str] | None:
    if not types:
        return None
    wanted: set[str] = set()
    by_upper = {name.upper(): name for name in TYPE_NAMES}
    for item in types:
        for name in filter(None, (n.strip() for n in item.split(","))):
            canonical = by_upper.get(name.upper())
            if canonical is None:
                raise click.BadParameter(
                    f"unknown type {name!r}; known: {', '.join(TYPE_NAMES)}", param_hint="--type"
                )
            wanted.add(canonical)
    return wanted


#: The FILE... argument of every reading command.
FILES_HELP = (
    "FILE may be several files, a directory (its *.icecap) or a glob: they are read as one "
    "recording, in order of their start, with the gaps between them shown."
)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per message.")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep reading as the file grows (until the recording ends)."
)
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="NAME",
    help="Only these message types (e.g. MON_JOB_DONE, MON_STATS, connect); repeat or "
    "separate with commas.",
)
@_salvage_option
def dump(files: tuple[Path, ...], as_json: bool, follow: bool, types: tuple[str, ...], salvage: bool) -> None:
    """Decode a capture: one line per message, for people or (--json) for machines.

    Each JSON line has "t" (seconds since the recording started), "type" (icecream's name of
    the message) and the message's fields under icecream's names. Connection events have
    lines of their own, and so do gaps between files (type "gap"). A frame that cannot be
    decoded is shown as UNDECODABLE with its bytes, counted, and dump goes on. FILE may be
    several files, a directory or a glob, read as one recording.

    \b
    Examples:
      icetools dump build.icecap
      icetools dump build.icecap --json --type MON_JOB_DONE | jq .exitcode
      icetools dump /var/lib/icetools/ --type gap      # where the recordings have holes
      icetools dump --follow live.icecap     # while icetools record writes it
    """
    wanted = _type_filter(types)
    _text_output()
    if follow:
        if len(files) != 1:
            raise OptionError("--follow reads one file")
        reader: CaptureReader | Recording = CaptureReader(files[0], follow=True, salvage=salvage)
    else:
        reader = open_recording(files, salvage=salvage)
    dumper = Dumper(as_json=as_json, wanted=wanted, start=reader.header.start)
    with reader:
        out = sys.stdout
        if follow:
            for line in dumper.lines(reader):
                out.write(line + "\n")
                out.flush()
        else:
            # The whole file: pumped (decoded in place), its lines written in batches; whatever
            # was decoded before a corrupt record is still printed.
            batch: list[str] = []
            handlers = dumper.handlers(batch)
            on_event = dumper.on_event(batch)
            on_carried = dumper.on_carried(batch)
            dumper.protocol = reader.protocol
            with Progress(reader, sys.stderr) as progress:
                try:
                    while True:
                        pumped = reader.pump(
                            handlers, on_event, max_frames=8192, fields=as_json,
                            on_undecodable=on_event, carried=False, on_carried=on_carried,
                        )
                        if batch:
                            batch.append("")
                            out.write("\n".join(batch))
                            batch.clear()
                        if pumped.stopped == "end":
                            break
                        progress.update()
                finally:
                    if batch:
                        batch.append("")
                        out.write("\n".join(batch))
        out.flush()
    _finish_reading(reader, dumper.undecodable, "shown as UNDECODABLE")


# ------------------------------------------------------------------------------ replay, stats

DEMO = Path(__file__).resolve().parent / "data" / "demo.icecap"


def _open_capture(files: tuple[Path, ...], salvage: bool = False) -> Recording:
    """The files as one recording (the demo when none is given)."""
    return open_recording(files or (DEMO,), salvage=salvage)


def _check_capture(files: tuple[Path, ...], salvage: bool) -> None:
    """Read a whole recording once before serving it, so that one that cannot be read is
    an error before anything listens (and its warnings are said once, at the start)."""
    with open_recording(files, salvage=salvage) as reader:
        for _ in reader:
            pass
        _finish_reading(reader, 0)


def _moment(moment: Any, reader: CaptureReader | Recording, option: str) -> float | None:
    """--since/--until/--start (a MOMENT) as seconds since the recording started."""
    return None if moment is None else to_seconds(moment, reader.header.start, option)


def _finish_reading(reader: CaptureReader | Recording, undecodable: int, what: str = "skipped") -> None:
    if (warning := reader.warning()) is not None:
        warn(warning)
    if undecodable:
        warn(f"{undecodable} frames of {reader.frames} could not be decoded ({what})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="[FILE...]", nargs=-1, type=PATH)
@click.option(
    "--speed",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="X",
    help="Play X times faster than recorded.",
)
@click.option("--fast", is_flag=True, help="As fast as possible (no pacing).")
@click.option(
    "--until",
    type=MOMENT,
    metavar="T",
    help="Stop at T: seconds into the recording, or a date and time (2026-12-01 09:00, ISO 8601).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON document.")
@click.option(
    "--serve",
    is_flag=True,
    help="Show the replay in a browser (with play, pause, speed and seek) instead of printing it.",
)
@click.option(
    "--as-scheduler",
    is_flag=True,
    help="Stand in for the scheduler: play the recording to monitors that connect "
    "(icemon, icecream-sundae, icetools record).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help=f"Where --serve (default {DEFAULT_LISTEN}) or --as-scheduler (default "
    f"{STANDIN_LISTEN}) listens; 0.0.0.0:PORT shares it with your network.",
)
@click.option(
    "--start",
    type=MOMENT,
    metavar="T",
    help="With --as-scheduler: begin at T, seconds or a date and time (monitors first get the "
    "hosts as they were).",
)
@click.option("--loop", is_flag=True, help="With --as-scheduler: start over at the end.")
@click.option(
    "--netname",
    metavar="NAME",
    help="With --as-scheduler: also answer UDP discovery for this network name.",
)
@click.option(
    "--max-finished",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_FINISHED,
    show_default=True,
    metavar="N",
    help="Finished jobs to keep in the model (aggregates count them all).",
)
@_web_options
@_salvage_option
def replay(
    files: tuple[Path, ...],
    speed: float,
    fast: bool,
    until: Any,
    as_json: bool,
    serve: bool,
    as_scheduler: bool,
    listen: str | None,
    start: Any,
    loop: bool,
    netname: str | None,
    max_finished: int,
    allow_origins: tuple[str, ...],
    allow_hosts: tuple[str, ...],
    max_clients: int,
    salvage: bool,
) -> None:
    """Drive the cluster model from a recording and print the cluster at the end (or at --until).

    Without FILE it plays the demo recording shipped with icetools: a few minutes of a busy
    6-host cluster. In recorded time on a terminal, the state is redrawn as it changes.
    FILE may be several files, a directory or a glob, read as one recording; --until T then
    shows the state at T of the file that holds T (every file stands on its own).

    \b
    Examples:
      icetools replay --fast                       # the demo, the state at its end
      icetools replay build.icecap --until 120     # the cluster two minutes in
      icetools replay build.icecap --speed 10      # ten times faster than it happened
      icetools replay day.icecap --fast --json | jq .totals
      icetools replay --serve                      # the demo in your browser
      icetools replay build.icecap --as-scheduler  # then: icemon -s 127.0.0.1
      icetools replay /var/lib/icetools/ --until '2026-12-01 09:00'
    """
    if serve and as_scheduler:
        raise click.UsageError("choose one of --serve and --as-scheduler")
    if not as_scheduler and (start or loop or netname):
        raise click.UsageError("--start, --loop and --netname go with --as-scheduler")
    if listen and not (serve or as_scheduler):
        raise click.UsageError("--listen goes with --serve or --as-scheduler")
    if not serve and (allow_origins or allow_hosts or max_clients != SERVE_MAX_CLIENTS):
        raise click.UsageError("--allow-origin, --allow-host and --max-clients go with --serve")
    _text_output()
    paths = files or (DEMO,)
    if serve or as_scheduler:
        _check_capture(paths, salvage)
        with open_recording(paths) as recording:  # the header: for wall-clock --start
            start_s = _moment(start, recording, "--start") or 0.0
        if serve:
            web = {"allow_origins": allow_origins, "allow_hosts": allow_hosts, "max_clients": max_clients}
            _serve_replay(paths, speed, listen or DEFAULT_LISTEN, web, salvage)
        else:
            _stand_in(paths, speed, listen or STANDIN_LISTEN, start_s, loop, netname, salvage)
        return
    monitor = Monitor(max_finished=max_finished)
    live = not fast and not as_json and sys.stdout.isatty()
    if until is not None and not live:
        # A moment of the recording: the state at T of the file that holds T (every file stands
        # on its own), from its seek index (built on the first such call), or replayed from the
        # file's start (a salvaging read counts damage; the index keeps the default model).
        undecodable = 0
        with _open_capture(files, salvage) as reader:
            until_s = _moment(until, reader, "--until")
            if max_finished == DEFAULT_MAX_FINISHED and not salvage:
                monitor, _ = recording_at(reader, until_s)
            else:
                holder = reader.files[reader.file_at(until_s)].reader  # type: ignore[arg-type]
                undecodable = replay_file(monitor, holder, until=until_s, progress_stream=sys.stderr).undecodable
            click.echo(json.dumps(monitor.snapshot(), indent=1) if as_json else render_state(monitor))
            _finish_reading(reader, undecodable)
        return
    with _open_capture(files, salvage) as reader:
        until_s = _moment(until, reader, "--until")
        if live:
            result = _replay_live(monitor, reader, speed, until_s)
        else:
            result = replay_file(
                monitor,
                reader,
                speed=None if fast else speed,
                until=until_s,
                progress_stream=sys.stderr,
            )
        if as_json:
            click.echo(json.dumps(monitor.snapshot(), indent=1))
        else:
            click.echo(render_state(monitor))
        _finish_reading(reader, result.undecodable)


def _listen_address(listen: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    try:
        return parse_hostport(listen, default_port=default_port)
    except IcetoolsError as e:
        raise click.BadParameter(str(e).replace("scheduler address", "address"), param_hint="--listen") from None


def _announce(host: str, port: int, what: str) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    click.echo(f"icetools: {what} at http://{shown}:{port}/  (Ctrl-C to stop)", err=True)


def _serve_replay(files: tuple[Path, ...], speed: float, listen: str, web: dict[str, Any], salvage: bool) -> None:
    import asyncio

    from .server import ClusterServer, ReplayDriver, Status, run_until_stopped

    host, port = _listen_address(listen)
    monitor = Monitor()
    status = Status(mode="replay")

    async def main() -> None:
        # The scheduler's name on the page: the file (or folder) replayed.
        server = ClusterServer(monitor, status, name=files[0].name, **web)
        driver = ReplayDriver(files, status, server.hub, speed=speed, salvage=salvage)
        server.commands = driver.command
        await run_until_stopped(
            server, host, port, driver.run(), lambda p: _announce(host, p, f"replaying {printable(driver.name)}")
        )

    asyncio.run(main())


def _stand_in(
    files: tuple[Path, ...], speed: float, listen: str, start: float, loop: bool, netname: str | None, salvage: bool
) -> None:
    import asyncio

    from .defaults import SCHEDULER_PORT
    from .standin import StandIn

    host, port = _listen_address(listen, default_port=SCHEDULER_PORT)
    standin = StandIn(
        files, speed=speed, start=start, loop=loop, netname=netname, salvage=salvage,
        on_event=lambda line: click.echo(f"icetools: {printable(line)}", err=True),
    )

    async def main() -> None:
        import signal

        bound = await standin.start(host, port)
        click.echo(
            f"icetools: standing in for the scheduler of {printable(standin.name)} on {host}:{bound} "
            f"(protocol {standin.version}{', netname ' + printable(netname) if netname else ''}); "
            "Ctrl-C to stop",
            err=True,
        )
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await standin.close()

    asyncio.run(main())


def _replay_live(monitor: Monitor, reader: Recording, speed: float, until: float | None):  # type: ignore[no-untyped-def]
    """Replay in recorded time, redrawing the terminal at most four times a second."""
    next_draw = 0.0

    def draw(_record: object) -> None:
        nonlocal next_draw
        now = time.monotonic()
        if now >= next_draw:
            next_draw = now + 0.25
            click.echo("\x1b[H\x1b[2J" + render_state(monitor), nl=False)

    result = replay_records(monitor, paced(reader, speed), until=until, on_record=draw)
    click.echo("\x1b[H\x1b[2J", nl=False)
    return result


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option(
    "--gap",
    type=FiniteFloatRange(min=0, min_open=True),
    default=DEFAULT_GAP,
    show_default=True,
    metavar="SECONDS",
    help="A submitter's build ends after this long without a request or a job of it running.",
)
@_salvage_option
def stats(files: tuple[Path, ...], as_json: bool, gap: float, salvage: bool) -> None:
    """What happened in a recording, and why builds were slow: per host and for the cluster.

    Per host: jobs compiled for others, jobs submitted, local jobs, failures (jobs compiled
    there that failed, including those lost when the host went away), mean and 95th-percentile
    compile time, bytes in and out. For the cluster: remote, local and failed jobs, the peak of
    jobs finished in one second, the busiest hosts and the slowest files.

    Why slow: how long remote jobs waited for a compile host (per submitter), how much of the
    slots the hosts offered was used, how long jobs waited while a slot was free (the scheduler
    or environments held them back) or with none free (the cluster is too small), each build
    (jobs of a submitter up to a pause of --gap seconds) and the time lost to transfers per
    host. Definitions: docs/analysis.md. Over several files (a directory, a glob) it also lists
    the gaps between them, where nothing was recorded.

    Several files are read as one recording, in order of their start. What stats needs from
    each file is cached (beside the seek index): a file already seen is not read again, and
    files not seen yet are read in parallel, a process per core. See docs/analysis.md.

    \b
    Examples:
      icetools stats build.icecap
      icetools stats farm-*.icecap
      icetools stats /var/lib/icetools/ --json | jq .gaps
      icetools stats day.icecap --json | jq '.hosts[] | {name, failed}'
      icetools stats day.icecap --json --gap 60 | jq '.builds[] | {submitter, wall_s, parallelism}'
    """
    _text_output()
    # The files in time order, of one scheduler (their headers checked before any work);
    # then each file's summary, from the cache or read a process per core, merged in order.
    with _open_capture(files, salvage) as recording:
        paths = [f.path for f in recording.files]
        if len(paths) == 1:
            # One file: read it straight (a summary is only worth its cost, about a tenth more
            # time, where it will be merged; the figures are the same: tests/test_summary.py).
            report, result = analyse(recording, gap=gap, progress_stream=sys.stderr)
            click.echo(json.dumps(report, indent=1) if as_json else render_report(report, recording.header.start))
            _finish_reading(recording, result.undecodable)
            return
    from .summary import merged, report_from, summaries

    summary = merged(summaries(paths, gap, salvage, progress_stream=sys.stderr))
    report = report_from(summary)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(render_report(report, summary.start))
    for warning in summary.warnings:
        warn(warning)
    if summary.undecodable:
        warn(f"{summary.undecodable} frames of {summary.frames} could not be decoded (skipped)")


class _InOrder(click.Option):
    """A repeatable option whose values are also noted, with those of the other _InOrder
    options, in the order they were given (``-s A -n B -s C``: A, B, C), in the context's meta
    under ``icetools.in_order`` as (option name, value). Click keeps each option's values
    apart; the order is read from its parser, and where that is not possible (another click)
    the caller falls back to one option's values after the other's."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        table = {**getattr(parser, "_short_opt", {}), **getattr(parser, "_long_opt", {})}
        wrapped: set[int] = set()  # -s and --scheduler are one parser option
        for opt in self.opts:
            option = table.get(opt)
            process = getattr(option, "process", None)
            if process is None or id(option) in wrapped:
                continue
            wrapped.add(id(option))

            def noted(value: Any, state: Any, process: Any = process, name: str | None = self.name) -> None:
                ctx.meta.setdefault("icetools.in_order", []).append((name, value))
                process(value, state)

            option.process = noted


def _in_order(**given: tuple[str, ...]) -> list[tuple[str, str]]:
    """(option name, value) of the _InOrder options ``given`` in command-line order."""
    ctx = click.get_current_context(silent=True)
    noted = ctx.meta.get("icetools.in_order", []) if ctx is not None else []
    flat = [(name, value) for name, values in given.items() for value in values]
    if sorted(noted) == sorted(flat):
        return list(noted)
    return flat


@dataclasses.dataclass
class _Watched:
    """One scheduler a serve watches: its name (page, API, ``scheduler`` label), where it is
    now, how to find it again, and for ``-n`` its netname."""

    name: str
    first: tuple[str, int] | None  # None: its netname did not answer yet (several schedulers)
    locate: Callable[[], tuple[str, int]]
    netname: str | None = None


#: What a user may call a scheduler (-s NAME=HOST[:PORT]): it ends up in URLs, file names
#: (sanitised) and metric labels, so no spaces or control characters.
_NAME_RE = re.compile(r"[A-Za-z0-9._:@\[\]-]{1,64}")


def _watched_schedulers(schedulers: tuple[str, ...], netnames: tuple[str, ...]) -> list[_Watched]:
    """-s and -n in the order given (any mix), each located now so that a bad address fails
    before anything starts (and with one scheduler, an unanswered netname too)."""
    watched: list[_Watched] = []
    if not schedulers and not netnames:
        # One scheduler, by icecream's rules: the environment, else discovery of ICECREAM.
        first, locate = _scheduler_locator(None, None)
        netname = _looked_for(None, None)  # None when the environment gives the address
        return [_Watched(netname or _hostport_text(first), first, locate, netname)]
    several = len(schedulers) + len(netnames) > 1
    for option, value in _in_order(schedulers=schedulers, netnames=netnames):
        if option == "netnames":
            watched.append(_watch_netname(value, several))
            continue
        name, eq, address = value.partition("=")
        if not eq:
            name, address = "", value
        elif not _NAME_RE.fullmatch(name):
            raise click.BadParameter(
                f"{value!r}: a scheduler's name is 1 to 64 letters, digits or . _ : @ - (NAME=HOST[:PORT])",
                param_hint="-s",
            )
        if not address.strip():
            raise click.BadParameter(f"{value!r}: no scheduler address", param_hint="-s")
        first, locate = _scheduler_locator(address, None)
        watched.append(_Watched(name or _hostport_text(first), first, locate))
    seen: set[str] = set()
    for w in watched:
        if w.name.casefold() in seen:
            raise click.UsageError(
                f"two schedulers named {w.name!r}: name them apart with -s NAME=HOST[:PORT]"
            )
        seen.add(w.name.casefold())
    return watched


def _watch_netname(netname: str, several: bool) -> _Watched:
    """-n NETNAME. With one scheduler as record does it; with several, each -n is its own
    network (the environment's address must not stand in for it), and one that does not answer
    now is looked for again and again (its status says so) while the others are served."""
    from .errors import SchedulerNotFound

    if not netname.strip():
        raise click.BadParameter("an empty netname", param_hint="-n")
    if not several:
        first, locate = _scheduler_locator(None, netname)
        return _Watched(netname, first, locate, _looked_for(None, netname))
    found: tuple[str, int] | None
    try:
        found = locate_scheduler(None, netname, environ={})
    except SchedulerNotFound as e:
        click.echo(f"icetools: {printable(netname)}: {printable(str(e))}; looking again", err=True)
        found = None
    addresses = iter([found] if found else [])

    def locate_again() -> tuple[str, int]:
        return next(addresses, None) or locate_scheduler(None, netname, environ={})

    return _Watched(netname, found, locate_again, netname)


def _hostport_text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _recording_outputs(directory: str, names: list[str], rotating: bool) -> list[str]:
    """serve --record DIR with several schedulers: each scheduler's output in DIR, named after
    it (made safe for a file name) and the start time, e.g. ``ALPHA-20261201-093000.icecap``;
    with --rotate the strftime pattern of its series (``ALPHA-%Y%m%d-%H%M%S.icecap``)."""
    if is_pattern(directory):
        raise click.UsageError(f"--record {directory}: with several schedulers --record takes a directory, not a pattern")
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise IcetoolsError(f"--record {directory}: with several schedulers --record takes a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IcetoolsError(f"--record {directory}: cannot create the directory: {describe_os_error(e)}") from None
    # One time for all: their files start together (a rotating series names each part itself).
    stamp = "%Y%m%d-%H%M%S" if rotating else time.strftime("%Y%m%d-%H%M%S")
    outputs: list[str] = []
    used: set[str] = set()
    for name in names:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scheduler"
        base, k = safe, 1
        while safe.casefold() in used:  # "a:1" and "a_1" would share a name
            k += 1
            safe = f"{base}-{k}"
        used.add(safe.casefold())
        outputs.append(str(path / f"{safe}-{stamp}{FILE_SUFFIX}"))
    return outputs


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "-s",
    "--scheduler",
    "schedulers",
    cls=_InOrder,
    multiple=True,
    metavar="[NAME=]HOST[:PORT]",
    help="Scheduler to watch, port 8765 unless given; repeatable. Its name on the page, in the "
    "API and in the metrics' scheduler label is NAME, else HOST:PORT. (Default: "
    "$ICECC_SCHEDULER, $USE_SCHEDULER, else broadcast discovery.)",
)
@click.option(
    "-n",
    "--netname",
    "netnames",
    cls=_InOrder,
    multiple=True,
    metavar="NETNAME",
    help="Network name to discover a scheduler for by UDP broadcast (its name: NETNAME); repeatable.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="Where to listen (0.0.0.0:PORT shares the page with your network).",
)
@click.option(
    "--record",
    "record_to",
    type=OUTPUT,
    metavar="FILE|DIR",
    help="Also record everything the scheduler sends to FILE (with --rotate also a directory "
    "or a strftime pattern). With several schedulers DIR, a directory: one recording per "
    "scheduler in it, named NAME-YYYYmmdd-HHMMSS.icecap.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="With --record: replace FILE if it exists (once the scheduler has answered).",
)
@_rotation_options
@_protocol_option
@_web_options
def serve(
    schedulers: tuple[str, ...],
    netnames: tuple[str, ...],
    listen: str,
    record_to: str | None,
    overwrite: bool,
    rotate: Rotation | None,
    keep: int | None,
    protocol: int,
    allow_origins: tuple[str, ...],
    allow_hosts: tuple[str, ...],
    max_clients: int,
) -> None:
    """The live cluster in a browser: page, websocket, /api/state and /metrics on one port.

    It logs in to the scheduler as a monitor and reconnects with backoff when the scheduler
    restarts (the page says so meanwhile). With --record it keeps a capture at the same time;
    if the capture cannot be written (a full disk) the recording stops with an error in the log,
    the page's status and /metrics, and serving goes on.

    Several -s and -n watch several schedulers from one process, each with its own connection,
    backoff and status: the page switches between them and shows them side by side.

    \b
    Examples:
      icetools serve -s buildhost                     # then open http://127.0.0.1:8770/
      icetools serve -s buildhost --listen 0.0.0.0:8770 --record today.icecap
      icetools serve -s buildhost --record /var/lib/icetools/ --rotate 1d --keep 30
      icetools serve -s farm1=sched1 -s farm2=sched2:8766 -n LAB --record /var/lib/icetools/
    """
    import asyncio

    from .server import ClusterServer, LiveDriver, Status, run_until_stopped

    if overwrite and record_to is None:
        raise click.UsageError("--overwrite goes with --record")
    if (rotate is not None or keep is not None) and record_to is None:
        raise click.UsageError("--rotate and --keep go with --record")
    _check_recording_usage(record_to, rotate=rotate, keep=keep, overwrite=overwrite, option="--record")
    host, port = _listen_address(listen)
    watched = _watched_schedulers(schedulers, netnames)
    several = len(watched) > 1
    writers: list[CaptureWriter | RotatingWriter | None] = [None] * len(watched)
    if record_to is not None:
        if not several:
            writers[0] = _recording_sink(
                record_to, rotate=rotate, keep=keep, overwrite=overwrite, netname=watched[0].netname
            )
        else:
            outputs = _recording_outputs(record_to, [w.name for w in watched], rotate is not None)
            for i, (output, w) in enumerate(zip(outputs, watched)):
                try:
                    # (the header says which network a scheduler found by broadcast belongs to)
                    writers[i] = _recording_sink(output, rotate=rotate, keep=keep, overwrite=overwrite, netname=w.netname)
                except BaseException:
                    for writer in writers:
                        if writer is not None:
                            writer.close("error")  # nothing recorded yet: no file is left behind
                    raise

    def logger(name: str) -> Callable[[str], None]:
        prefix = f"{printable(name)}: " if several else ""
        return lambda line: click.echo(f"icetools: {prefix}{line}", err=True)

    async def main() -> None:
        t0 = time.monotonic()
        server: ClusterServer | None = None
        drivers: list[LiveDriver] = []
        for w, writer in zip(watched, writers):
            monitor = Monitor()
            status = Status(mode="live")
            if server is None:
                server = ClusterServer(
                    monitor, status, name=w.name,
                    allow_origins=allow_origins, allow_hosts=allow_hosts, max_clients=max_clients,
                )
            else:
                server.add_scheduler(w.name, monitor, status)
            drivers.append(
                LiveDriver(monitor, status, w.locate, offer=protocol, writer=writer, log=logger(w.name),
                           t0=t0, keep_trying=several)
            )
        assert server is not None

        def shown(w: _Watched) -> str:
            where = "not found yet" if w.first is None else _hostport_text(w.first)
            return printable(w.name) if w.name == where else f"{printable(w.name)} ({where})"

        async def drive() -> None:
            # Each on its own: one that fails to connect retries without disturbing the others.
            await asyncio.gather(*(d.run() for d in drivers))

        await run_until_stopped(
            server, host, port, drive(), lambda p: _announce(host, p, f"serving {', '.join(map(shown, watched))}")
        )

    try:
        asyncio.run(main())
    finally:
        for writer in writers:
            if writer is not None:
                writer.close("signal")  # a no-op if the recording already stopped on an error


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True, type=PATH)
@click.argument("target", type=PATH)
@click.option("--overwrite", is_flag=True, help="Replace TARGET (or with several sources, the files in it) if it exists.")
@_salvage_option
def anonymize(sources: tuple[Path, ...], target: Path, overwrite: bool, salvage: bool) -> None:
    """Rewrite host names, addresses and file paths so a recording can go into a bug report.

    The same host keeps the same pseudonym everywhere and paths keep their shape and
    extension (src/net/http.c becomes dir1/dir2/file1.c); times, job ids, exit codes,
    counters and loads are unchanged, so the copy replays to the same story.

    With several sources (files, a directory, a glob) TARGET is a directory: each file is
    written there under its own name, with one mapping for all of them (node3 is the same
    pseudonym in every file).

    \b
    Examples:
      icetools anonymize build.icecap build-anon.icecap && icetools dump build-anon.icecap
      icetools anonymize /var/lib/icetools/ anon/
    """
    from .anonymize import anonymize_many

    anon, undecodable, warning = anonymize_many(sources, target, overwrite=overwrite, salvage=salvage)
    if warning is not None:
        warn(warning)
    if undecodable:
        warn(f"{undecodable} frames could not be decoded and were copied unchanged: check them before sharing")
    click.echo(f"icetools: {printable(str(target))}: {anon.summary()}", err=True)


# ------------------------------------------------------------------------------------ jobs


def _time_window(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since > until:
        raise OptionError(f"--since {since:g} is after --until {until:g}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per job.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option(
    "--since",
    type=MOMENT,
    metavar="T",
    help="Only jobs requested at T or later: seconds since the recording started, or a date "
    "and time (2026-12-01 09:00, 2026-12-01T09:00:00+01:00; local time without an offset).",
)
@click.option("--until", type=MOMENT, metavar="T", help="Only jobs requested at T or earlier (as --since).")
@_salvage_option
def jobs(files: tuple[Path, ...], as_json: bool, as_csv: bool, since: Any, until: Any, salvage: bool) -> None:
    """One row per job of a recording, remote and local, in order of request.

    Each row says which file, who asked, who compiled it, how it ended (ok, failed, lost with
    its host, unfinished at the end of the recording), which failed remote compile a local job
    re-runs, when it was requested, started and ended (seconds since the recording started),
    how long it waited and ran, and what the compile host measured. The columns are defined
    in docs/analysis.md; --csv and --json load as they are into DuckDB, pandas or a
    spreadsheet. Rows are written as jobs end, so any length of recording streams through.

    \b
    Examples:
      icetools jobs build.icecap
      icetools jobs build.icecap --csv > jobs.csv
      icetools jobs day.icecap --json --since 3600 --until 7200 | jq 'select(.outcome != "ok")'
      icetools jobs /var/lib/icetools/ --csv --since '2026-12-01 09:00' --until '2026-12-01 17:00'
    """
    from .jobs import write_jobs

    if as_json and as_csv:
        raise OptionError("choose one of --json and --csv")
    form = "json" if as_json else "csv" if as_csv else "text"
    _text_output()
    with _open_capture(files, salvage) as reader:
        since_s, until_s = _moment(since, reader, "--since"), _moment(until, reader, "--until")
        _time_window(since_s, until_s)
        result = write_jobs(reader, sys.stdout, form, since=since_s, until=until_s, progress_stream=sys.stderr)
        _finish_reading(reader, result.undecodable)


# ----------------------------------------------------------------------------------- trace


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=PATH)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, allow_dash=True, readable=False),
    required=True,
    help="Trace file to write (replaced if it exists); - for standard output.",
)
@_salvage_option
def trace(files: tuple[Path, ...], output: Path, salvage: bool) -> None:
    """The recording as a Chrome trace, for ui.perfetto.dev or chrome://tracing.

    A process per host, a thread per slot, a slice per job (file, submitter, wait, exit
    code, bytes, user and sys time in its args), a "waiting" slice on the submitter with an
    arrow to the compile host, counters for the cluster's busy slots and waiting jobs and for
    each host's load. The mapping is in docs/analysis.md.

    \b
    Examples:
      icetools trace build.icecap -o build.trace.json    # then open it in ui.perfetto.dev
      icetools trace day.icecap -o - | gzip > day.trace.json.gz
      icetools trace 'farm-20261201-*.icecap' -o day.trace.json
    """
    from .trace import write_trace, write_trace_file

    _text_output()
    with _open_capture(files, salvage) as reader:
        if str(output) == "-":
            result = write_trace(reader, sys.stdout, progress_stream=sys.stderr)
        else:
            result = write_trace_file(reader, output, progress_stream=sys.stderr)
        _finish_reading(reader, result.undecodable)


# ---------------------------------------------------------------------------------- report


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="HTML file to write (replaced if it exists).",
)
def report(files: tuple[Path, ...], output: Path) -> None:
    """The recording as one self-contained HTML page of charts, to open in a browser.

    Busy and offered slots and waiting jobs over the recording, utilisation and failures per
    host, the distribution of waits for a compile host, the builds on a timeline, a zoomable
    timeline of jobs per host, the slowest compiles and the hosts that fail or lose jobs. The
    figures are those of `stats --json`; the definitions are in docs/analysis.md. Everything
    (d3 included) is inside the file: it opens from disk and can be mailed.

    \b
    Examples:
      icetools report build.icecap -o build.html
      icetools report day.icecap -o /srv/www/day.html
      icetools report /var/lib/icetools/ -o farm.html      # every file there, as one
    """
    from .report import write_report

    with _open_capture(files) as reader:
        result = write_report(reader, output, reader.name(), progress_stream=sys.stderr)
        _finish_reading(reader, result.undecodable)


def main() -> None:
    """Console entry point: run the CLI, turning icetools' errors into one line and exit 1."""
    try:
        # standalone_mode=False: click returns (or raises) instead of exiting, so that our own
        # errors can be shown as one line here.
        code = cli.main(standalone_mode=False)
    except IcetoolsError as e:
        # Escaped: the message may quote a file name or text from a capture or the network.
        click.echo(f"icetools: error: {printable(str(e))}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("icetools: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except (BrokenPipeError, _ReaderGone):
        # `icetools dump x | head`: the reader went away; that is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as e:
        # Every file icetools opens itself fails as an IcetoolsError naming it: what is left is
        # the output it was handed (`icetools jobs x > /dev/full`, a full disk under a redirect).
        where = f"cannot write {e.filename}" if e.filename else "cannot write the output"
        click.echo(f"icetools: error: {where}: {e.strerror or e}", err=True)
        with contextlib.suppress(OSError):  # (so the interpreter's last flush fails no more)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------------------------- discover


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "-n",
    "--netname",
    metavar="NETNAME",
    help="Only schedulers of this network name (compared as icecream does: ASCII case folded). "
    "Default: every scheduler that answers.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects instead of the table.")
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, max=600, min_open=True),
    default=DISCOVERY_WINDOW,
    show_default=True,
    metavar="S",
    help="Seconds to collect answers (every scheduler answers at once; slow links need more).",
)
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_SCHEDULER_PORT,
    show_default=True,
    metavar="PORT",
    help="UDP port to broadcast to: the schedulers' -p.",
)
def discover(netname: str | None, as_json: bool, timeout: float, port: int) -> None:
    """Every scheduler that answers icecream's discovery broadcast.

    One request goes to the broadcast address of each network interface (as icecc and iceccd
    send it; loopback and point-to-point links excluded). Every scheduler answers, whatever
    its network name, with its address, port, name, protocol version and start time. Exit
    status 1 if none (of NETNAME) answers. Datagrams that are not a scheduler's answer are
    ignored and counted on stderr.

    \b
    Examples:
      icetools discover
      icetools discover -n ICECREAM --timeout 5
      icetools discover --json | jq -r '.[] | "\\(.address):\\(.port)"'
    """
    from .discovery import by_network, collect, not_answers, nothing_answered, render_table, reply_json, same_netname

    found = collect(port=port, window=timeout)
    replies = by_network(found.replies)
    if netname is not None:
        others = sorted({r.netname for r in replies if not same_netname(r.netname, netname)})
        replies = [r for r in replies if same_netname(r.netname, netname)]
    if not replies:
        hint = f" (schedulers of other networks did: {', '.join(map(repr, others))})" if netname is not None and others else ""
        raise nothing_answered(netname, timeout, found.ignored, hint)
    if found.ignored:
        warn(f"ignored {not_answers(found.ignored)}")
    now = time.time()
    _text_output()
    if as_json:
        click.echo(json.dumps([reply_json(r, now) for r in replies], indent=1))
    else:
        click.echo(render_table(replies, now))
