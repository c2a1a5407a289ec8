"""A progress bar on stderr for long reads of a capture: only on a terminal, only after a second."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from .capture import CaptureReader
from .recordings import Recording

T = TypeVar("T")
#: Nothing is shown for reads that finish sooner than this many seconds
#: ($ICETOOLS_PROGRESS_AFTER overrides it: tests use 0 to see a bar on any file).
SHOW_AFTER = 1.0
REFRESH = 0.1
WIDTH = 30


class Progress:
    """Shows how far into its file a capture reader is: wrap an iteration over the reader, or
    call :meth:`update` between steps of a loop that pumps it."""

    def __init__(self, reader: CaptureReader | Recording, stream: TextIO) -> None:
        self.reader = reader
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self.shown = False
        self.show_after = _show_after()
        self._next_draw = self.started + self.show_after
        total = getattr(reader, "total_size", None)  # a Recording of several files
        if total is not None:
            self.total = total
        else:
            try:
                self.total = os.path.getsize(reader.path)
            except OSError:
                self.total = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        if not self.enabled or not self.total:
            yield from items
            return
        clock = time.monotonic
        next_check = self.started + self.show_after
        n = 0
        for item in items:
            yield item
            n += 1
            if n & 1023 == 0 and clock() >= next_check:
                next_check = clock() + REFRESH
                self._draw(self.reader.frames)

    def update(self) -> None:
        """For loops that read in steps rather than record by record (``CaptureReader.pump``):
        draw if it is time to."""
        now = time.monotonic()
        if self.enabled and self.total and now >= self._next_draw:
            self._next_draw = now + REFRESH
            self._draw(self.reader.frames)

    def _draw(self, frames: int) -> None:
        done = min(self.reader.position / self.total, 1.0) if self.total else 0.0
        filled = int(done * WIDTH)
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"\r\x1b[2K[{'#' * filled}{'.' * (WIDTH - filled)}] {done * 100:5.1f}%  "
            f"{frames} frames, {elapsed:.0f} s"
        )
        self.stream.flush()
        self.shown = True


def _show_after() -> float:
    try:
        return float(os.environ.get("ICETOOLS_PROGRESS_AFTER", SHOW_AFTER))
    except ValueError:
        return SHOW_AFTER
