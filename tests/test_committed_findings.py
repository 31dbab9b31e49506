"""What docs/findings holds, as committed (and about to be): no path of the machine that made it, and study runs
with their small files only (docs/findings/background/ copies them): no hidden file such as a run's .lock, and a
checkpoint only in a parked run (one still training, without eval.json), with the newest step alone."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = "docs/findings"
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|private/var)/")


def findings_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files under docs/findings (what a commit would hold)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the repository's git")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "--",
                             FINDINGS], capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in listed if f and (ROOT / f).is_file()]


def test_no_machine_path_in_the_findings():
    found = []
    for name in findings_files():
        if name.endswith((".safetensors", ".png")):
            continue
        text = (ROOT / name).read_text(errors="replace")
        found += [f"{name}: {m.group(0)}…" for m in MACHINE_PATH.finditer(text)]
    assert not found, found[:10]


def test_study_runs_hold_their_small_files_only():
    runs: dict[Path, list[Path]] = {}
    for name in findings_files():
        parts = Path(name).parts
        if "runs" in parts:  # docs/findings/[model/]runs/<run>/...
            at = parts.index("runs")
            if len(parts) > at + 2:
                runs.setdefault(Path(*parts[:at + 2]), []).append(Path(*parts[at + 2:]))
    assert runs, "no committed runs found"
    problems = []
    for run, files in runs.items():
        problems += [f"{run}/{f}: hidden file" for f in files if any(p.startswith(".") for p in f.parts)]
        steps = {f.parts[1] for f in files if f.parts[0] == "checkpoint" and len(f.parts) > 2}
        if steps and Path("eval.json") in files:
            problems.append(f"{run}: a finished run keeps its checkpoint")
        if len(steps) > 1:
            problems.append(f"{run}: a parked run keeps {len(steps)} checkpoint steps")
        if steps and (ROOT / run / "checkpoint" / "latest").read_text().strip() not in steps:
            problems.append(f"{run}: checkpoint/latest names a step that is not committed")
    assert not problems, problems
