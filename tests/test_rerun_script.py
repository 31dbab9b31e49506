"""docs/findings/background/rerun.sh, in a repository of its own: a committed run trained again from its config.json
from the repository root, compared with the committed run (rerun_check), the comparison appended to reruns.jsonl
beside the runs folder; on the machine that made the run, the rerun repeats it exactly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "findings" / "background" / "rerun.sh"
SETTINGS = ["--model", "tiny", "--task", "arith", "--method", "soft", "--prior", "normal", "--tokens", "4",
            "--lr", "0.01", "--warmup", "2", "--eval-every", "2", "--eval-size", "8", "--test-size", "8",
            "--train-size", "64", "--checkpoint-every", "0", "--batch-size", "4", "--steps", "4", "--quiet"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_rerun_sh_trains_again_compares_and_records(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", EPTK_CACHE=str(tmp_path / "cache"), WORK=str(tmp_path / "work"),
               REPO=str(tmp_path / "repo"), PYTHON=sys.executable)
    runs = tmp_path / "repo" / "docs" / "findings" / "runs"
    runs.mkdir(parents=True)
    for seed in (0, 1, 2):
        done = subprocess.run([sys.executable, "-m", "eptk.cli", "tune", *SETTINGS, "--seed", str(seed), "--out",
                               f"v2-arith-soft-normal-s{seed}"], cwd=runs, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    script = ["bash", str(SCRIPT), "docs/findings/runs/v2-arith-soft-normal-s1"]
    first = subprocess.run(script, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    again = tmp_path / "work" / "rerun" / "v2-arith-soft-normal-s1"
    assert (again / "eval.json").is_file()
    record = runs.parent / "reruns.jsonl"
    [line] = record.read_text().splitlines()
    got = json.loads(line)
    scores = sorted(json.loads((runs / f"v2-arith-soft-normal-s{s}" / "eval.json").read_text())["tuned"]["score"]
                    for s in (0, 1, 2))
    assert got["run"] == "v2-arith-soft-normal-s1" and got["rerun_score"] == got["score"]
    assert got["departs_at"] is None and got["within_arm"] and got["arm_range"] == [scores[0], scores[-1]]
    assert str(tmp_path) not in line

    metrics = (again / "metrics.jsonl").read_text()
    second = subprocess.run(script, env=env, capture_output=True, text=True)     # finished: compared, not retrained
    assert second.returncode == 0 and (again / "metrics.jsonl").read_text() == metrics
    assert record.read_text().splitlines() == [line, line]

    missing = subprocess.run(["bash", str(SCRIPT), "docs/findings/runs/nothing"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "not a finished committed run" in missing.stderr
