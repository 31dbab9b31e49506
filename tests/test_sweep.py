"""`eptk sweep`: a 2 priors x 2 seeds grid on the tiny model with one run killed mid-way and one failing;
the sweep goes on, reports the failure, and a rerun completes everything without redoing complete runs.
The killed run's metrics.jsonl ends in a torn line, which its resume ignores."""
import fcntl
import json
import signal
import subprocess
import time

import pytest

SWEEP = """
priors = ["normal", "uniform"]
seeds = [0, 1]
methods = "soft"
tokens = 4

[fixed]
model = "tiny"
steps = 3
batch_size = 4
eval_size = 4
test_size = 4
train_size = 64
checkpoint_every = 1
"""


def _cli(*args):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from eptk.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _kill_after_first_checkpoint(run, run_dir):
    """Start the run's own `eptk tune` and SIGKILL it once a checkpoint exists (rolled back if it ends first)."""
    from eptk.sweep import run_state, tune_command
    proc = subprocess.Popen(tune_command({"run": run, "dir": run_dir, "action": "fresh"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoint" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not latest.exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run_dir / "eval.json").exists():  # it finished before the kill landed: make it look killed after step 2
        import shutil
        (run_dir / "eval.json").unlink()
        (run_dir / "posterior.safetensors").unlink()
        shutil.rmtree(run_dir / "checkpoint" / "step-00000003")
        (run_dir / "checkpoint" / "latest").write_text("step-00000002\n")
    assert run_state(run_dir) == "checkpoint"


def test_sweep_survives_a_kill_and_a_failure(tmp_path):
    from eptk.sweep import load_sweep

    toml = tmp_path / "grid.toml"
    toml.write_text(SWEEP)
    out = tmp_path / "sweep"
    runs = load_sweep(toml).runs
    names = [r.name for r in runs]
    assert names == ["arith-soft-normal-t4-s0", "arith-soft-normal-t4-s1", "arith-soft-uniform-t4-s0",
                     "arith-soft-uniform-t4-s1"]

    killed, locked = runs[3], runs[1]
    _kill_after_first_checkpoint(killed, out / killed.name)
    with open(out / killed.name / "metrics.jsonl", "a") as log:  # killed mid-row: a torn last line
        log.write('{"step": 3, "loss": 1.2, "l')

    # Another process holds the lock of one run: that run fails (exit 2); the others go on.
    (out / locked.name).mkdir(parents=True)
    lock = open(out / locked.name / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        code, stdout, stderr = _cli("sweep", toml, "--out", out, "--jobs", "2", "--no-analyze", "--quiet")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    assert code == 1, stderr
    summary = json.loads((out / "sweep.json").read_text())
    status = {r["name"]: r for r in summary["runs"]}
    assert [status[n]["status"] for n in names] == ["done", "failed", "done", "resumed"], summary
    failed = status[locked.name]
    assert failed["exit_code"] == 2 and "lock held" in failed["stderr_tail"]
    assert locked.name in stderr
    steps = [json.loads(l)["step"] for l in (out / killed.name / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == [1, 2, 3], "the killed run resumed from its checkpoint, no step twice"

    # Rerun: complete runs are skipped (eval.json untouched), the failed one runs, then analyze.
    complete = [n for n in names if n != locked.name]
    mtimes = {n: (out / n / "eval.json").stat().st_mtime_ns for n in complete}
    code, stdout, stderr = _cli("sweep", toml, "--out", out, "--jobs", "2", "--quiet")
    assert code == 0, stderr
    summary = json.loads((out / "sweep.json").read_text())
    status = {r["name"]: r["status"] for r in summary["runs"]}
    assert status == {**{n: "skipped" for n in complete}, locked.name: "done"}
    assert all((out / n / "eval.json").stat().st_mtime_ns == mtimes[n] for n in complete)
    assert all((out / n / "eval.json").is_file() for n in names)
    analysis = summary["analysis"]
    assert analysis["status"] in ("done", "failed")  # a failing analyze is reported, never fails the sweep
    if analysis["status"] == "done":
        assert (out / "analysis" / "summary.json").is_file()

    # --shard 1/2: runs 1 and 3 (every 2nd, from offset 1), complete, so only skipped.
    code, stdout, _ = _cli("sweep", toml, "--out", out, "--shard", "1/2", "--dry-run")
    assert code == 0
    assert [line.split()[-1] for line in stdout.splitlines()[:-1]] == [names[1], names[3]]
    assert all(" skip " in line for line in stdout.splitlines()[:-1])
    code, _, stderr = _cli("sweep", toml, "--out", out, "--shard", "1/2", "--quiet")
    assert code == 0, stderr
    shard = json.loads((out / "sweep.shard1of2.json").read_text())
    assert [(r["name"], r["status"]) for r in shard["runs"]] == [(names[1], "skipped"), (names[3], "skipped")]
    assert shard["analysis"]["status"] == "skipped"


def test_shard_selection_and_names_are_stable(tmp_path):
    from eptk.sweep import load_sweep, parse_shard, select_shard

    toml = tmp_path / "g.toml"
    toml.write_text('priors = ["normal", "region:between:arith,qa"]\nmethods = ["soft", "deep"]\n'
                    'layers = ["last:3", "all"]\nseeds = [0, 1, 2]\n[fixed]\nmodel = "tiny"\n')
    runs = load_sweep(toml).runs
    assert len(runs) == 2 * 3 + 2 * 2 * 3  # soft runs do not multiply over layers
    assert len({r.name for r in runs}) == len(runs)
    assert "arith-deep-last3-region-between-arith+qa-t20-s2" in {r.name for r in runs}
    assert [r.index for r in select_shard(runs, parse_shard("1/4"))] == list(range(1, len(runs), 4))
    assert sum(len(select_shard(runs, (i, 4))) for i in range(4)) == len(runs)
    # growing the grid keeps the names (and so the directories) of existing runs
    toml.write_text(toml.read_text().replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]"))
    assert {r.name for r in runs} <= {r.name for r in load_sweep(toml).runs}


@pytest.mark.parametrize("text, message", [
    (None, "not found"),
    ("priors = [\n", "not valid TOML"),
    ('prior = ["normal"]\n', "unknown key 'prior'"),
    ("priors = []\n", "empty grid"),
    ('[fixed]\nsteps = 3\n', "empty grid"),
    ('priors = ["normal"]\n[fixed]\nbogus = 1\n', "[fixed]: unknown setting 'bogus'"),
    ('priors = ["normal"]\n[fixed]\nsteps = "many"\n', "must be an integer"),
    ('seeds = [0]\n[fixed]\nseed = 1\n', "set both"),
    ('priors = ["nope"]\n', "unknown prior"),
])
def test_bad_sweep_files(tmp_path, text, message):
    toml = tmp_path / "s.toml"
    if text is not None:
        toml.write_text(text)
    code, _, err = _cli("sweep", toml, "--out", tmp_path / "o")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("shard", ["2/2", "x", "1/0", "-1/3"])
def test_bad_shard(tmp_path, shard):
    toml = tmp_path / "s.toml"
    toml.write_text('priors = ["normal"]\n')
    code, _, err = _cli("sweep", toml, "--shard", shard, "--out", tmp_path / "o")
    assert code == 2 and "--shard" in err and len(err.strip().splitlines()) == 1, err


def test_a_sweep_stopped_by_sigterm_asks_its_runs_to_checkpoint(tmp_path):
    """SIGTERM to `eptk sweep` (bar drawn): each running run gets SIGTERM, checkpoints and stops, the summary
    says interrupted, and the sweep exits 130."""
    import sys

    toml = tmp_path / "grid.toml"
    toml.write_text(SWEEP.replace("seeds = [0, 1]", "seeds = [0]").replace('priors = ["normal", "uniform"]',
                                                                         'priors = ["normal"]')
                    .replace("steps = 3", "steps = 400").replace("checkpoint_every = 1", "checkpoint_every = 0"))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "eptk.cli", "sweep", str(toml), "--out", str(out), "--no-analyze"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "arith-soft-normal-t4-s0" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "asked to checkpoint and stop" in stdout + stderr and "Traceback" not in stderr
    assert "0/1" in stdout + stderr and "1 running (arith-soft-normal-t4-s0)" in stdout + stderr, "the bar"
    run = json.loads((out / "sweep.json").read_text())["runs"][0]
    assert run["status"] == "interrupted" and run["exit_code"] == 128 + signal.SIGTERM, run
    assert (metrics.parent / "checkpoint" / "latest").exists()
