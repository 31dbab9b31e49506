"""`eptk analyze` on prefix runs measures each key (value) block against the task's captured keys (values) of its
layer: a region:data run finds them through config.json, a normal-prior run through `--stats` of an
`eptk capture --space key/value`; a prefix run given only activation statistics says so in a note."""
import json
from pathlib import Path

import pytest
import torch

from eptk.analysis import analyze_runs
from eptk.analysis.measure import AnalysisOptions
from eptk.io import in_cache
from eptk.runs import RunDir
from eptk.spaces import slot_rows
from eptk.stats import ActivationStats

TUNE = ["tune", "--model", "tiny", "--task", "arith", "--steps", "2", "--batch-size", "2", "--test-size", "2",
        "--eval-size", "2", "--train-size", "16", "--tokens", "4", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from eptk.cli.main import main

    root = tmp_path_factory.mktemp("kv")
    mp = pytest.MonkeyPatch()
    mp.setenv("EPTK_CACHE", str(root / "cache"))
    try:
        assert main([*TUNE, "--method", "prefix", "--prior", "region:data", "--out", str(root / "runs" / "kv-data")]) == 0
        assert main([*TUNE, "--method", "prefix", "--prior", "normal", "--out", str(root / "runs" / "kv-normal")]) == 0
        for space in ("key", "value", "activation"):
            assert main(["capture", "--model", "tiny", "--task", "arith", "--space", space, "--examples", "64",
                         "--quiet", "--out", str(root / space)]) == 0
        yield root
    finally:
        mp.undo()


def rows_of(result, run):
    return {r["block"]: r for r in result.rows if r["run"] == run}


def test_region_data_run_is_measured_against_its_captured_keys_values(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(runs / "cache"))
    run = runs / "runs" / "kv-data"
    config = json.loads((run / "config.json").read_text())
    assert set(config["stats"]) == {"key:arith", "value:arith"}, config["stats"]
    result = analyze_runs([run], tmp_path / "out", vocab=None, plots=False, progress=False,
                          options=AnalysisOptions(n_perm=10))
    rows = rows_of(result, "kv-data")
    posterior = RunDir(run).tensors("posterior")
    assert len(rows) == 2 * 4
    for name, row in rows.items():
        _, layer, space = name.split(".")
        assert row["space"] == space and row["layer"] == int(layer) and row["data_task"] == "arith", row
        stats = ActivationStats.load(in_cache(config["stats"][f"{space}:arith"])).layer(int(layer))
        assert stats.dim == row["dim"] == 32
        # the Mahalanobis distance of the posterior's slot rows under this layer's captured keys (values)
        theirs = float(stats.mahalanobis(slot_rows(posterior[name])).mean())
        assert row["post_maha_mean"] == pytest.approx(theirs, rel=1e-3), (name, row["post_maha_mean"], theirs)
        assert row["post_inside_share"] is not None and row["post_knn_precision"] is not None
        assert row["prior_maha_mean"] < 3 * stats.dim ** 0.5   # a sample of the data Gaussian sits in the data
    assert not any("skipped" in n for n in result.notes), result.notes


def test_normal_run_with_captured_keys_values(runs, tmp_path):
    result = analyze_runs([runs / "runs" / "kv-normal"], tmp_path / "out", stats=[runs / "key", runs / "value"],
                          vocab=None, plots=True, progress=False, options=AnalysisOptions(n_perm=10))
    rows = rows_of(result, "kv-normal")
    key, value = ActivationStats.load(runs / "key"), ActivationStats.load(runs / "value")
    posterior = RunDir(runs / "runs" / "kv-normal").tensors("posterior")
    for name, row in rows.items():
        _, layer, space = name.split(".")
        stats = (key if space == "key" else value).layer(int(layer))
        theirs = float(stats.mahalanobis(slot_rows(posterior[name])).mean())
        assert row["post_maha_mean"] == pytest.approx(theirs, rel=1e-3), name
        assert row["ref_kind"] == "data"


def test_prefix_run_with_only_activation_statistics_says_so(runs, tmp_path):
    result = analyze_runs([runs / "runs" / "kv-normal"], tmp_path / "out", stats=[runs / "activation"], vocab=None,
                          plots=False, progress=False, options=AnalysisOptions(n_perm=10))
    assert all(r["post_maha_mean"] is None for r in result.rows)
    for space in ("key", "value"):
        assert any(f"no captured {space} statistics" in n and f"--space {space}" in n for n in result.notes), result.notes


def test_task_clusters_compare_keys_with_keys(runs, tmp_path, monkeypatch):
    """Key statistics of two tasks make key cluster rows of their own (never mixed with values or activations)."""
    from eptk.cli.main import main

    monkeypatch.setenv("EPTK_CACHE", str(runs / "cache"))
    assert main(["capture", "--model", "tiny", "--task", "fill", "--space", "key", "--examples", "64", "--quiet",
                 "--out", str(tmp_path / "fill-key")]) == 0
    result = analyze_runs([runs / "runs" / "kv-normal"], tmp_path / "out",
                          stats=[runs / "key", runs / "value", runs / "activation", tmp_path / "fill-key"],
                          vocab=None, plots=False, progress=False, options=AnalysisOptions(n_perm=10))
    assert {r["space"] for r in result.task_rows} == {"key"} and {r["layer"] for r in result.task_rows} == {0, 1, 2, 3}
    assert all(r["tasks"] == "arith;fill" for r in result.task_rows)


@pytest.mark.parametrize("args,message", [
    (["--method", "prefix", "--prior", "region:data", "--task", "arith", "--stats-samples", "8"], "stats-samples"),
    (["--method", "prefix", "--prior", "vocab"], "prefix key/value tensors take"),
    (["--method", "prefix-mlp", "--prior", "fitted"], "prefix key/value tensors take"),
    (["--method", "prefix", "--prior", "region:data:nosuchtask"], "nosuchtask"),
])
def test_bad_key_value_priors_are_one_line_usage_errors(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, _, err = run_cli(*TUNE, *args, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_capture_refuses_a_bad_space(run_cli, tmp_path):
    code, _, err = run_cli("capture", "--model", "tiny", "--space", "keys", "--out", tmp_path / "s")
    assert code == 2 and "activation, key, value" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_region_prior_on_a_task_without_train_examples(run_cli, tmp_path, monkeypatch):
    """A prefix region prior whose task has no train examples to capture keys/values from: one line, exit 2, no run."""
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    rows = tmp_path / "only-test.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1), "split": "test"}) + "\n"
                            for i in range(8)))
    out = tmp_path / "run"
    code, _, err = run_cli(*TUNE, "--method", "prefix", "--prior", f"region:data:jsonl:{rows}", "--out", out)
    assert code == 2 and "no training rows" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
