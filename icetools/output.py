"""Files that icetools writes as a whole (a trace, a report): replaced atomically.

The output goes to a temporary file beside the target, renamed over it only once complete, so
a damaged capture or a failure half-way leaves the previous file as it was and no partial one.
A target that is a device or a pipe (``-o /dev/null``, a FIFO) is written into, never replaced.
SIGTERM while it is written ends the command as an exception would (see :func:`terminated_as_exit`),
so it leaves no temporary file either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` (128 + the signal, the status a
    shell shows for it) instead of ending the process where it stands, so the cleanup of the
    blocks around (a temporary file removed, a helper process stopped) runs as on an error. Only
    in the main thread and over the default action (a handler someone set stays)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def exit_on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def replaced(target: Path, *, binary: bool = False, errors: str = "strict") -> Iterator[IO[Any]]:
    """A stream for the whole new content of ``target`` (UTF-8 text unless ``binary``), which
    replaces ``target`` when the block ends without an exception. Problems with the file are
    :class:`OutputError`."""
    with terminated_as_exit():
        with _replaced(target, binary=binary, errors=errors) as out:
            yield out


@contextlib.contextmanager
def _replaced(target: Path, *, binary: bool, errors: str) -> Iterator[IO[Any]]:
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"{target} is a directory")
    mode = "wb" if binary else "w"
    encoding = None if binary else "utf-8"
    if target.exists() and not target.is_file():
        try:
            with open(target, mode, encoding=encoding, errors=None if binary else errors) as out:
                yield out
        except OSError as e:
            raise OutputError(f"cannot write {target}: {e.strerror}") from None
        return
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or Path("."))
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror}") from None
    try:
        with os.fdopen(fd, mode, encoding=encoding, errors=None if binary else errors) as out:
            yield out
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp, 0o666 & ~mask)
        os.replace(temp, target)
    except OSError as e:
        Path(temp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {e.strerror}") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
