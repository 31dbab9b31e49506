"""`eptk analyze` over synthetic run directories and activation statistics (no real model)."""
import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eptk.analysis import SUMMARY_COLUMNS, SUMMARY_COLUMNS_MARKDOWN, AnalysisOptions, analyze_runs
from eptk.runs import find_runs
from eptk.errors import EptkUsageError
from eptk.io import save_tensors_atomic, write_json_atomic

D, V, P = 16, 300, 8
MODEL = "fake-model"
PNG = b"\x89PNG\r\n\x1a\n"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def vocabulary():
    emb = torch.randn(V, D, generator=gen(0))
    return emb, [f"tok{i}" for i in range(V)]


def task_gaussian(task):
    """Planted task clusters: each task's activations at each layer are one Gaussian."""
    offset = {"taskA": 0.0, "taskB": 6.0}[task]
    mixing = torch.randn(D, D, generator=gen(1)) / 4 + torch.eye(D)
    return mixing, offset


def write_stats(folder: Path, task: str, n=400):
    mixing, offset = task_gaussian(task)
    tensors = {}
    for layer in (0, 2):
        samples = torch.randn(n, D, generator=gen(10 + layer + int(offset))) @ mixing + offset + layer
        tensors[f"layer{layer}.mean"] = samples.mean(0)
        tensors[f"layer{layer}.cov"] = torch.cov(samples.T)
        tensors[f"layer{layer}.count"] = torch.tensor(n)
        tensors[f"layer{layer}.samples"] = samples
    folder.mkdir(parents=True)
    save_tensors_atomic(folder / "stats.safetensors", tensors)
    write_json_atomic(folder / "meta.json", {"model": MODEL, "task": task, "layers": [0, 2]})
    return folder


def write_run(folder: Path, name, method, prior_spec, prior, posterior, *, layers=(), complete=True, prefix_mass=None):
    folder.mkdir(parents=True)
    write_json_atomic(folder / "config.json", {
        "model": MODEL, "task": "taskA", "method": method, "prior": prior_spec, "prior_weight": 0.0, "tokens": P,
        "layers": list(layers), "soft": True, "steps": 40, "lr": 1e-3, "seed": 0, "hidden_size": D, "num_layers": 4,
        "name": name})
    save_tensors_atomic(folder / "prior.safetensors", prior)
    if posterior is not None:
        save_tensors_atomic(folder / "posterior.safetensors", posterior)
    lines = []
    for step in range(0, 41, 5):
        row = {"step": step, "loss": 3.0 / (1 + step / 10), "lr": 1e-3}
        if step % 10 == 0:
            row.update(val_loss=3.0 / (1 + step / 10) + 0.1, val_score=step / 50)
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n"
    if not complete:
        text += '{"step": 45, "loss": 0.5, "l'  # a run still writing: partial last line
    (folder / "metrics.jsonl").write_text(text)
    if complete:
        ev = {"baseline": {"score": 0.1, "loss": 3.1, "metric": "exact_match"},
              "tuned": {"score": 0.8, "loss": 0.7, "metric": "exact_match"}}
        if prefix_mass:
            ev["prefix_mass"] = prefix_mass
        write_json_atomic(folder / "eval.json", ev)
    (folder / "checkpoint").mkdir()
    write_json_atomic(folder / "checkpoint" / "config.json", {"not": "a run"})  # an HF checkpoint config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    runs = root / "runs"
    emb, _ = vocabulary()
    mixing, offset = task_gaussian("taskA")
    normal = lambda seed, shape=(P, D): torch.randn(*shape, generator=gen(seed)) * 0.02  # noqa: E731
    ids = list(range(40, 40 + P))
    # 1: soft prompt collapsed onto exact vocabulary rows
    write_run(runs / "collapse", "collapse", "soft", "normal:0.02", {"soft": normal(1)}, {"soft": emb[ids].clone()})
    # 2: deep prompt whose layer-2 posterior is drawn from the task's data Gaussian
    data_post = torch.randn(30, D, generator=gen(13)) @ mixing + offset + 2
    write_run(runs / "deep-data", "deep-data", "deep", "xavier", {"soft": normal(2), "deep.2": normal(3, (30, D))},
              {"soft": normal(4), "deep.2": data_post}, layers=[2],
              prefix_mass={"layer0": [0.1, 0.2], "layer1": [0.3, 0.05], "layer2": [0.6, 0.4]})
    # 3: in progress, deep.2 far outside the data: no eval.json, truncated metrics line
    write_run(runs / "deep-far", "deep-far", "deep", "region:new", {"soft": normal(5), "deep.2": data_post + 30},
              {"soft": normal(6), "deep.2": data_post + 40}, layers=[2], complete=False)
    # 4: prefix keys/values [Hkv, P, D]; 5: just started, prior only
    write_run(runs / "prefix", "prefix", "prefix", "normal", {"prefix.1.key": normal(7, (2, P, 4)), "prefix.1.value": normal(8, (2, P, 4))},
              {"prefix.1.key": normal(9, (2, P, 4)), "prefix.1.value": normal(10, (2, P, 4))})
    write_run(runs / "started", "started", "soft", "vocab", {"soft": emb[:P].clone()}, None, complete=False)
    stats = [write_stats(root / "stats_a", "taskA"), write_stats(root / "stats_b", "taskB")]
    out = root / "analysis"
    opts = AnalysisOptions(n_perm=100, max_data=400)
    result = analyze_runs([runs], out, stats=stats, vocab={MODEL: vocabulary()}, options=opts, progress=False)
    return {"root": root, "runs": runs, "out": out, "result": result, "stats": stats}


def rows_by(result, run, block):
    [row] = [r for r in result.rows if r["run"] == run and r["block"] == block]
    return row


def test_runs_are_found_and_checkpoints_skipped(world):
    found = find_runs([world["runs"]])
    assert [p.name for p in found] == ["collapse", "deep-data", "deep-far", "prefix", "started"]
    assert find_runs([world["runs"] / "collapse"]) == [world["runs"] / "collapse"]


def test_no_runs_is_a_usage_error(tmp_path):
    with pytest.raises(EptkUsageError, match=r"no runs found under .*: a run directory holds config.json"):
        analyze_runs([tmp_path], tmp_path / "out", progress=False)


def test_collapsed_posterior(world):
    row = rows_by(world["result"], "collapse", "soft")
    assert row["post_collapsed_share"] == 1.0
    assert row["post_max_cos"] == pytest.approx(1.0)
    assert row["nn_kept_share"] < 0.5  # a tiny normal prior is near other tokens
    assert row["ref_kind"] == "vocabulary" and row["data_task"] == "taskA"
    assert row["disp_l2"] > 0 and row["status"] == "complete" and row["tuned_score"] == 0.8
    assert row["steps_to_95"] == 40 and row["final_val_loss"] == pytest.approx(0.7)
    slots = world["result"].details["collapse"]["soft"]["posterior"]
    assert [s["tokens"][0] for s in slots] == [f"tok{i}" for i in range(40, 40 + P)]


def test_collapse_threshold_is_the_999th_percentile_of_token_pair_cosines(world):
    """The threshold's value, against every pair of the vocabulary (the metric samples 100,000 pairs): a
    quantile of 0.5 (~0 here) or 0.99 instead of 0.999 fails."""
    emb, _ = vocabulary()
    unit = emb / emb.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(V, V, offset=1)
    cos = (unit[i] * unit[j]).sum(1)
    exact = float(torch.quantile(cos, 0.999))
    row = rows_by(world["result"], "collapse", "soft")
    assert row["collapse_threshold"] == pytest.approx(exact, abs=0.02)
    assert abs(float(torch.quantile(cos, 0.99)) - exact) > 0.05 and abs(float(cos.median()) - exact) > 0.3


def test_a_torn_last_log_line_is_ignored(world, tmp_path):
    """metrics.jsonl cut mid-line (a crash while a row was written): the rows before it are read, no note."""
    run = tmp_path / "runs" / "collapse"
    shutil.copytree(world["runs"] / "collapse", run)
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + text.splitlines()[-1][:17])
    result = analyze_runs([run], tmp_path / "out", vocab=None, plots=False, progress=False,
                          options=AnalysisOptions(n_perm=10))
    assert result.rows[0]["final_val_loss"] == pytest.approx(3.0 / 5 + 0.1)
    assert not any("metrics.jsonl" in n for n in result.notes), result.notes


def test_a_damaged_log_line_is_a_note(world, tmp_path):
    """A broken line before the last one in metrics.jsonl is named in a note; the run is still measured."""
    run = tmp_path / "runs" / "collapse"
    shutil.copytree(world["runs"] / "collapse", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ['{"step": 7, "lo'] + lines[2:]) + "\n")
    result = analyze_runs([run], tmp_path / "out", vocab=None, plots=False, progress=False,
                          options=AnalysisOptions(n_perm=10))
    assert result.rows and result.rows[0]["final_val_loss"] is None
    assert any("metrics.jsonl:3 is not valid JSON" in n for n in result.notes)


def test_region_metrics_planted(world):
    inside = rows_by(world["result"], "deep-data", "deep.2")
    far = rows_by(world["result"], "deep-far", "deep.2")
    assert inside["post_inside_share"] >= 0.9 and inside["post_mmd_p"] > 0.05
    assert inside["region_radius_kind"] == "empirical" and inside["space"] == "activation"
    assert far["post_inside_share"] == 0.0 and far["post_mmd_p"] < 0.05 and far["post_knn_precision"] == 0.0
    assert far["status"] == "in progress" and far["last_step"] == 40  # the partial line is skipped
    assert far["tuned_score"] is None


def test_prefix_and_prior_only_runs(world):
    key = rows_by(world["result"], "prefix", "prefix.1.key")
    assert key["space"] == "key" and key["layer"] == 1 and key["n_vectors"] == P and key["dim"] == 8
    assert key["post_maha_mean"] is None and key["disp_l2"] > 0
    started = rows_by(world["result"], "started", "soft")
    assert started["prior_collapsed_share"] == 1.0 and started["post_norm_mean"] is None and started["disp_l2"] is None
    assert any("started" in n and "posterior" in n for n in world["result"].notes)


def test_task_clusters(world):
    result = world["result"]
    assert {r["layer"] for r in result.task_rows} == {0, 2}
    assert all(r["silhouette"] > 0.5 and r["nc1"] < 0.5 for r in result.task_rows)
    assert all(r["frechet"] > 100 for r in result.frechet_rows)  # offset 6 in 16 dims: ‖Δμ‖² = 576


def test_task_clusters_subsample_each_task_to_max_per_task(world):
    """Fewer than the captured samples: each task's cluster and map points are `max_per_task` of them."""
    from eptk.analysis.measure import task_cluster_metrics
    from eptk.analysis.read import load_stats

    stats = [load_stats(path) for path in world["stats"]]
    assert all(s.samples(0).shape[0] > 50 for s in stats)
    rows, _, panels = task_cluster_metrics(stats, max_per_task=50)
    assert rows and all(r["n_per_task"] == 50 for r in rows)
    assert all(points.shape[0] == 50 for panel in panels for points in panel["groups"].values())


def test_outputs_written(world):
    out = world["out"]
    with open(out / "summary.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(SUMMARY_COLUMNS)
        rows = list(reader)
    assert len(rows) == len(world["result"].rows) == 1 + 2 + 2 + 2 + 1
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == len(rows) and set(summary[0]) == set(SUMMARY_COLUMNS)
    assert json.loads((out / "tasks.json").read_text())["clusters"]
    for name in ("run_collapse_pca.png", "run_deep-data_pca.png", "run_prefix_pca.png", "val_curves.png",
                 "score_vs_distance.png", "task_clusters.png", "run_deep-data_prefix_mass.png"):
        assert (out / "plots" / name).read_bytes().startswith(PNG), name
    html = (out / "report.html").read_text()
    assert html.index("Findings") < html.index("<img")
    assert [f["run"] for f in world["result"].findings] == ["collapse", "deep-data", "deep-far", "prefix", "started"]
    for column in ("post_mmd_p", "steps_to_95"):
        assert f"`{column}`" in SUMMARY_COLUMNS_MARKDOWN or column in SUMMARY_COLUMNS_MARKDOWN


def _img_sources(html):
    return re.findall(r"<img[^>]*\bsrc='([^']*)'", html) + re.findall(r'<img[^>]*\bsrc="([^"]*)"', html)


def test_report_images_are_png_data_uris(world):
    html = (world["out"] / "report.html").read_text()
    sources = _img_sources(html)
    assert len(sources) == html.count("<img") >= 7
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)


def test_vocabulary_failure_is_a_note_not_a_crash(world, tmp_path):
    def broken(name):
        raise RuntimeError("cannot load weights")

    result = analyze_runs([world["runs"] / "collapse"], tmp_path / "out", vocab=broken, plots=False,
                          options=AnalysisOptions(n_perm=20), progress=False)
    assert result.rows[0]["post_collapsed_share"] is None
    assert any("vocabulary metrics skipped" in n and "cannot load weights" in n for n in result.notes)
    assert "vocabulary metrics skipped" in (tmp_path / "out" / "report.html").read_text()


def test_unreadable_parts_are_notes(world, tmp_path):
    run = tmp_path / "runs" / "broken"
    shutil.copytree(world["runs"] / "collapse", run)
    (run / "posterior.safetensors").write_bytes(b"\x00garbage")
    (run / "eval.json").write_text('{"baseline": 0.3, "tuned": ')
    result = analyze_runs([tmp_path / "runs"], tmp_path / "out", vocab=None, plots=False,
                          options=AnalysisOptions(n_perm=20), progress=False)
    [row] = result.rows
    assert row["prior_norm_mean"] is not None and row["post_norm_mean"] is None and row["status"] == "in progress"
    assert any("not a readable safetensors file" in n for n in result.notes)
    assert any("eval" in n and "not valid JSON" in n for n in result.notes)


def test_cli_analyze(world, tmp_path):
    from typer.testing import CliRunner

    from eptk.cli.main import app  # a broken CLI module fails here, it is not skipped
    out = tmp_path / "cli_out"
    result = CliRunner().invoke(app, ["analyze", str(world["runs"] / "collapse"), str(world["runs"] / "started"),
                                      "--out", str(out), "--no-vocab", "--no-plots", "--permutations", "20",
                                      "--stats", str(world["stats"][0])])
    assert result.exit_code == 0, result.output
    assert (out / "summary.csv").is_file() and (out / "report.html").is_file()
    assert "findings" in result.output and "wrote" in result.output


def test_cli_no_runs_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "eptk.cli", "analyze", str(tmp_path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no runs found under" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_task_cluster_maps_by_tsne(world, tmp_path):
    """--tsne draws the task-cluster maps by t-SNE; the cluster numbers do not change."""
    from eptk.analysis import AnalysisOptions, analyze_runs
    out = tmp_path / "tsne"
    result = analyze_runs([world["runs"]], out, stats=world["stats"], vocab=None, plots=True,
                          options=AnalysisOptions(n_perm=20, cluster_projection="tsne"), progress=False)
    assert (out / "plots" / "task_clusters.png").is_file()
    assert [r["silhouette"] for r in result.task_rows] == [r["silhouette"] for r in world["result"].task_rows]
