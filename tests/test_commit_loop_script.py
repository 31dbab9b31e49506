"""docs/findings/background/commit-loop.sh, one pass (`--once`), in a repository of its own: each study run that
finished at least a minute ago gets its small files committed into its model's committed runs folder (not its
hidden files, never its checkpoints), a parked run that has now finished loses its committed checkpoint, and
nothing else is touched: runs still training or just finished, and whatever else is staged in the repository. The
script only copies files, so the runs here are folders with the files a run has, not trained runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "findings" / "background" / "commit-loop.sh"
RUNS = {"smollm2": "docs/findings/runs", "gemma3-270m": "docs/findings/gemma3-270m/runs"}
SMALL = ("config.json", "metrics.jsonl", "prior.safetensors", "posterior.safetensors", "predictions.jsonl")


def git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_run(folder: Path, *, finished_ago: float | None) -> Path:
    """A run folder: small files, a hidden lock, a checkpoint; an eval.json written `finished_ago` seconds ago."""
    (folder / "checkpoint" / "600").mkdir(parents=True)
    (folder / "checkpoint" / "latest").write_text("600")
    (folder / "checkpoint" / "600" / "state.safetensors").write_text("state")
    (folder / ".lock").write_text("pid")
    for name in SMALL:
        (folder / name).write_text(f"{folder.name} {name}")
    if finished_ago is not None:
        (folder / "eval.json").write_text('{"score": 1}')
        then = time.time() - finished_ago
        os.utime(folder / "eval.json", (then, then))
    return folder


def commit_loop(repo: Path, work: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WORK=str(work), REPO=str(repo), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["bash", str(SCRIPT), "--once"], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git")
def test_one_pass_commits_the_small_files_of_each_run_finished_a_minute_ago(tmp_path):
    repo, work = tmp_path / "repo", tmp_path / "work"
    smollm2, gemma = work / "study-smollm2", work / "study-gemma3-270m"
    for folder in (repo, smollm2, gemma):
        folder.mkdir(parents=True)
    git("init", "-q", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=repo)
    # parked at an earlier session's end: committed with its checkpoint and no eval.json
    parked = make_run(smollm2 / "v3-arith-soft-region-new-lr0.01-s0", finished_ago=None)
    shutil.copytree(parked, repo / RUNS["smollm2"] / parked.name, ignore=shutil.ignore_patterns(".*"))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "parked", cwd=repo)
    (parked / "eval.json").write_text('{"score": 2}')              # it has finished since
    os.utime(parked / "eval.json", (time.time() - 90, time.time() - 90))
    done = make_run(smollm2 / "v2-arith-deep-last3-region-data-lrsnone-s3", finished_ago=300)
    on_gemma = make_run(gemma / "v2-arith-soft-region-data-lr0.01-s2", finished_ago=61)
    just_now = make_run(smollm2 / "v2-arith-soft-region-data-lr0.01-s4", finished_ago=30)   # eval.json may grow
    training = make_run(smollm2 / "v2-arith-soft-region-data-lr0.01-s5", finished_ago=None)
    (repo / "other.txt").write_text("someone's work")
    git("add", "other.txt", cwd=repo)

    run = commit_loop(repo, work)
    assert run.returncode == 0, run.stdout + run.stderr
    committed = set(git("show", "--name-status", "--format=", "HEAD", cwd=repo).splitlines())
    added = {line.split("\t")[1] for line in committed if line.startswith("A")}
    deleted = {line.split("\t")[1] for line in committed if line.startswith("D")}
    for model, run_dir in (("smollm2", done), ("gemma3-270m", on_gemma)):
        assert added >= {f"{RUNS[model]}/{run_dir.name}/{name}" for name in (*SMALL, "eval.json")}
    assert f"{RUNS['smollm2']}/{parked.name}/eval.json" in added
    assert deleted == {f"{RUNS['smollm2']}/{parked.name}/checkpoint/latest",
                       f"{RUNS['smollm2']}/{parked.name}/checkpoint/600/state.safetensors"}
    assert not (repo / RUNS["smollm2"] / parked.name / "checkpoint").exists()
    assert not any("/.lock" in path or "/checkpoint/" in path for path in added)
    assert not any(just_now.name in path or training.name in path for path in added | deleted)
    assert "other.txt" not in added and git("diff", "--cached", "--name-only", cwd=repo).split() == ["other.txt"]
    assert (repo / RUNS["smollm2"] / done.name / "config.json").read_text() == f"{done.name} config.json"
    assert run.stdout.count(" committed ") == 1

    before = git("rev-parse", "HEAD", cwd=repo)
    again = commit_loop(repo, work)                              # nothing new: no commit, nothing printed
    assert again.returncode == 0 and again.stdout == ""
    assert git("rev-parse", "HEAD", cwd=repo) == before
