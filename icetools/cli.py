"""The ``icetools`` command line.

Errors the user can cause are :class:`~icetools.errors.IcetoolsError`; :func:`main` turns them
into one line on stderr and exit status 1. Nothing else should ever reach the user as a
traceback.
"""

from __future__ import annotations

import json
import math
import os
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
from .errors import IcetoolsError, OptionError
from .messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
from .monitor import DEFAULT_MAX_FINISHED, Monitor
from .progress import Progress
from .render import TYPE_NAMES, Dumper, printable
from .replay import paced, render_state, replay_file
from .replay import replay as replay_records
from .rotation import Rotation, RotatingWriter, is_pattern, output_pattern, parse_rotation
from .index import open_at
from .stats import DEFAULT_GAP, render_report

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


@click.group(context_settings=CONTEXT_SETTINGS)
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


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=PATH)
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
def dump(file: Path, as_json: bool, follow: bool, types: tuple[str, ...], salvage: bool) -> None:
    """Decode a capture: one line per message, for people or (--json) for machines.

    Each JSON line has "t" (seconds since the recording started), "type" (icecream's name of
    the message) and the message's fields under icecream's names. Connection events have
    lines of their own. A frame that cannot be decoded is shown as UNDECODABLE with its bytes,
    counted, and dump goes on.

    \b
    Examples:
      icetools dump build.icecap
      icetools dump build.icecap --json --type MON_JOB_DONE | jq .exitcode
      icetools dump --follow live.icecap     # while icetools record writes it
    """
    dumper = Dumper(as_json=as_json, wanted=_type_filter(types))
    _text_output()
    with CaptureReader(file, follow=follow, salvage=salvage) as reader:
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


def _open_capture(file: Path | None, salvage: bool = False) -> CaptureReader:
    return CaptureReader(DEMO if file is None else file, salvage=salvage)


def _check_capture(file: Path, salvage: bool) -> None:
    """Read a whole capture once before serving it, so that a capture that cannot be read is
    an error before anything listens (and its warnings are said once, at the start)."""
    with CaptureReader(file, salvage=salvage) as reader:
        for _ in reader:
            pass
        _finish_reading(reader, 0)


def _finish_reading(reader: CaptureReader, undecodable: int, what: str = "skipped") -> None:
    if (warning := reader.warning()) is not None:
        warn(warning)
    if undecodable:
        warn(f"{undecodable} frames of {reader.frames} could not be decoded ({what})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=PATH, required=False)
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
    "--until", type=FiniteFloatRange(min=0), metavar="T", help="Stop at T seconds into the recording."
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
    type=FiniteFloatRange(min=0),
    default=0.0,
    metavar="T",
    help="With --as-scheduler: begin at T seconds (monitors first get the hosts as they were).",
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
    file: Path | None,
    speed: float,
    fast: bool,
    until: float | None,
    as_json: bool,
    serve: bool,
    as_scheduler: bool,
    listen: str | None,
    start: float,
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

    \b
    Examples:
      icetools replay --fast                       # the demo, the state at its end
      icetools replay build.icecap --until 120     # the cluster two minutes in
      icetools replay build.icecap --speed 10      # ten times faster than it happened
      icetools replay day.icecap --fast --json | jq .totals
      icetools replay --serve                      # the demo in your browser
      icetools replay build.icecap --as-scheduler  # then: icemon -s 127.0.0.1
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
    if serve or as_scheduler:
        path = DEMO if file is None else file
        _check_capture(path, salvage)
        if serve:
            web = {"allow_origins": allow_origins, "allow_hosts": allow_hosts, "max_clients": max_clients}
            _serve_replay(path, speed, listen or DEFAULT_LISTEN, web, salvage)
        else:
            _stand_in(path, speed, listen or STANDIN_LISTEN, start, loop, netname, salvage)
        return
    monitor = Monitor(max_finished=max_finished)
    live = not fast and not as_json and sys.stdout.isatty()
    if until is not None and not live:
        if max_finished == DEFAULT_MAX_FINISHED and not salvage:
            # A moment of the recording: from the seek index (built on the first such call).
            with _open_capture(file) as reader:
                monitor, _ = open_at(reader, until)
                click.echo(json.dumps(monitor.snapshot(), indent=1) if as_json else render_state(monitor))
                _finish_reading(reader, 0)
            return
        fast = True  # the same moment, replayed from the start (a salvaging read counts damage)
    with _open_capture(file, salvage) as reader:
        if live:
            result = _replay_live(monitor, reader, speed, until)
        else:
            result = replay_file(
                monitor,
                reader,
                speed=None if fast else speed,
                until=until,
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


def _serve_replay(file: Path, speed: float, listen: str, web: dict[str, Any], salvage: bool) -> None:
    import asyncio

    from .server import ClusterServer, ReplayDriver, Status, run_until_stopped

    host, port = _listen_address(listen)
    monitor = Monitor()
    status = Status(mode="replay")

    async def main() -> None:
        server = ClusterServer(monitor, status, **web)
        driver = ReplayDriver(file, status, server.hub, speed=speed, salvage=salvage)
        server.commands = driver.command
        await run_until_stopped(
            server, host, port, driver.run(), lambda p: _announce(host, p, f"replaying {printable(file.name)}")
        )

    asyncio.run(main())


def _stand_in(
    file: Path, speed: float, listen: str, start: float, loop: bool, netname: str | None, salvage: bool
) -> None:
    import asyncio

    from .defaults import SCHEDULER_PORT
    from .standin import StandIn

    host, port = _listen_address(listen, default_port=SCHEDULER_PORT)
    standin = StandIn(
        file, speed=speed, start=start, loop=loop, netname=netname, salvage=salvage,
        on_event=lambda line: click.echo(f"icetools: {printable(line)}", err=True),
    )

    async def main() -> None:
        import signal

        bound = await standin.start(host, port)
        click.echo(
            f"icetools: standing in for the scheduler of {printable(file.name)} on {host}:{bound} "
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


def _replay_live(monitor: Monitor, reader: CaptureReader, speed: float, until: float | None):  # type: ignore[no-untyped-def]
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
@click.argument("files", type=PATH, nargs=-1, required=True)
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
    host. Definitions: docs/analysis.md.

    Several files are read as one recording, in order of their start. What stats needs from
    each file is cached (beside the seek index): a file already seen is not read again, and
    files not seen yet are read in parallel, a process per core. See docs/analysis.md.

    \b
    Examples:
      icetools stats build.icecap
      icetools stats farm-*.icecap
      icetools stats day.icecap --json | jq '.hosts[] | {name, failed}'
      icetools stats day.icecap --json --gap 60 | jq '.builds[] | {submitter, wall_s, parallelism}'
    """
    from .summary import merged, report_from, summaries

    _text_output()
    paths = _in_time_order(files, salvage)
    summary = merged(summaries(paths, gap, salvage, progress_stream=sys.stderr))
    report = report_from(summary)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(render_report(report))
    for warning in summary.warnings:
        warn(warning)
    if summary.undecodable:
        warn(f"{summary.undecodable} frames of {summary.frames} could not be decoded (skipped)")


def _in_time_order(files: tuple[Path, ...], salvage: bool) -> list[Path]:
    """The captures ordered by their header's start (a file given twice counts once); files of
    different schedulers are refused. (Every header is read first: a bad file is the error to
    show before any work.)"""
    seen: dict[str, tuple[float, int, Path, str, str | None]] = {}
    for file in files:
        with CaptureReader(file, salvage=salvage) as reader:
            header = reader.header
            seen.setdefault(
                os.path.realpath(file),
                (header.start, header.part or 0, file, header.scheduler, header.netname),
            )
    ordered = sorted(seen.values(), key=lambda x: (x[0], x[1]))
    first = ordered[0]
    for other in ordered[1:]:
        if other[3] != first[3] or (first[4] is not None and other[4] is not None and other[4] != first[4]):
            raise OptionError(
                f"files from different schedulers: {first[2]} ({first[3]}), {other[2]} ({other[3]})"
            )
    return [x[2] for x in ordered]


@cli.command(context_settings=CONTEXT_SETTINGS)
@_scheduler_options
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
    metavar="FILE",
    help="Also record everything the scheduler sends to FILE (with --rotate also a directory "
    "or a strftime pattern).",
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
    scheduler: str | None,
    netname: str | None,
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

    \b
    Examples:
      icetools serve -s buildhost                     # then open http://127.0.0.1:8770/
      icetools serve -s buildhost --listen 0.0.0.0:8770 --record today.icecap
      icetools serve -s buildhost --record /var/lib/icetools/ --rotate 1d --keep 30
    """
    import asyncio

    from .server import ClusterServer, LiveDriver, Status, run_until_stopped

    if overwrite and record_to is None:
        raise click.UsageError("--overwrite goes with --record")
    if (rotate is not None or keep is not None) and record_to is None:
        raise click.UsageError("--rotate and --keep go with --record")
    _check_recording_usage(record_to, rotate=rotate, keep=keep, overwrite=overwrite, option="--record")
    host, port = _listen_address(listen)
    first, locate = _scheduler_locator(scheduler, netname)
    writer = None
    if record_to is not None:
        writer = _recording_sink(
            record_to, rotate=rotate, keep=keep, overwrite=overwrite, netname=_looked_for(scheduler, netname)
        )
    monitor = Monitor()
    status = Status(mode="live")

    def log(line: str) -> None:
        click.echo(f"icetools: {line}", err=True)

    async def main() -> None:
        server = ClusterServer(
            monitor, status, allow_origins=allow_origins, allow_hosts=allow_hosts, max_clients=max_clients
        )
        driver = LiveDriver(monitor, status, locate, offer=protocol, writer=writer, log=log)
        await run_until_stopped(
            server, host, port, driver.run(), lambda p: _announce(host, p, f"serving {first[0]}:{first[1]}")
        )

    try:
        asyncio.run(main())
    finally:
        if writer is not None:
            writer.close("signal")  # a no-op if the recording already stopped on an error


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=PATH)
@click.argument("target", type=PATH)
@click.option("--overwrite", is_flag=True, help="Replace TARGET if it exists.")
@_salvage_option
def anonymize(source: Path, target: Path, overwrite: bool, salvage: bool) -> None:
    """Rewrite host names, addresses and file paths so a recording can go into a bug report.

    The same host keeps the same pseudonym everywhere and paths keep their shape and
    extension (src/net/http.c becomes dir1/dir2/file1.c); times, job ids, exit codes,
    counters and loads are unchanged, so the copy replays to the same story.

    \b
    Example:
      icetools anonymize build.icecap build-anon.icecap && icetools dump build-anon.icecap
    """
    from .anonymize import anonymize as run_anonymize

    anon, undecodable, warning = run_anonymize(source, target, overwrite=overwrite, salvage=salvage)
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
@click.argument("file", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per job.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header row.")
@click.option(
    "--since", type=FiniteFloatRange(min=0), metavar="T", help="Only jobs requested at T seconds or later."
)
@click.option(
    "--until", type=FiniteFloatRange(min=0), metavar="T", help="Only jobs requested at T seconds or earlier."
)
@_salvage_option
def jobs(file: Path, as_json: bool, as_csv: bool, since: float | None, until: float | None, salvage: bool) -> None:
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
    """
    from .jobs import write_jobs

    if as_json and as_csv:
        raise OptionError("choose one of --json and --csv")
    _time_window(since, until)
    form = "json" if as_json else "csv" if as_csv else "text"
    _text_output()
    with _open_capture(file, salvage) as reader:
        _, result = write_jobs(reader, sys.stdout, form, since=since, until=until, progress_stream=sys.stderr)
        _finish_reading(reader, result.undecodable)


# ----------------------------------------------------------------------------------- trace


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=PATH)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, allow_dash=True, readable=False),
    required=True,
    help="Trace file to write (replaced if it exists); - for standard output.",
)
@_salvage_option
def trace(file: Path, output: Path, salvage: bool) -> None:
    """The recording as a Chrome trace, for ui.perfetto.dev or chrome://tracing.

    A process per host, a thread per slot, a slice per job (file, submitter, wait, exit
    code, bytes, user and sys time in its args), a "waiting" slice on the submitter with an
    arrow to the compile host, counters for the cluster's busy slots and waiting jobs and for
    each host's load. The mapping is in docs/analysis.md.

    \b
    Examples:
      icetools trace build.icecap -o build.trace.json    # then open it in ui.perfetto.dev
      icetools trace day.icecap -o - | gzip > day.trace.json.gz
    """
    from .trace import write_trace, write_trace_file

    _text_output()
    with _open_capture(file, salvage) as reader:
        if str(output) == "-":
            _, result = write_trace(reader, sys.stdout, progress_stream=sys.stderr)
        else:
            _, result = write_trace_file(reader, output, progress_stream=sys.stderr)
        _finish_reading(reader, result.undecodable)


# ---------------------------------------------------------------------------------- report


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="HTML file to write (replaced if it exists).",
)
def report(file: Path, output: Path) -> None:
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
    """
    from .report import write_report

    with _open_capture(file) as reader:
        result = write_report(reader, output, file.name, progress_stream=sys.stderr)
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
    except BrokenPipeError:
        # `icetools dump x | head`: the reader went away; that is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
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
