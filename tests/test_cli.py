"""The CLI end to end on the tiny model: a run directory, load_run, eval/generate, bad input, resume, rerun."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from eptk.io import CRASH_AT, in_cache

TINY = ["--model", "tiny", "--steps", "4", "--batch-size", "4", "--eval-size", "4", "--test-size", "4",
        "--quiet", "--train-size", "64"]


def tensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    from eptk.cli.main import main
    out = tmp_path_factory.mktemp("runs") / "deep"
    assert main(["tune", *TINY, "--method", "deep", "--layers", "last:2", "--out", str(out)]) == 0
    return out


def test_run_directory_format(deep_run):
    names = {p.name for p in deep_run.iterdir()}
    assert {"config.json", "prior.safetensors", "posterior.safetensors", "metrics.jsonl", "eval.json",
            "checkpoint"} <= names
    config = json.loads((deep_run / "config.json").read_text())
    for key in ("model", "task", "method", "prior", "seed", "tokens", "layers", "versions", "lr", "steps"):
        assert key in config
    assert config["layers"] == [2, 3]
    post = tensors(deep_run / "posterior.safetensors")
    assert set(post) == {"soft", "deep.2", "deep.3"} and post["soft"].shape == (20, 64)
    prior = tensors(deep_run / "prior.safetensors")
    assert not torch.equal(prior["soft"], post["soft"]), "training moved the prompt"
    rows = [json.loads(l) for l in (deep_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    result = json.loads((deep_run / "eval.json").read_text())
    assert {"baseline", "tuned", "prefix_mass"} <= set(result)
    assert len(result["prefix_mass"]) == 4 and all(0 <= m <= 1 for h in result["prefix_mass"].values() for m in h)
    # the items went to predictions.jsonl (evaluate.item_rows), one row per test item with both predictions
    assert "items" not in result["tuned"] and "items" not in result["baseline"]
    items = [json.loads(l) for l in (deep_run / "predictions.jsonl").read_text().splitlines()]
    assert len(items) == result["tuned"]["n"] == 4 and all({"prediction", "baseline_prediction"} <= set(r) for r in items)


def test_load_run_is_callable_like_hf(deep_run):
    import eptk
    tuned = eptk.load_run(deep_run)
    enc = tuned.tokenizer(["12+34="], return_tensors="pt")
    out = tuned(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert out.logits.shape == (1, enc["input_ids"].shape[1], len(tuned.tokenizer))
    gen = tuned.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=3)
    assert gen.shape[1] <= enc["input_ids"].shape[1] + 3
    assert tuned.config["method"] == "deep" and tuned.model is not None


def test_eval_and_generate_commands(deep_run, run_cli):
    code, out, err = run_cli("eval", deep_run, "--size", "4")
    assert code == 0, err
    assert json.loads(out)["tuned"]["n"] == 4
    code, out, err = run_cli("generate", deep_run, "12+34=", "--max-new-tokens", "3")
    assert code == 0, err


@pytest.mark.parametrize("method", ["soft", "prefix"])
def test_other_methods_run(tmp_path, run_cli, method):
    code, out, err = run_cli("tune", *TINY, "--method", method, "--out", tmp_path / method)
    assert code == 0, err
    assert "tuned" in out


def test_same_seed_same_posterior(tmp_path, run_cli):
    for name in ("a", "b"):
        assert run_cli("tune", *TINY, "--method", "soft", "--out", tmp_path / name)[0] == 0
    a, b = tensors(tmp_path / "a/posterior.safetensors"), tensors(tmp_path / "b/posterior.safetensors")
    assert torch.equal(a["soft"], b["soft"])


def test_rerun_from_config(tmp_path, deep_run, run_cli):
    code, _, err = run_cli("tune", "--config", deep_run / "config.json", "--out", tmp_path / "again", "--quiet")
    assert code == 0, err
    a, b = tensors(deep_run / "posterior.safetensors"), tensors(tmp_path / "again/posterior.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_posterior_as_prior(tmp_path, deep_run, run_cli):
    code, _, err = run_cli("tune", *TINY, "--method", "deep", "--layers", "last:2", "--prior",
                           f"posterior:{deep_run}", "--out", tmp_path / "next", "--prior-weight", "1")
    assert code == 0, err
    prior = tensors(tmp_path / "next/prior.safetensors")
    post = tensors(deep_run / "posterior.safetensors")
    assert all(torch.equal(prior[k], post[k]) for k in post)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "eptk.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_kill_and_resume_gives_the_same_posterior(tmp_path):
    """SIGKILL after a checkpoint, resume, and end bitwise where an uninterrupted run ends. The kill lands at a
    named moment (EPTK_CRASH_AT, eptk.io.crash_point): the 6th metrics line is step 5, one past the step-4
    checkpoint, so the resumed run must redo step 5 without logging it twice. A timed kill could land after
    a fast run had already finished."""
    args = [*TINY, "--method", "deep", "--layers", "last:2", "--steps", "8", "--checkpoint-every", "2"]
    assert _cli("tune", *args, "--out", tmp_path / "whole").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT}
    cut = subprocess.run([sys.executable, "-m", "eptk.cli", "tune", *args, "--out", str(tmp_path / "cut")],
                         capture_output=True, text=True, timeout=900, env=dict(env, **{CRASH_AT: "log:6"}))
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-2000:]
    assert (tmp_path / "cut/checkpoint/latest").read_text().strip() == "step-00000004"
    assert not (tmp_path / "cut/posterior.safetensors").exists(), "the run was killed before it finished"
    done = _cli("tune", "--resume", tmp_path / "cut", "--quiet")
    assert done.returncode == 0, done.stderr
    a, b = tensors(tmp_path / "whole/posterior.safetensors"), tensors(tmp_path / "cut/posterior.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(1, 9)), "no step logged twice or lost"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_writes_a_checkpoint(tmp_path, stop):
    sig = getattr(signal, stop)
    args = [*TINY, "--method", "soft", "--steps", "400", "--checkpoint-every", "0", "--out", str(tmp_path / "t")]
    proc = subprocess.Popen([sys.executable, "-m", "eptk.cli", "tune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "t/metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and stop in err and "Traceback" not in err
    assert (tmp_path / "t/checkpoint/latest").exists()


def test_tune_draws_its_progress_bar_unless_quiet(tmp_path):
    """eptk.progress.Bar as `eptk tune` draws it: the step count, the loss and the validation loss."""
    args = [a for a in TINY if a != "--quiet"]
    done = _cli("tune", *args, "--method", "soft", "--eval-every", "2", "--out", tmp_path / "t")
    assert done.returncode == 0, done.stderr[-2000:]
    shown = done.stdout + done.stderr
    assert "4/4" in shown and "loss " in shown and "tok/s" in shown and "val " in shown, shown[-2000:]


def test_region_prior_run_records_its_stats_for_analyze(tmp_path, run_cli, monkeypatch):
    """A region-prior run names the statistics it used; analyze measures against them without --stats."""
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "region"
    code, _, err = run_cli("tune", *TINY, "--method", "deep", "--layers", "last:2", "--prior", "region:data",
                           "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["stats"]["arith"].startswith("stats/"), "recorded relative to eptk's cache"
    assert (in_cache(config["stats"]["arith"]) / "stats.safetensors").is_file()
    code, _, err = run_cli("analyze", out, "--out", tmp_path / "analysis", "--no-vocab", "--no-plots",
                           "--permutations", "10")
    assert code == 0, err
    rows = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert any(r.get("data_task") == "arith" and r.get("post_inside_share") is not None for r in rows)


def test_device_map_auto_runs_and_changes_nothing_on_one_device(tmp_path, run_cli):
    """--device-map auto (accelerate) on a machine with one device ends where a plain run does."""
    for name, extra in (("plain", []), ("mapped", ["--device-map", "auto"])):
        code, _, err = run_cli("tune", *TINY, "--method", "prefix", "--out", tmp_path / name, *extra)
        assert code == 0, err
    a, b = tensors(tmp_path / "plain/posterior.safetensors"), tensors(tmp_path / "mapped/posterior.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "mapped/config.json").read_text())["device_map"] == "auto"


def test_zero_sizes_skip_their_evaluation_and_make_up_no_score(tmp_path, run_cli):
    """--test-size 0 (on a JSONL task, where it used to crash) skips the test evaluation and eval.json says
    so; --eval-size 0 skips validation; every option that may be 0 at 0 runs; --out's missing parents are
    made; analyze shows no score where none was measured."""
    rows = [json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) for a in range(10) for b in range(10)]
    (tmp_path / "sums.jsonl").write_text("\n".join(rows) + "\n")
    common = ["--model", "tiny", "--method", "soft", "--steps", "2", "--batch-size", "2", "--train-size", "8",
              "--quiet"]
    no_test = tmp_path / "a" / "b" / "no-test"
    code, out, err = run_cli("tune", *common, "--task", f"jsonl:{tmp_path / 'sums.jsonl'}", "--test-size", "0",
                             "--eval-size", "2", "--out", no_test)
    assert code == 0, err
    assert "test evaluation skipped (--test-size 0)" in out
    result = json.loads((no_test / "eval.json").read_text())
    assert result["skipped"] == "--test-size 0" and result["baseline"] is None and result["tuned"] is None
    final = [json.loads(l) for l in (no_test / "metrics.jsonl").read_text().splitlines()][-1]
    assert "val_loss" in final and "val_score" not in final and "loss" not in final
    no_val = tmp_path / "no-val"
    zeros = ["--eval-size", "0", "--warmup", "0", "--clip", "0", "--eval-every", "0", "--checkpoint-every", "0",
             "--weight-decay", "0", "--prior-weight", "0", "--seed", "0", "--test-size", "2"]
    code, _, err = run_cli("tune", *common, *zeros, "--out", no_val)
    assert code == 0, err
    logged = [json.loads(l) for l in (no_val / "metrics.jsonl").read_text().splitlines()]
    assert not any("val_loss" in r for r in logged) and [r["step"] for r in logged] == [1, 2, 2]
    assert json.loads((no_val / "eval.json").read_text())["tuned"]["n"] == 2
    code, _, err = run_cli("analyze", no_test, no_val, "--out", tmp_path / "analysis", "--no-vocab", "--no-plots",
                           "--permutations", "5")
    assert code == 0, err
    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    summary = summary["rows"] if isinstance(summary, dict) else summary
    by_run = {r["run"]: r for r in summary}
    assert by_run["no-test"]["tuned_score"] is None and by_run["no-test"]["baseline_score"] is None
    assert by_run["no-val"]["final_val_loss"] is None and by_run["no-val"]["tuned_score"] is not None
