"""docs/findings/background/park.sh at a session's end, in a repository of its own: a run still training is committed
with its newest checkpoint, and so is a claim-2 continuation not yet begun whose run kept its checkpoint (made as
extend.sh makes it), so that a new machine resumes both instead of training them from the start; a continuation
whose run has no checkpoint is left to be trained again from its config.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "findings" / "background" / "park.sh"
ARM = "v2-arith-soft-region-new-lr0.01"      # an arm of the full study's claim 2 (the budget rule lists those)
SETTINGS = ["--model", "tiny", "--task", "arith", "--method", "soft", "--prior", "normal", "--tokens", "4",
            "--lr", "0.01", "--schedule", "constant", "--warmup", "2", "--eval-every", "4", "--eval-size", "8",
            "--test-size", "8", "--train-size", "200", "--checkpoint-every", "4", "--early-stop", "100",
            "--batch-size", "4", "--steps", "8", "--quiet"]


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git")
def test_park_sh_keeps_what_a_new_machine_would_train_again(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", EPTK_CACHE=str(tmp_path / "cache"), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    repo, study = tmp_path / "repo", tmp_path / "work" / "study-smollm2"
    (repo / "docs" / "findings" / "runs").mkdir(parents=True)
    git("init", "-q", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=repo)
    study.mkdir(parents=True)
    for seed in (0, 1, 2):                                    # finished, each used its whole budget of 8 steps
        done = subprocess.run([sys.executable, "-m", "eptk.cli", "tune", *SETTINGS, "--seed", str(seed), "--out",
                               f"{ARM}-s{seed}"], cwd=study, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    shutil.rmtree(study / f"{ARM}-s1" / "checkpoint")          # trained on a machine since replaced
    training = study / "v2-arith-soft-region-data-lr0.01-s0"  # stopped while training
    shutil.copytree(study / f"{ARM}-s0", training, ignore=shutil.ignore_patterns(".lock", "eval.json"))
    under_way = study / f"v3-{ARM.removeprefix('v2-')}-s2"      # a continuation stopped while training
    shutil.copytree(study / f"{ARM}-s2", under_way, ignore=shutil.ignore_patterns(".lock", "eval.json"))
    before = sorted(p.relative_to(under_way) for p in under_way.rglob("*"))
    run = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True,
                         env=dict(env, WORK=str(tmp_path / "work"), REPO=str(repo), PYTHON=sys.executable))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    continuation = f"v3-{ARM.removeprefix('v2-')}-s0"
    committed = set(git("show", "--name-only", "--format=", "HEAD", cwd=repo).split())
    runs = "docs/findings/runs"
    latest = (study / f"{ARM}-s0" / "checkpoint" / "latest").read_text().strip()
    assert f"{runs}/{continuation}/config.json" in committed
    assert f"{runs}/{continuation}/checkpoint/latest" in committed
    assert f"{runs}/{continuation}/checkpoint/{latest}/state.safetensors" in committed
    assert f"{runs}/{continuation}/eval.json" not in committed       # it has not run: nothing to read yet
    assert f"{runs}/{training.name}/checkpoint/latest" in committed
    assert not any(f"-s1/" in path for path in committed)              # no checkpoint: trained again from config
    assert not any(path.startswith(f"{runs}/{ARM}-s0/") for path in committed)   # finished: the commit loop's
    config = json.loads((repo / runs / continuation / "config.json").read_text())
    assert config["out"] == config["name"] == continuation and config["steps"] == 8
    assert (study / continuation / "checkpoint" / "latest").is_file()  # extend.sh resumes it here too
    assert sorted(p.relative_to(under_way) for p in under_way.rglob("*")) == before   # left as it was
    assert sorted(run.stdout.split("parked: ")[1].split()) == sorted([f"{runs}/{continuation}",
                                                                       f"{runs}/{training.name}",
                                                                       f"{runs}/{under_way.name}"])
