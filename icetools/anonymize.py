"""``icetools anonymize``: a recording safe to attach to a bug report.

Host names, IP addresses and file paths are replaced consistently (the same host keeps the same
pseudonym everywhere, every path component keeps one pseudonym, paths keep their shape and
extensions); times, ids, exit codes, counters and load figures stay exactly as recorded, so the
anonymized recording replays to the same cluster story.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import tempfile
from pathlib import Path

from . import messages as m
from .capture import (
    CaptureReader,
    CaptureWriter,
    CarriedRecord,
    ConnectRecord,
    DisconnectRecord,
    EndRecord,
    FrameRecord,
    file_kind,
)
from .errors import CaptureError, ProtocolError

#: Path components that say nothing about anybody and keep their meaning.
KEEP_COMPONENTS = {"", ".", ".."}


@dataclasses.dataclass
class Anonymizer:
    hosts: dict[str, str] = dataclasses.field(default_factory=dict)
    addresses: dict[str, str] = dataclasses.field(default_factory=dict)
    components: dict[str, str] = dataclasses.field(default_factory=dict)
    paths: set[str] = dataclasses.field(default_factory=set)

    def host(self, name: str) -> str:
        if not name:
            return name
        if _is_address(name):  # a daemon without a node name is known by its address
            return self.address(name)
        if name not in self.hosts:
            self.hosts[name] = f"host{len(self.hosts) + 1:02d}"
        return self.hosts[name]

    def address(self, text: str) -> str:
        if not text or not _is_address(text):
            return self.host(text) if text else text
        if text not in self.addresses:
            n = len(self.addresses) + 1
            if ipaddress.ip_address(text).version == 6:
                self.addresses[text] = f"fd00::{n:x}"
            else:
                # 10.x.y.z from the documentation-free private range, 1-based and unique.
                self.addresses[text] = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        return self.addresses[text]

    def path(self, text: str) -> str:
        if not text:
            return text
        parts = text.split("/")
        out = []
        for i, part in enumerate(parts):
            if part in KEEP_COMPONENTS:
                out.append(part)
                continue
            last = i == len(parts) - 1
            stem, ext = os.path.splitext(part) if last else (part, "")
            key = ("f:" if last else "d:") + stem
            if key not in self.components:
                count = sum(1 for k in self.components if k[0] == key[0]) + 1
                self.components[key] = f"{'file' if last else 'dir'}{count}"
            out.append(self.components[key] + ext)
        result = "/".join(out)
        self.paths.add(result)
        return result

    def stats(self, text: str) -> str:
        stats = m.parse_statmsg(text)
        if "Name" in stats:
            stats["Name"] = self.host(stats["Name"])
        if "IP" in stats:
            stats["IP"] = self.address(stats["IP"])
        return m.format_statmsg(stats)

    def scheduler(self, text: str) -> str:
        host, sep, port = text.rpartition(":")
        if not sep:
            return self.host(text)
        return f"{self.address(host.strip('[]'))}:{port}"

    def message(self, msg: m.Message) -> m.Message:
        if isinstance(msg, m.MonStats):
            return msg.replace(statmsg=self.stats(msg.statmsg))
        if isinstance(msg, m.MonGetCS):
            return msg.replace(filename=self.path(msg.filename), preferred_host=self.host(msg.preferred_host))
        if isinstance(msg, m.MonLocalJobBegin):
            return msg.replace(file=self.path(msg.file))
        return msg

    def text(self, text: str) -> str:
        """Free text (a disconnect reason): every known name and address in it replaced."""
        for original, pseudonym in sorted(
            [*self.hosts.items(), *self.addresses.items()], key=lambda kv: -len(kv[0])
        ):
            text = text.replace(original, pseudonym)
        return text

    def summary(self) -> str:
        files = sum(1 for k in self.components if k.startswith("f:"))
        dirs = len(self.components) - files
        return (
            f"replaced {len(self.hosts)} host names, {len(self.addresses)} addresses, "
            f"{files} file names and {dirs} folder names (in {len(self.paths)} paths); "
            "times, ids, exit codes and counters are unchanged"
        )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def anonymize(
    source: Path, target: Path, *, overwrite: bool = False, salvage: bool = False
) -> tuple[Anonymizer, int, str | None]:
    """Write an anonymized copy of ``source``; returns the mapping, the frames that could not
    be decoded (copied unchanged) and the source's warning (torn tail, damage skipped), if any.

    The copy is written to a temporary file beside ``target`` and renamed over it only when
    it is complete: whatever goes wrong, ``target`` is either untouched or the whole copy.
    """
    anon = Anonymizer()
    undecodable = 0
    with CaptureReader(source, salvage=salvage) as reader:
        header = reader.header
        _check_target(target, overwrite)
        try:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as e:
            raise CaptureError(f"cannot create {target}: {e.strerror}") from None
        os.close(fd)
        tmp = Path(name)
        try:
            # The copy stays in its series (a part of a rotating recording stays one).
            writer = CaptureWriter(
                tmp, overwrite=True, series=header.series, part=header.part or 0, netname=header.netname
            )
            writer.start = header.start
            try:
                for record in reader:
                    kind = type(record)
                    if kind is FrameRecord or kind is CarriedRecord:
                        try:
                            msg = m.decode(record.data, record.protocol)
                            frame = m.encode(anon.message(msg), record.protocol)
                        except ProtocolError:
                            if kind is FrameRecord:  # (the count is of the file's frames)
                                undecodable += 1
                            frame = record.data  # not understood: kept as is (and reported)
                        if writer.header is None:
                            break  # frames before any connect record: refused below
                        if kind is CarriedRecord:
                            writer.carried([(record.original, frame)])
                        else:
                            writer.frames([frame], t=record.t)
                    elif isinstance(record, ConnectRecord):
                        writer.connected(
                            record.protocol, record.peer_version, record.offered,
                            anon.scheduler(record.scheduler), t=record.t, rotated=record.rotated,
                        )
                    elif isinstance(record, DisconnectRecord):
                        writer.disconnected(anon.text(record.reason), t=record.t)
                    elif isinstance(record, EndRecord):
                        writer.close(record.reason, t=record.t)
            finally:
                # A source without an end record (its recorder was killed) stays without one.
                writer.close("closed", end_record=False)
            if writer.header is None:
                # The writer writes the header with the first connect record: without one there
                # is no capture to write (and an empty file would only be rejected by dump).
                raise CaptureError(
                    f"{source} has no complete connect record before its first frame or its end: "
                    "nothing to anonymize"
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return anon, undecodable, reader.warning()


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that exists (unless ``overwrite``) or is not a regular file, before
    anything is written."""
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise CaptureError(f"cannot create {target}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CaptureError(f"cannot create {target}: it is {file_kind(mode)}")
    if not overwrite:
        raise CaptureError(f"{target} already exists (use --overwrite to replace it)")
