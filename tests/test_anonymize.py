"""icetools anonymize on real recordings: nothing identifying left, the story unchanged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .golden import stats_report

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def icetools(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "icetools", *args], capture_output=True, text=True, timeout=60)


def dump(path: Path) -> list[dict]:
    result = icetools("dump", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("name", ["demo.icecap", "failures-local.icecap", "daemon-dies.icecap", "protocol-21.icecap"])
def test_anonymized_recording_tells_the_same_story(tmp_path: Path, name: str) -> None:
    source = RECORDINGS / name
    target = tmp_path / "anon.icecap"
    result = icetools("anonymize", str(source), str(target))
    assert result.returncode == 0, result.stderr
    assert re.search(r"replaced \d+ host names, \d+ addresses, \d+ file names", result.stderr)
    before, after = dump(source), dump(target)
    assert len(before) == len(after)
    # Everything that names something in the anonymized dump:
    named = [x[k] for x in after for k in ("filename", "file", "scheduler") if k in x]
    named += [x["stats"].get(k, "") for x in after if x["type"] == "MON_STATS" for k in ("Name", "IP")]
    text = "\n".join(named)
    original_names = {x["stats"]["Name"] for x in before if x["type"] == "MON_STATS" and "Name" in x["stats"]}
    original_ips = {x["stats"]["IP"] for x in before if x["type"] == "MON_STATS" and "IP" in x["stats"]}
    components = {
        part for x in before for key in ("filename", "file") if key in x
        for part in re.split(r"[/.]", x[key]) if len(part) > 2 and part not in ("icecap",)
    }
    for secret in original_names | original_ips | components:
        if secret in ("o", "c", "x86_64"):
            continue
        assert secret not in text, f"{secret!r} survived anonymization"
    for a, b in zip(before, after):
        assert a["type"] == b["type"] and a["t"] == b["t"]
        for key in ("job_id", "exitcode", "real_msec", "in_uncompressed", "host_id", "client_id", "stime"):
            assert a.get(key) == b.get(key), key
        for key in ("filename", "file"):
            if key in a:
                # Same shape: as many components, same extension.
                assert a[key].count("/") == b[key].count("/")
                assert Path(a[key]).suffix == Path(b[key]).suffix
        if a["type"] == "MON_STATS":
            assert set(a["stats"]) == set(b["stats"])
            assert {k: v for k, v in a["stats"].items() if k not in ("Name", "IP")} == {
                k: v for k, v in b["stats"].items() if k not in ("Name", "IP")
            }
    # Consistent pseudonyms: the cluster's numbers are the same, only the names differ.
    strip = lambda report: [{k: v for k, v in h.items() if k != "name"} for h in report["hosts"]]  # noqa: E731
    original, anonymous = stats_report(source), stats_report(target)
    assert strip(original) == strip(anonymous)
    assert original["jobs"] == anonymous["jobs"]  # reruns still match their failed compiles


def test_anonymize_refuses_to_overwrite_and_reports_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "taken.icecap"
    target.write_bytes(b"keep me")
    result = icetools("anonymize", str(RECORDINGS / "build.icecap"), str(target))
    assert result.returncode == 1 and "already exists" in result.stderr and target.read_bytes() == b"keep me"
    missing = icetools("anonymize", str(tmp_path / "nope.icecap"), str(tmp_path / "out.icecap"))
    assert missing.returncode == 1 and missing.stderr.strip().endswith("no such file")
    assert not (tmp_path / "out.icecap").exists()
