"""Files that icetools writes as a whole (a trace, a report): replaced atomically.

The output goes to a temporary file beside the target, renamed over it only once complete, so
a damaged capture or a failure half-way leaves the previous file as it was and no partial one.
A target that is a device or a pipe (``-o /dev/null``, a FIFO) is written into, never replaced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError


@contextlib.contextmanager
def replaced(target: Path, *, binary: bool = False, errors: str = "strict") -> Iterator[IO[Any]]:
    """A stream for the whole new content of ``target`` (UTF-8 text unless ``binary``), which
    replaces ``target`` when the block ends without an exception. Problems with the file are
    :class:`OutputError`."""
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
