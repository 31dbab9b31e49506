"""--early-stop: a run stops once N validations in a row do not improve its best validation loss, keeps the prompt of
its best validation, records where in eval.json, and a resumed copy of a stopped run stays stopped. Every run keeps
each test item's prediction in predictions.jsonl, and `eptk eval --save` adds a larger evaluation beside it."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

BASE = ["--model", "tiny", "--method", "soft", "--tokens", "4", "--batch-size", "4", "--warmup", "1",
        "--eval-size", "8", "--test-size", "12", "--train-size", "64", "--quiet"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_run_that_stops_improving_stops_and_keeps_its_best_prompt(tmp_path, run_cli):
    out = tmp_path / "run"
    # a learning rate this small cannot improve the validation loss by 50%: the prior's stays the best
    code, _, err = run_cli("tune", *BASE, "--lr", "1e-9", "--steps", "50", "--eval-every", "2", "--early-stop", "3",
                           "--early-stop-delta", "0.5", "--checkpoint-every", "1", "--out", out)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    assert result["early_stop"] == {"patience": 3, "delta": 0.5, "stopped": True, "step": 6, "best_step": 0,
                                    "best_val_loss": pytest.approx(result["early_stop"]["best_val_loss"])}
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert max(steps) == 6, "trained past the stop"
    best = load_file(str(out / "prior.safetensors"))["soft"]
    assert torch.equal(load_file(str(out / "posterior.safetensors"))["soft"], best)

    # killed after its stop was decided (checkpoint written, no posterior yet): --resume ends it the same way
    again = tmp_path / "again"
    shutil.copytree(out, again)
    for name in ("eval.json", "posterior.safetensors", "predictions.jsonl"):
        (again / name).unlink()
    code, _, err = run_cli("tune", "--resume", again, "--quiet")
    assert code == 0, err
    assert json.loads((again / "eval.json").read_text())["early_stop"]["step"] == 6
    assert torch.equal(load_file(str(again / "posterior.safetensors"))["soft"], best)


def test_best_prompt_is_the_one_with_the_lowest_validation_loss(tmp_path, run_cli):
    """The kept prompt is the best validation's, not the last step's: on the tiny model a learning rate of 10 makes
    every validation worse than the prior's, so the run, never stopped, ends with its prior."""
    out = tmp_path / "run"
    code, _, err = run_cli("tune", *BASE, "--lr", "10", "--clip", "0", "--schedule", "constant", "--steps", "12",
                           "--eval-every", "2", "--early-stop", "40", "--checkpoint-every", "2", "--out", out)
    assert code == 0, err
    rows = read_jsonl(out / "metrics.jsonl")
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r and ("loss" in r or r["step"] == 0)}
    summary = json.loads((out / "eval.json").read_text())["early_stop"]
    assert not summary["stopped"] and summary["best_step"] == min(val, key=val.get) == 0, val
    assert summary["best_val_loss"] == pytest.approx(min(val.values()))
    assert torch.equal(load_file(str(out / "posterior.safetensors"))["soft"],
                       load_file(str(out / "prior.safetensors"))["soft"]), "posterior is not the best prompt"


def test_early_stop_needs_validation(tmp_path, run_cli):
    code, _, err = run_cli("tune", *BASE, "--steps", "4", "--eval-every", "0", "--early-stop", "2",
                           "--out", tmp_path / "run")
    assert code == 2 and "--early-stop" in err and "--eval-every" in err
    assert not (tmp_path / "run").exists()


def test_predictions_hold_every_test_item(tmp_path, run_cli):
    from eptk.tasks import load_task

    out = tmp_path / "run"
    code, _, err = run_cli("tune", *BASE, "--steps", "3", "--eval-every", "0", "--out", out)
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())
    rows = read_jsonl(out / "predictions.jsonl")
    test = load_task("arith", 0).examples("test", 12)
    assert [r["prompt"] for r in rows] == [e.prompt for e in test]
    assert [r["answer"] for r in rows] == [e.answer for e in test]
    assert 100 * sum(r["exact_match"] for r in rows) / 12 == pytest.approx(result["tuned"]["score"])
    assert 100 * sum(r["baseline_exact_match"] for r in rows) / 12 == pytest.approx(result["baseline"]["score"])
    assert "items" not in result["tuned"] and "items" not in result["baseline"]
    for which, prefix in (("tuned", ""), ("baseline", "baseline_")):   # row i is item i, for both prompts
        shown = result[which]["examples"]
        assert [r[prefix + "prediction"] for r in rows[:len(shown)]] == [e["prediction"] for e in shown]

    code, _, err = run_cli("eval", out, "--size", "20", "--save", "--device", "cpu")
    assert code == 0, err
    larger = json.loads((out / "eval-test-20.json").read_text())
    more = read_jsonl(out / "predictions-test-20.jsonl")
    assert len(more) == 20 and [r["prompt"] for r in more[:12]] == [e.prompt for e in test]
    assert 100 * sum(r["exact_match"] for r in more) / 20 == pytest.approx(larger["tuned"]["score"])
    # the first 12 of 20 items are the run's own test items, with the same predictions
    assert [r["prediction"] for r in more[:12]] == [r["prediction"] for r in rows]
    from eptk.runs import RunDir
    assert [s.get("split") for s, _ in RunDir(out).evaluations()] == ["test", "test"]
