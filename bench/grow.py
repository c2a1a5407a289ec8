"""Grow a real recording into a long one: the real mix of messages, with distinct jobs.

The source recording's frames (after its first connect) are repeated as cycles. Each cycle shifts
every job id past the previous cycle's largest, and its times past the previous cycle's end, so
the result reads like a cluster that kept building for hours. Host ids and names stay those of
the real cluster; frames are re-encoded with icetools' own encoder at the source's protocol.

    python bench/grow.py recordings/demo.icecap /tmp/5m.icecap --frames 5000000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icetools import messages as m  # noqa: E402
from icetools.capture import CaptureReader, CaptureWriter, FrameRecord  # noqa: E402

JOB_ID_FIELD = {
    m.MonGetCS: "job_id",
    m.MonJobBegin: "job_id",
    m.MonJobDone: "job_id",
    m.MonLocalJobBegin: "job_id",
    m.JobLocalDone: "job_id",
}
#: Frames are written in batches of this many per write, as a busy recorder would.
BATCH = 64


def grow(source: Path, output: Path, frames: int, *, overwrite: bool = True) -> int:
    """Write ``frames`` frames grown from ``source`` to ``output``; returns the frames written."""
    with CaptureReader(source) as reader:
        header = reader.header
        template = [
            (r.t, m.decode(r.data, r.protocol)) for r in reader if isinstance(r, FrameRecord)
        ]
    protocol = header.protocol
    if not template:
        raise SystemExit(f"{source} has no frames to grow from")
    max_job = max(
        (getattr(msg, JOB_ID_FIELD[type(msg)]) for _, msg in template if type(msg) in JOB_ID_FIELD),
        default=0,
    )
    span = template[-1][0] - template[0][0] + 1.0
    t0 = template[0][0]
    written = 0
    cycle = 0
    with CaptureWriter(output, overwrite=overwrite) as writer:
        writer.connected(protocol, header.peer_version, header.offered, header.scheduler)
        batch: list[bytes] = []
        batch_t = 0.0
        while written < frames:
            offset = cycle * max_job
            shift = cycle * span
            for t, msg in template:
                if written >= frames:
                    break
                field = JOB_ID_FIELD.get(type(msg))
                if field is not None and offset:
                    msg = msg.replace(**{field: getattr(msg, field) + offset})
                batch.append(m.encode(msg, protocol))
                batch_t = t - t0 + shift
                written += 1
                if len(batch) >= BATCH:
                    writer.frames(batch, t=batch_t)
                    batch = []
            cycle += 1
        writer.frames(batch, t=batch_t)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--frames", type=int, default=1_000_000)
    args = parser.parse_args()
    n = grow(args.source, args.output, args.frames)
    print(f"{args.output}: {n} frames, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
