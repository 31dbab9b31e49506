"""`eptk tune --resume` through the CLI: extending a finished run with --steps (the schedule recomputed
and recorded, so --config reruns it exactly), a finished run with nothing to do (nothing written), and a
crash's torn last line of metrics.jsonl (ignored)."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from disk import snapshot

TINY = ["--model", "tiny", "--method", "soft", "--batch-size", "2", "--eval-size", "2", "--test-size", "2",
        "--train-size", "16", "--warmup", "1", "--lr", "0.05", "--checkpoint-every", "2", "--quiet"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_tensors(a, b):
    a, b = load_file(str(a / "posterior.safetensors")), load_file(str(b / "posterior.safetensors"))
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from eptk.cli.main import main
    run = tmp_path_factory.mktemp("resume") / "four"
    assert main(["tune", *TINY, "--steps", "4", "--out", str(run)]) == 0
    return run


def test_nothing_to_do_writes_nothing(finished, run_cli):
    for extra in ([], ["--steps", "4"], ["--quiet", "--device", "cpu", "--backend", "torch", "--grad-checkpointing"]):
        before = snapshot(finished)
        code, out, err = run_cli("tune", "--resume", finished, *extra)
        assert code == 0, err
        assert "nothing to do" in out and "--steps" in out
        assert snapshot(finished) == before


def test_extend_a_finished_run(finished, tmp_path, run_cli):
    """4 steps, then --resume --steps 7: steps 5..7 run once each under a cosine recomputed over 7 steps from
    step 5 on (steps 1..4 keep the 4-step schedule), one final evaluation row, a new posterior and eval;
    config.json records the extension and `--config` reruns the whole to the same posterior, bitwise."""
    run = tmp_path / "extended"
    shutil.copytree(finished, run)
    code, out, err = run_cli("tune", "--resume", run, "--steps", "7", "--quiet")
    assert code == 0, err
    logged = rows(run)
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 8))
    assert [r["step"] for r in logged if "loss" not in r] == [0, 7], "the prior's row, one final row, no stale one"
    assert logged[:4] == rows(finished)[:4], "the first four steps are kept as they were"

    def cosine(step, total):  # warm-up 1, then cosine to 0 over `total` steps (step 0-based)
        return 0.05 * (1.0 if step < 1 else 0.5 * (1 + math.cos(math.pi * (step - 1) / (total - 1))))
    lrs = [r["lr"] for r in logged if "loss" in r]
    assert lrs == pytest.approx([cosine(s, 4) for s in range(4)] + [cosine(s, 7) for s in range(4, 7)])
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 7 and config["extensions"] == [{"at_step": 4, "steps": 4}]
    assert not same_tensors(run, finished) and json.loads((run / "eval.json").read_text())["tuned"]["n"] == 2
    again = tmp_path / "again"
    code, _, err = run_cli("tune", "--config", run / "config.json", "--out", again, "--test-size", "0", "--quiet")
    assert code == 0, err
    assert same_tensors(run, again)
    assert json.loads((again / "eval.json").read_text())["skipped"], "an option given with --config overrides it"
    assert [r["lr"] for r in rows(again) if "loss" in r] == lrs


def test_shorten_an_unfinished_run(finished, tmp_path, run_cli):
    """A run stopped at its step-2 checkpoint, resumed with --steps 3: it ends at 3, its schedule over 4
    before step 2 and over 3 from there."""
    run = tmp_path / "cut"
    shutil.copytree(finished, run)
    cut_back(run, 2)
    code, _, err = run_cli("tune", "--resume", run, "--steps", "3", "--quiet")
    assert code == 0, err
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["extensions"] == [{"at_step": 2, "steps": 4}]


def cut_back(run, step, torn: str | None = None):
    """What a run killed after its checkpoint at `step` leaves: no eval.json or posterior, no later
    checkpoint, the rows of later steps, and (`torn`) half of the next line."""
    from eptk.runs import CHECKPOINTS, EVAL, LATEST, METRICS, POSTERIOR

    (run / EVAL).unlink()
    (run / POSTERIOR).unlink()
    for folder in (run / CHECKPOINTS).glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    (run / CHECKPOINTS / LATEST).write_text(f"step-{step:08d}\n")
    lines = [l for l in (run / METRICS).read_text().splitlines()
             if json.loads(l)["step"] <= step + 1 and ("loss" in json.loads(l) or json.loads(l)["step"] == 0)]
    text = "\n".join(lines) + "\n"
    if torn is not None:
        text += torn
    (run / METRICS).write_text(text)


def test_a_torn_last_line_is_ignored_by_resume(finished, tmp_path, run_cli):
    """A crash while step 4's row was half written (its checkpoint at step 2): --resume drops the torn line
    and the rows after the checkpoint and ends where the uninterrupted run ended, bitwise."""
    run = tmp_path / "torn"
    shutil.copytree(finished, run)
    cut_back(run, 2, torn='{"step": 4, "loss": 4.1, "lr": 0.0')
    code, _, err = run_cli("tune", "--resume", run, "--quiet")
    assert code == 0, err
    assert rows(run)[0] == rows(finished)[0] and rows(run)[0]["step"] == 0, "the prior's row is kept"
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3, 4]
    assert same_tensors(run, finished)


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
    from eptk.errors import EptkUsageError
    from eptk.io import read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": 2, "b\n{"a": 3}\n')
    with pytest.raises(EptkUsageError, match="m.jsonl:2"):
        read_jsonl(path)


def test_metrics_are_fsynced_before_each_checkpoint(tmp_path, monkeypatch):
    """The rows a checkpoint counts on are on disk (fsync) before any of its files is written: after a
    crash, the log never lacks a step the newest checkpoint has done."""
    import os

    from eptk.runs import METRICS, RunDir

    synced = []
    real_fsync = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)
    run = RunDir(tmp_path / "run").acquire()
    try:
        for step in (1, 2):
            run.log({"step": step, "loss": 1.0})
            monkeypatch.setattr(os, "fsync", recording)
            run.save_checkpoint(step, {"soft": torch.zeros(2, 3)}, {"rng": []})
            monkeypatch.setattr(os, "fsync", real_fsync)
            assert synced and synced[0] == str(run.path / METRICS), synced
            synced.clear()
    finally:
        run.release()


def test_a_non_finite_step_stops_or_is_skipped(tmp_path, run_cli, monkeypatch):
    """A non-finite gradient at step 3: `stop` (the default) exits 2 naming the kept checkpoint, which is
    step 2's, with no posterior; the same --out again is refused, and with --overwrite replaced by a run
under `skip`, which skips that step's update and finishes."""
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = []

    def nan_at_step_3(params, max_norm, *args, **kwargs):
        calls.append(1)
        norm = real_clip(params, max_norm, *args, **kwargs)
        return torch.tensor(float("nan")) if len(calls) == 3 else norm
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_at_step_3)
    stopped = tmp_path / "stopped"
    code, _, err = run_cli("tune", *TINY, "--steps", "4", "--checkpoint-every", "1", "--out", stopped)
    assert code == 2 and "non-finite" in err and "checkpoint is kept" in err, err
    assert (stopped / "checkpoint" / "latest").read_text().strip() == "step-00000002"
    assert not (stopped / "posterior.safetensors").exists()
    calls.clear()
    code, _, err = run_cli("tune", *TINY, "--steps", "4", "--nan-policy", "skip", "--out", stopped)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err, err
    code, _, err = run_cli("tune", *TINY, "--steps", "4", "--nan-policy", "skip", "--out", stopped, "--overwrite")
    assert code == 0, err
    trained = [r for r in rows(stopped) if "loss" in r]  # the stopped run replaced: none of its rows left
    assert [r["step"] for r in trained] == [1, 2, 3, 4] and math.isnan(trained[2]["grad_norm"])
    assert (stopped / "posterior.safetensors").exists()
    assert sorted(p.name for p in (stopped / "checkpoint").glob("step-*")) == ["step-00000002", "step-00000004"]
