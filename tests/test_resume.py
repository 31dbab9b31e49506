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
    for extra in ([], ["--steps", "4"], ["--quiet", "--device", "cpu"]):
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
    assert [r["step"] for r in logged if "loss" not in r] == [7], "one final row, no stale one from step 4"
    assert logged[:4] == rows(finished)[:4], "the first four steps are kept as they were"

    def cosine(step, total):  # warm-up 1, then cosine to 0 over `total` steps (step 0-based)
        return 0.05 * (1.0 if step < 1 else 0.5 * (1 + math.cos(math.pi * (step - 1) / (total - 1))))
    lrs = [r["lr"] for r in logged if "loss" in r]
    assert lrs == pytest.approx([cosine(s, 4) for s in range(4)] + [cosine(s, 7) for s in range(4, 7)])
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 7 and config["extensions"] == [{"at_step": 4, "steps": 4}]
    assert not same_tensors(run, finished) and json.loads((run / "eval.json").read_text())["tuned"]["n"] == 2
    again = tmp_path / "again"
    code, _, err = run_cli("tune", "--config", run / "config.json", "--out", again, "--quiet")
    assert code == 0, err
    assert same_tensors(run, again)
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
    lines = [l for l in (run / METRICS).read_text().splitlines() if "loss" in json.loads(l)]
    text = "\n".join(lines[:step + 1]) + "\n"
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
