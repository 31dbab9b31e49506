"""docs/findings/background/extend.sh, RULES.md amendment 1's premise and its mechanics on the tiny model: a claim-2
run that used its whole 600 steps, continued from its checkpoint to 1,200 in its `v3-` folder, equals the run
trained to 1,200 from the start (validation curve, stop and posterior); one whose checkpoint is lost is trained
again from its config.json; each continuation's config.json names its own folder, relative; two extend.sh share a
round, each continuation trained once, and one listed but finished by another before it is claimed is left alone."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "findings" / "background" / "extend.sh"
# an arm's name of the full study (the budget rule lists the study's claim-2 runs); patience long enough that
# nothing stops, so both runs use their whole budget
ARM = "v2-arith-soft-region-new-lr0.01"
SETTINGS = ["--model", "tiny", "--task", "arith", "--method", "soft", "--prior", "normal", "--tokens", "4",
            "--lr", "0.01", "--schedule", "constant", "--warmup", "2", "--eval-every", "50", "--eval-size", "8",
            "--test-size", "8", "--train-size", "200", "--checkpoint-every", "50", "--early-stop", "100",
            "--batch-size", "4"]


def eptk(*args, cwd, env):
    done = subprocess.run([sys.executable, "-m", "eptk.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def curve(run: Path) -> list:
    return [(r["step"], r["val_loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r]


def fake_checkout(tmp_path: Path, env: dict) -> tuple[Path, dict]:
    """A checkout whose .venv/bin/eptk is this interpreter's eptk (the frozen checkouts each have their own), and
    the environment extend.sh runs in."""
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "eptk").write_text(f"#!/bin/sh\nexec {sys.executable} -m eptk.cli \"$@\"\n")
    (checkout / ".venv" / "bin" / "eptk").chmod(0o755)
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    return checkout, dict(env, WORK=str(tmp_path / "work"), REPO=str(ROOT), PYTHON=sys.executable,
                          PATH=f"{Path(sys.executable).parent}:{env['PATH']}")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git")
def test_extend_sh_continues_runs_to_what_the_larger_budget_trains(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", EPTK_CACHE=str(tmp_path / "cache"))
    study = tmp_path / "work" / "study-tiny"
    study.mkdir(parents=True)
    for seed in (0, 1):
        eptk("tune", *SETTINGS, "--seed", seed, "--steps", 600, "--out", f"{ARM}-s{seed}", "--quiet", cwd=study, env=env)
    shutil.rmtree(study / f"{ARM}-s1" / "checkpoint")          # seed 1's checkpoint is lost with a machine
    eptk("tune", *SETTINGS, "--seed", 0, "--steps", 1200, "--out", tmp_path / "fresh", "--quiet", cwd=tmp_path,
         env=env)
    checkout, script_env = fake_checkout(tmp_path, env)
    # two extend.sh share the round: each continuation is trained once, by one of them
    workers = [subprocess.Popen(["bash", str(SCRIPT), "tiny", str(checkout)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=script_env) for _ in range(2)]
    outputs = [worker.communicate() for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-2000:] + err[-2000:]
    stdout = "".join(out for out, _ in outputs)
    trained = sorted(line.split(": ")[1].split(" to ")[0] for line in stdout.splitlines() if " to 1200 steps " in line)
    assert trained == [f"v3-{ARM.removeprefix('v2-')}-s{seed}" for seed in (0, 1)], stdout
    assert "nothing more to continue in this round" in stdout
    continued = study / f"v3-{ARM.removeprefix('v2-')}-s0"
    assert curve(continued) == curve(tmp_path / "fresh")
    assert json.loads((continued / "eval.json").read_text())["early_stop"] == \
        json.loads((tmp_path / "fresh" / "eval.json").read_text())["early_stop"]
    mine, theirs = load_file(continued / "posterior.safetensors"), load_file(tmp_path / "fresh" / "posterior.safetensors")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    for seed in (0, 1):
        name = f"v3-{ARM.removeprefix('v2-')}-s{seed}"
        config = json.loads((study / name / "config.json").read_text())
        assert config["out"] == name and config["steps"] == 1200
        assert (study / f"{ARM}-s{seed}" / "eval.json").is_file()    # the version-2 run stays as it was
    assert json.loads((study / f"{ARM}-s0" / "config.json").read_text())["steps"] == 600
    # a continuation listed to an extend.sh but finished by another before it claimed it is not trained again
    stale = tmp_path / "stale-python"
    stale.write_text(f"""#!/bin/sh
if [ "$2" = eptk.reproduce.continuations ] && [ ! -e {tmp_path}/listed-once ]; then
    touch {tmp_path}/listed-once
    echo "{study / f'{ARM}-s0'} {continued} 1200"
fi
exec {sys.executable} "$@"
""")
    stale.chmod(0o755)
    before = (continued / "eval.json").stat().st_mtime_ns
    late = subprocess.run(["bash", str(SCRIPT), "tiny", str(checkout)], capture_output=True, text=True,
                          env=dict(script_env, PYTHON=str(stale)))
    assert late.returncode == 0, late.stdout[-2000:] + late.stderr[-2000:]
    assert " to 1200 steps " not in late.stdout and (continued / "eval.json").stat().st_mtime_ns == before


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("git") is None or shutil.which("flock") is None,
                    reason="needs bash, git and flock")
def test_an_extend_sh_whose_continuations_are_all_claimed_waits_and_asks_again(tmp_path):
    # it once stopped instead: a round opened by the other's last run was then trained on one core
    env = dict(os.environ, OMP_NUM_THREADS="1", EPTK_CACHE=str(tmp_path / "cache"))
    study = tmp_path / "work" / "study-tiny"
    study.mkdir(parents=True)
    eptk("tune", *SETTINGS, "--seed", 0, "--steps", 600, "--out", f"{ARM}-s0", "--quiet", cwd=study, env=env)
    checkout, script_env = fake_checkout(tmp_path, env)
    name = f"v3-{ARM.removeprefix('v2-')}-s0"
    log = tmp_path / "extend.log"
    with open(study / f".extend-{name}.claim", "w") as claim, open(log, "w") as out:
        fcntl.flock(claim, fcntl.LOCK_EX)                  # another extend.sh holds the only continuation
        worker = subprocess.Popen(["bash", str(SCRIPT), "tiny", str(checkout)], stdout=out, stderr=subprocess.STDOUT,
                                  env=script_env)
        deadline = time.monotonic() + 120
        while "waiting for the first" not in log.read_text() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.poll() is None and "waiting for the first" in log.read_text(), log.read_text()[-2000:]
        assert not (study / name).exists()
    # the claim released (that extend.sh moved on without finishing it): this one trains it
    assert worker.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert f"{name} to 1200 steps" in log.read_text() and (study / name / "eval.json").is_file()
