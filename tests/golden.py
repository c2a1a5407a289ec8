"""Golden files: the ``dump --json`` lines of a recording, exactly as ``icetools dump`` prints them.

Recordings are fixed files, so their decoding is deterministic to the last digit: nothing needs
normalising, and any change in how a frame decodes shows up as a golden mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator

from icetools.capture import CaptureReader
from icetools.render import decode_records, json_line


def golden_lines(reader: CaptureReader) -> Iterator[str]:
    for item in decode_records(reader):
        yield json_line(item)
