"""kill -9 at a random moment of a tune, a capture and a sweep (subprocesses on the tiny model; the moment
is drawn from a seeded generator over the uninterrupted command's running time), then `--resume` or
the same command again: it always succeeds and ends with what the uninterrupted command wrote, bitwise
on the CPU. EPTK_KILL_SEED picks other moments; EPTK_KILL_ROUNDS tries several."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

SEED = int(os.environ.get("EPTK_KILL_SEED", "0"))
ROUNDS = int(os.environ.get("EPTK_KILL_ROUNDS", "1"))
TUNE = ["tune", "--model", "tiny", "--method", "deep", "--layers", "last:2", "--steps", "6", "--batch-size", "2",
        "--eval-size", "2", "--test-size", "2", "--train-size", "16", "--checkpoint-every", "2", "--quiet"]


def eptk(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "eptk.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


def timed(*args, watch: Path):
    """Run to the end; return (seconds in all, seconds until `watch` first existed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "eptk.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    appeared = None
    while proc.poll() is None:
        if appeared is None and watch.exists():
            appeared = time.perf_counter() - t0
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()
    total = time.perf_counter() - t0
    return total, appeared if appeared is not None else total


def killed_at(delay: float, *args) -> None:
    """Start the command, SIGKILL it `delay` seconds later (unless it ended first)."""
    proc = subprocess.Popen([sys.executable, "-m", "eptk.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def moments(total: float, started: float, salt: str) -> list[float]:
    """Seeded kill moments over the command's life, most of them after its start-up (`started`)."""
    gen = random.Random(f"{SEED}:{salt}")
    return [gen.uniform(0.9 * started, total) for _ in range(ROUNDS)]


def same_posterior(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "posterior.safetensors")), load_file(str(b / "posterior.safetensors"))
    return set(x) == set(y) and all(bool((x[k] == y[k]).all()) for k in x)


def training_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_kill_a_tune_then_resume(tmp_path):
    whole = tmp_path / "whole"
    total, started = timed(*TUNE, "--out", whole, watch=whole / "config.json")
    for i, delay in enumerate(moments(total, started, "tune")):
        cut = tmp_path / f"cut{i}"
        killed_at(delay, *TUNE, "--out", cut)
        # a run that wrote its config resumes; one killed before that is started again
        again = eptk("tune", "--resume", cut, "--quiet") if (cut / "config.json").exists() else eptk(*TUNE, "--out", cut)
        assert again.returncode == 0, (delay, again.stderr)
        assert same_posterior(whole, cut), delay
        assert training_steps(cut) == list(range(1, 7)), delay
        assert json.loads((cut / "eval.json").read_text()) == json.loads((whole / "eval.json").read_text())


CAPTURE = ["capture", "--model", "tiny", "--task", "arith", "--layers", "all", "--samples", "64", "--examples",
           "96", "--batch-size", "8", "--quiet"]


def test_kill_a_capture_then_rerun(tmp_path):
    from eptk.stats import META_FILE, STATS_FILE

    whole = tmp_path / "whole"
    total, started = timed(*CAPTURE, "--out", whole, watch=whole)
    for i, delay in enumerate(moments(total, 0.5 * total, "capture")):
        cut = tmp_path / f"cut{i}"
        killed_at(delay, *CAPTURE, "--out", cut)
        again = eptk(*CAPTURE, "--out", cut)
        assert again.returncode == 0, (delay, again.stderr)
        for name in (STATS_FILE, META_FILE):
            assert (cut / name).read_bytes() == (whole / name).read_bytes(), (delay, name)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{cut.name}.")], "partial folders removed"


def test_a_capture_killed_while_saving_leaves_nothing_after_a_rerun(tmp_path, run_cli):
    """What a kill during the save leaves (the random moment above rarely lands there): the half-filled
    hidden folder next to --out, and --out itself absent or whole. The rerun writes --out and removes it."""
    out = tmp_path / "stats"
    partial = tmp_path / ".stats.k1ll3d.partial"
    partial.mkdir()
    (partial / "stats.safetensors").write_bytes(b"half")
    code, _, err = run_cli(*CAPTURE[:-1], "--samples", "16", "--examples", "8", "--quiet", "--out", out)
    assert code == 0, err
    assert (out / "meta.json").is_file() and not partial.exists()


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


def test_kill_a_sweep_then_rerun(tmp_path):
    """The sweep's children die with it (the kernel kills them: no orphan keeps a run locked); the rerun
    resumes, skips or restarts each run, and analyzes."""
    grid = tmp_path / "grid.toml"
    grid.write_text(SWEEP)
    whole = tmp_path / "whole"
    total, started = timed("sweep", grid, "--out", whole, "--quiet", watch=whole / "logs")
    names = sorted(p.name for p in whole.iterdir() if (p / "eval.json").exists())
    assert len(names) == 2
    for i, delay in enumerate(moments(total, started, "sweep")):
        cut = tmp_path / f"cut{i}"
        killed_at(delay, "sweep", grid, "--out", cut, "--quiet")
        again = eptk("sweep", grid, "--out", cut, "--quiet")
        assert again.returncode == 0, (delay, again.stdout, again.stderr)
        summary = json.loads((cut / "sweep.json").read_text())
        assert not summary["counts"].get("failed") and summary["analysis"]["status"] == "done", summary
        for name in names:
            assert same_posterior(whole / name, cut / name), (delay, name)
            assert training_steps(cut / name) == [1, 2, 3, 4], (delay, name)
            assert json.loads((cut / name / "eval.json").read_text()) == \
                json.loads((whole / name / "eval.json").read_text())
