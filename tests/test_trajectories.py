"""Generated trajectories: the localization measure on planted trajectories, the generated tokens' hidden states of a
prompted model (equal to an unpadded forward of each prompt alone), and `eptk analyze --trajectories N`."""
import csv
import math

import pytest
import torch

from eptk import metrics as M


def data_cloud(n=2000, d=12, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 3


def test_random_data_tokens_are_not_localized():
    data = data_cloud()
    walk = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(1))[:40]]
    out = M.trajectory_against_data(walk, data)
    assert 0.85 < out["step_ratio"] < 1.15 and 0.85 < out["spread_ratio"] < 1.15, out
    assert out["order_p"] > 0.05 and out["points"] == 40


def test_a_slow_drift_is_localized_and_ordered():
    data = data_cloud()
    g = torch.Generator().manual_seed(2)
    drift = data[0] + torch.cumsum(torch.randn(40, 12, generator=g) * 0.05, dim=0)  # small steps, one region
    out = M.trajectory_against_data(drift, data)
    assert out["step_ratio"] < 0.1 and out["spread_ratio"] < 0.2, out
    assert out["order_p"] < 0.01, "consecutive states are much closer than in a shuffled order"
    # a straight line through the data: long steps, but still ordered (shuffling makes steps longer)
    line = torch.linspace(-3, 3, 30).unsqueeze(1) * data.std(0) * 2
    lined = M.trajectory_against_data(line, data)
    assert lined["order_p"] < 0.01 and lined["spread_ratio"] > 0.5


def test_steps_and_spread_are_exact_on_a_hand_example():
    data = torch.tensor([[0.0, 0.0], [2.0, 0.0]])              # random walk step: always 2; radius 1
    states = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    out = M.trajectory_against_data(states, data, walk_pairs=64)
    assert out["mean_step"] == pytest.approx(1.0) and out["walk_step"] == pytest.approx(2.0)
    assert out["step_ratio"] == pytest.approx(0.5) and out["data_radius"] == pytest.approx(1.0)
    centre = states.mean(0)
    assert out["radius"] == pytest.approx(float((states - centre).norm(dim=1).mean()))
    assert math.isnan(M.trajectory_against_data(states[:1], data)["step_ratio"])


@pytest.mark.parametrize("method,layers", [("deep", "last:2"), ("soft", "all")])
def test_generated_states_equal_each_prompt_alone(tiny_models, method, layers):
    """Batched, left-padded generation gives every prompt the continuation and the states it gets alone."""
    from eptk.capture import generated_states
    from test_two_pass import make_prompted

    loaded = tiny_models["llama"]
    prompted = make_prompted(loaded, method, layers)
    try:
        prompts = ["12+34=", "7=", "Question: who?\nAnswer:"]
        together = generated_states(prompted, prompts, [0, 2, 3], new_tokens=5, batch_size=3)
        emb = loaded.model.get_input_embeddings().weight
        for prompt, got in zip(prompts, together):
            (alone,) = generated_states(prompted, [prompt], [0, 2, 3], new_tokens=5)
            assert got.text == alone.text and got.prompt == prompt
            for l in (0, 2, 3):
                assert got.states[l].shape == (5, 64)
                torch.testing.assert_close(got.states[l], alone.states[l], rtol=1e-4, atol=1e-5)
            ids = torch.tensor(loaded.tokenizer(alone.text, add_special_tokens=False)["input_ids"])
            if len(ids) == 5:  # layer 0 holds the generated tokens' own embeddings
                torch.testing.assert_close(got.states[0], emb[ids].detach(), rtol=0, atol=1e-6)
    finally:
        prompted.remove_hooks()


def test_analyze_measures_trajectories_of_each_run(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    for name, method in (("deep", "deep"), ("soft", "soft")):
        layers = ["--layers", "last:2"] if method == "deep" else []  # soft has no layers to choose
        code, _, err = run_cli("tune", "--model", "tiny", "--method", method, *layers, "--tokens", "3",
                               "--steps", "2", "--batch-size", "2", "--eval-size", "2", "--test-size", "2", "--quiet",
                               "--out", tmp_path / "runs" / name)
        assert code == 0, err
    out = tmp_path / "analysis"
    code, _, err = run_cli("analyze", tmp_path / "runs", "--out", out, "--no-vocab", "--trajectories", "3",
                           "--trajectory-tokens", "4")
    assert code == 0, err
    from eptk.analysis.trajectories import TRAJECTORY_COLUMNS
    with open(out / "trajectories.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == list(TRAJECTORY_COLUMNS)
    layers = {run: sorted({int(r["layer"]) for r in rows if r["run"] == run}) for run in ("deep", "soft")}
    assert layers == {"deep": [0, 2, 3], "soft": [0]}
    assert len(rows) == 3 * 3 + 3 * 1
    assert all(int(r["points"]) == 4 and float(r["step_ratio"]) >= 0 and 0 < float(r["order_p"]) <= 1 for r in rows)
    assert (out / "plots" / "trajectories.png").read_bytes().startswith(b"\x89PNG")


def test_trajectory_table_reads_back_as_written(tmp_path):
    from eptk.analysis.write import has_trajectories, read_trajectories, write_trajectories

    row = {"run": "r", "model": "tiny", "task": "arith", "trajectory": 1, "layer": 27, "prompt": "1+2=",
           "generated": "3", "points": 4, "mean_step": 0.5, "walk_step": 2.0, "step_ratio": 0.25, "radius": 1.0,
           "data_radius": 2.0, "spread_ratio": 0.5, "order_p": 0.01}
    assert not has_trajectories(tmp_path)
    write_trajectories(tmp_path, [row, dict(row, step_ratio=float("nan"))])
    first, second = read_trajectories(tmp_path)
    assert first == row and type(first["layer"]) is int and type(first["radius"]) is float
    assert second["step_ratio"] is None  # not measured: an empty cell


def test_each_task_is_measured_against_its_own_data(tmp_path, run_cli, monkeypatch):
    """A run generating on several tasks: each task's trajectories are compared with that task's captured tokens,
    not with the run's training task's (claim 3 of the study reads these rows)."""
    from eptk.analysis import trajectories as T
    from eptk.models import load_model
    from eptk.stats_cache import StatsCache

    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli("tune", "--model", "tiny", "--method", "soft", "--tokens", "4", "--steps", "2",
                           "--batch-size", "4", "--eval-size", "4", "--test-size", "4", "--train-size", "16",
                           "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    seen = []
    real = M.trajectory_against_data

    def recording(states, data, **kw):
        seen.append(data)
        return real(states, data, **kw)
    monkeypatch.setattr(T.M, "trajectory_against_data", recording)
    models = {"tiny": load_model("tiny")}
    rows, _ = T.run_trajectories([tmp_path / "run"], n=2, new_tokens=3, n_perm=5, tasks=["arith", "qa", "fill"],
                                 models=models, progress=False)
    stats = StatsCache(models["tiny"], "tiny", "arith", progress=False)
    assert len(rows) == len(seen) and {r["task"] for r in rows} == {"arith", "qa", "fill"}
    for row, data in zip(rows, seen):
        assert torch.equal(data, stats(row["task"], row["layer"]).samples), (row["task"], row["layer"])
