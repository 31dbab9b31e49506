"""docs/findings/background/drive.sh, the driver of one model's study: it alternates study.sh's converged stage and
extend.sh until a pass in which neither trained anything, and stops as soon as either fails. study.sh and extend.sh
are stood in for by scripts that print, call by call, the lines the real ones print when they train (their own
mechanics are tested in test_extend_script.py and test_reproduce.py); what is tested here is the driver's loop."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "docs" / "findings" / "background" / "drive.sh"
# the lines study.sh and extend.sh print for a run they train (a change there must show here)
STUDY_LINE = "2026-12-04T18:29:38Z smollm2: stage converged (round {n}) from d901117-dirty"
EXTEND_LINE = "2026-12-04T18:30:22Z smollm2: v3-arith-soft-region-data-lr0.001-s{n} to 1200 steps (from v2-x)"
# a stand-in: each call takes the next entry of its queue (how many runs it trains, or "fail") and records the call;
# the queue is read under a lock, since with JOBS=2 two extend.sh run at once
STAND_IN = """#!/usr/bin/env bash
queue="$(dirname "$0")/{name}.queue"
exec {{lock}}>"$queue.lock"; flock "$lock"
entry=$(head -n 1 "$queue"); sed -i 1d "$queue"
echo "{name} $*" >> "$(dirname "$0")/calls"
exec {{lock}}>&-
[ "$entry" != fail ] || exit 1
for n in $(seq 1 "${{entry:-0}}"); do echo "{line}"; done
echo "{name}: nothing more"
"""


def drive(tmp_path: Path, study: list, extend: list, jobs: int = 1) -> tuple[subprocess.CompletedProcess, list]:
    folder = tmp_path / "background"
    folder.mkdir()
    shutil.copy(DRIVER, folder / "drive.sh")
    for name, line, queue in (("study", STUDY_LINE, study), ("extend", EXTEND_LINE, extend)):
        (folder / f"{name}.sh").write_text(STAND_IN.format(name=name, line=line.replace("{n}", "$n")))
        (folder / f"{name}.queue").write_text("".join(f"{entry}\n" for entry in queue))
    done = subprocess.run(["bash", str(folder / "drive.sh"), "smollm2", "/checkout"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, JOBS=str(jobs)))
    calls = (folder / "calls").read_text().splitlines() if (folder / "calls").exists() else []
    return done, calls


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_drive_sh_alternates_until_a_pass_trains_nothing(tmp_path):
    # pass 1: two version-2 runs, then one continuation; pass 2: a grown seed only; pass 3: nothing
    done, calls = drive(tmp_path, study=[2, 1, 0, 5], extend=[1, 0, 0, 5])
    assert done.returncode == 0, done.stderr
    assert calls == ["study smollm2 /checkout converged", "extend smollm2 /checkout"] * 3
    assert "pass 1 of drive.sh trained 3 time(s)" in done.stdout
    assert "pass 2 of drive.sh trained 1 time(s)" in done.stdout
    assert "pass 3 of drive.sh trained 0 time(s)" in done.stdout
    assert done.stdout.rstrip().endswith("smollm2: drive.sh done")
    assert STUDY_LINE.format(n=1) in done.stdout            # the scripts' own lines reach the log


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_drive_sh_goes_on_when_only_extend_trained(tmp_path):
    done, calls = drive(tmp_path, study=[0, 0, 0], extend=[2, 0, 0])
    assert done.returncode == 0, done.stderr
    assert len(calls) == 4 and "pass 2 of drive.sh trained 0 time(s)" in done.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("failing", ["study", "extend"])
def test_drive_sh_stops_when_either_script_fails(tmp_path, failing):
    queues = {"study": [1, 1], "extend": [1, 1]}
    queues[failing] = ["fail", 1]
    done, calls = drive(tmp_path, **queues)
    assert done.returncode != 0
    assert "drive.sh done" not in done.stdout
    assert calls[-1].startswith(failing) and len(calls) == (1 if failing == "study" else 2)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("flock") is None, reason="needs bash and flock")
def test_drive_sh_with_two_jobs_runs_two_extend_sh_per_pass_and_counts_both(tmp_path):
    # pass 1: study trains 2, the two extend.sh 1 and 2; pass 2: only one extend.sh trains; pass 3: nothing
    done, calls = drive(tmp_path, study=[2, 0, 0], extend=[1, 2, 0, 1, 0, 0], jobs=2)
    assert done.returncode == 0, done.stderr
    assert calls == ["study smollm2 /checkout converged", "extend smollm2 /checkout", "extend smollm2 /checkout"] * 3
    assert "pass 1 of drive.sh trained 5 time(s)" in done.stdout
    assert "pass 2 of drive.sh trained 1 time(s)" in done.stdout
    assert done.stdout.rstrip().endswith("smollm2: drive.sh done")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("flock") is None, reason="needs bash and flock")
@pytest.mark.parametrize("queue", [["fail", 1], [1, "fail"]])
def test_drive_sh_with_two_jobs_stops_when_either_extend_sh_fails(tmp_path, queue):
    done, calls = drive(tmp_path, study=[1, 1], extend=queue + [1, 1], jobs=2)
    assert done.returncode != 0
    assert "drive.sh done" not in done.stdout
    assert calls.count("study smollm2 /checkout converged") == 1
