"""kill -9 in the middle of a tune, a capture and a sweep (subprocesses on the tiny model), then `--resume` or the
same command again: it always succeeds and ends with what the uninterrupted command wrote, bitwise on the CPU.

The kills land at named moments between two writes, by eptk.io.crash_point (EPTK_CRASH_AT=name[:n] makes the
process SIGKILL itself the n-th time it gets there): after config.json and before the prior, after a metrics line
and before the checkpoint that covers it, in the middle of a checkpoint, in the middle of a folder swap, after the
posterior and before eval.json, and right after a sweep started a run. One more kill comes from outside, timed
from the run's own files. Every cut asserts that the process died of signal 9, so no case passes by the command
ending first."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from eptk.io import CRASH_AT

TUNE = ["tune", "--model", "tiny", "--method", "deep", "--layers", "last:2", "--steps", "6", "--batch-size", "2",
        "--eval-size", "2", "--test-size", "2", "--train-size", "16", "--checkpoint-every", "2", "--quiet"]


def command(*args) -> list[str]:
    return [sys.executable, "-m", "eptk.cli", *map(str, args)]


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != CRASH_AT}


def eptk(*args):
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=900, env=clean_env())


def crashed_at(point: str, *args) -> None:
    """Run the command with EPTK_CRASH_AT=point; it must die of SIGKILL there."""
    proc = subprocess.run(command(*args), capture_output=True, text=True, timeout=900,
                          env=dict(clean_env(), **{CRASH_AT: point}))
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def same_posterior(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "posterior.safetensors")), load_file(str(b / "posterior.safetensors"))
    return set(x) == set(y) and all(bool((x[k] == y[k]).all()) for k in x)


def training_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def whole_tune(tmp_path_factory):
    whole = tmp_path_factory.mktemp("tune") / "whole"
    done = eptk(*TUNE, "--out", whole)
    assert done.returncode == 0, done.stderr
    return whole


def finish_like_the_whole_run(cut: Path, whole: Path, what: str) -> None:
    # a run that wrote its config resumes; one killed before that is started again
    again = eptk("tune", "--resume", cut, "--quiet") if (cut / "config.json").exists() else eptk(*TUNE, "--out", cut)
    assert again.returncode == 0, (what, again.stderr)
    assert same_posterior(whole, cut), what
    assert training_steps(cut) == list(range(1, 7)), what
    assert json.loads((cut / "eval.json").read_text()) == json.loads((whole / "eval.json").read_text()), what
    assert not [p.name for p in cut.rglob(".*") if p.name != ".lock"], "temporary files removed"


# (point, what the run holds when it dies): checkpoints come at steps 2, 4 and 6
TUNE_POINTS = {"config": "config.json, no prior yet",
               "log:4": "step 3 logged (the log opens with step 0), its checkpoint (step 4) not written",
               "checkpoint:2": "half of the step-4 checkpoint",
               "swap:3": "the step-6 checkpoint filled but not yet in place",
               "posterior": "the posterior, no eval.json yet"}


@pytest.mark.parametrize("point", TUNE_POINTS)
def test_a_tune_killed_at_a_named_point_resumes_to_the_same_run(tmp_path, whole_tune, point):
    cut = tmp_path / "cut"
    crashed_at(point, *TUNE, "--out", cut)
    finish_like_the_whole_run(cut, whole_tune, f"{point}: {TUNE_POINTS[point]}")


def test_a_tune_killed_from_outside_mid_step_resumes_to_the_same_run(tmp_path, whole_tune):
    """SIGKILL from another process once the run's own metrics show step 3 (timed from its files, not a clock)."""
    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(*TUNE, "--out", cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=clean_env())
    try:
        deadline = time.monotonic() + 600
        while 3 not in (training_steps(cut) if (cut / "metrics.jsonl").exists() else []):
            assert proc.poll() is None, "the run ended before step 3 was logged"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finish_like_the_whole_run(cut, whole_tune, "killed after step 3 was logged")


CAPTURE = ["capture", "--model", "tiny", "--task", "arith", "--layers", "all", "--samples", "64", "--examples",
           "96", "--batch-size", "8", "--quiet"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "replacing-out"])
def test_a_capture_killed_mid_swap_then_rerun(tmp_path, existing):
    """Killed with the statistics folder filled but not yet in place (replacing an earlier capture: with the old
    folder moved aside, so neither is at --out); the rerun writes --out byte for byte and removes the rest."""
    from eptk.stats import META_FILE, STATS_FILE

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = eptk(*CAPTURE, "--out", whole)
    assert done.returncode == 0, done.stderr
    if existing:
        earlier = eptk(*CAPTURE[:-1], "--seed", "1", "--quiet", "--out", cut)  # other statistics in the way
        assert earlier.returncode == 0, earlier.stderr
    crashed_at("swap", *CAPTURE, "--out", cut)
    assert not cut.exists(), "killed before the swap completed"
    assert [p for p in tmp_path.iterdir() if p.name.startswith(f".{cut.name}.")], "the partial folders it left"
    again = eptk(*CAPTURE, "--out", cut)
    assert again.returncode == 0, again.stderr
    for name in (STATS_FILE, META_FILE):
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{cut.name}.")], "partial folders removed"


SWEEP = """seeds = [0, 1]
[fixed]
model = "tiny"
method = "soft"
steps = 4
batch_size = 2
eval_size = 2
test_size = 2
train_size = 16
checkpoint_every = 1
"""


@pytest.fixture(scope="module")
def whole_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    grid = root / "grid.toml"
    grid.write_text(SWEEP)
    done = eptk("sweep", grid, "--out", root / "whole", "--quiet")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (root / "whole").iterdir() if (p / "eval.json").exists())
    assert len(names) == 2
    return grid, root / "whole", names


@pytest.mark.parametrize("point", ["job-started:1", "job-started:2"])
def test_a_sweep_killed_after_starting_a_run_then_rerun(tmp_path, whole_sweep, point):
    """The sweep dies right after starting its first or second run; that run dies with it (the kernel kills it:
    no orphan keeps a run locked); the rerun resumes, skips or restarts each run, and analyzes."""
    grid, whole, names = whole_sweep
    cut = tmp_path / "cut"
    crashed_at(point, "sweep", grid, "--out", cut, "--quiet")
    again = eptk("sweep", grid, "--out", cut, "--quiet")
    assert again.returncode == 0, (point, again.stdout, again.stderr)
    summary = json.loads((cut / "sweep.json").read_text())
    assert not summary["counts"].get("failed") and summary["analysis"]["status"] == "done", summary
    for name in names:
        assert same_posterior(whole / name, cut / name), (point, name)
        assert training_steps(cut / name) == [1, 2, 3, 4], (point, name)
        assert json.loads((cut / name / "eval.json").read_text()) == json.loads((whole / name / "eval.json").read_text())


def test_crash_points_do_nothing_unless_named(monkeypatch):
    """Only the named point, and only its n-th arrival, kills; other points and other arrivals return."""
    from eptk import io

    monkeypatch.setattr(io, "_crashes_reached", {})
    killed = []
    monkeypatch.setattr(io.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.delenv(CRASH_AT, raising=False)
    io.crash_point("log")
    monkeypatch.setenv(CRASH_AT, "log:2")
    io.crash_point("swap")
    io.crash_point("log")
    assert killed == []
    io.crash_point("log")
    assert killed == [(os.getpid(), signal.SIGKILL)]
