"""Run directories and statistics folders written by eptk 0.1 (committed fixtures from the tiny model,
made before the architecture redesign) still load, give the same numbers, and analyze the same.

tests/fixtures/run_v0_1: `eptk tune --model tiny --method deep --layers last:2 --tokens 4 --steps 3
--batch-size 2 --eval-size 2 --test-size 2 --checkpoint-every 0` (checkpoint/ removed);
tests/fixtures/stats_v0_1: `eptk capture --model tiny --samples 16 --examples 8`;
expected_v0_1.safetensors and summary_v0_1.json: what that code computed from them.
"""
import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
RUN, STATS = FIXTURES / "run_v0_1", FIXTURES / "stats_v0_1"


@pytest.fixture(scope="module")
def expected():
    from eptk.io import load_tensors
    return load_tensors(FIXTURES / "expected_v0_1.safetensors")


@pytest.fixture(scope="module")
def tuned():
    import eptk
    return eptk.load_run(RUN, backend="torch")


def test_load_run_gives_the_logits_of_the_posterior(tuned, expected):
    from reference_forward import full_forward

    with torch.no_grad():
        logits = tuned(expected["input_ids"], expected["attention_mask"]).logits
        full = full_forward(tuned, expected["input_ids"], expected["attention_mask"])
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    real = expected["attention_mask"].bool()
    torch.testing.assert_close(logits[real], full[real], rtol=1e-4, atol=1e-4)


def test_eval_loss_reproduces(tuned):
    from eptk.evaluate import answer_loss
    from eptk.tasks import load_task

    result = json.loads((RUN / "eval.json").read_text())
    test = load_task(tuned.config["task"], tuned.config["seed"]).examples("test", tuned.config["test_size"])
    assert answer_loss(tuned, tuned.tokenizer, test) == pytest.approx(result["tuned"]["loss"], rel=1e-5)


def test_stats_load_with_the_same_region(expected):
    from eptk.stats import ActivationStats

    stats = ActivationStats.load(STATS, model_name="tiny", hidden_size=64)
    assert stats.layers == [0, 1, 2, 3, 4]
    layer = stats.layer(2)
    torch.testing.assert_close(layer.shrunk_cov, expected["layer2.shrunk_cov"])
    from eptk.io import load_tensors
    post = load_tensors(RUN / "posterior.safetensors")["deep.2"]
    torch.testing.assert_close(layer.mahalanobis(post), expected["layer2.maha_post"])


def test_analyze_reads_the_run_and_measures_the_same(tmp_path):
    from eptk.analysis import AnalysisOptions, analyze_runs

    result = analyze_runs([RUN], tmp_path / "an", stats=[STATS], vocab="auto", plots=False,
                          options=AnalysisOptions(n_perm=20), progress=False)
    want = json.loads((FIXTURES / "summary_v0_1.json").read_text())
    got = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert [list(r) for r in got] == [list(r) for r in want]  # the same columns, in the same order
    for old, new in zip(want, got):
        for key, value in old.items():
            if key == "path":
                continue
            if isinstance(value, float):
                assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (old["block"], key)
            else:
                assert new[key] == value, (old["block"], key)
    assert result.rows
