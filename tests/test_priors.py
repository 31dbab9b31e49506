"""Every prior family that needs no captured statistics: shapes, seeding, log-density, bad specs."""
import math

import pytest
import torch

from eptk.errors import EptkUsageError
from eptk.priors import ParamInfo, PriorContext, build_prior, parse_spec


@pytest.fixture(scope="module")
def ctx(tiny_models):
    loaded = tiny_models["llama"]
    emb = loaded.model.get_input_embeddings().weight.detach().float()
    return PriorContext(embeddings=emb, tokenizer=loaded.tokenizer, model="tiny", seed=0)


PARAMS = {"soft": ParamInfo("soft", (6, 64), 0), "deep.2": ParamInfo("deep.2", (6, 64), 2)}


@pytest.mark.parametrize("spec", ["normal", "normal:0.1", "uniform", "uniform:0.2", "xavier", "vocab",
                                  "text:hello world", "fitted"])
def test_prior_samples_and_log_density(ctx, spec):
    prior = build_prior(spec, ctx, PARAMS)
    a = prior.sample(torch.Generator().manual_seed(1))
    b = prior.sample(torch.Generator().manual_seed(1))
    for name, info in PARAMS.items():
        assert a[name].shape == info.shape
        assert torch.equal(a[name], b[name]), "same seed, same sample"
    x = {k: v.clone().requires_grad_(True) for k, v in a.items()}
    lp = prior.log_prob(x)
    assert math.isfinite(float(lp.detach()))
    lp.backward()
    assert all(torch.isfinite(v.grad).all() for v in x.values())


def test_normal_log_density_is_exact(ctx):
    prior = build_prior("normal:0.5", ctx, {"soft": ParamInfo("soft", (2, 3), 0)})
    x = torch.randn(2, 3)
    ref = torch.distributions.Normal(0, 0.5).log_prob(x).sum()
    assert torch.allclose(prior.log_prob({"soft": x}), ref)


def test_vocab_samples_are_embedding_rows(ctx):
    prior = build_prior("vocab", ctx, {"soft": ParamInfo("soft", (5, 64), 0)})
    rows = prior.sample(torch.Generator().manual_seed(0))["soft"]
    assert bool((rows[:, None, :] == ctx.embeddings[None]).all(-1).any(-1).all())


def test_text_prior_cycles_the_text(ctx):
    prior = build_prior("text:ab", ctx, {"soft": ParamInfo("soft", (5, 64), 0)})
    rows = prior.sample(torch.Generator())["soft"]
    ids = ctx.tokenizer("ab", add_special_tokens=False)["input_ids"]
    expect = ctx.embeddings[torch.tensor([ids[i % 2] for i in range(5)])]
    assert torch.equal(rows, expect)


def test_fitted_matches_vocabulary_moments(ctx):
    prior = build_prior("fitted", ctx, {"soft": ParamInfo("soft", (4000, 64), 0)})
    rows = prior.sample(torch.Generator().manual_seed(0))["soft"]
    assert torch.allclose(rows.mean(0), ctx.embeddings.mean(0), atol=0.15)


def test_posterior_prior(tmp_path, ctx):
    from eptk.io import save_tensors_atomic, write_json_atomic
    write_json_atomic(tmp_path / "config.json", {"model": "tiny"})
    value = torch.randn(6, 64)
    save_tensors_atomic(tmp_path / "posterior.safetensors", {"soft": value})
    prior = build_prior(f"posterior:{tmp_path}", ctx, {"soft": PARAMS["soft"]})
    assert torch.equal(prior.sample(torch.Generator())["soft"], value)
    with pytest.raises(EptkUsageError, match="no tensor"):
        build_prior(f"posterior:{tmp_path}", ctx, PARAMS)
    with pytest.raises(EptkUsageError, match="shape"):
        build_prior(f"posterior:{tmp_path}", ctx, {"soft": ParamInfo("soft", (6, 32), 0)})


@pytest.mark.parametrize("bad", ["bogus", "normal:-1", "normal:abc", "uniform:0", "xavier:3", "text:",
                                 "posterior:", "posterior:/nonexistent/run", ""])
def test_bad_specs_name_the_valid_ones(ctx, bad):
    with pytest.raises(EptkUsageError) as err:
        build_prior(bad, ctx, PARAMS)
    assert "\n" not in str(err.value)


def test_unknown_spec_lists_all_families():
    with pytest.raises(EptkUsageError) as err:
        parse_spec("gaussian")
    for family in ("normal", "uniform", "xavier", "vocab", "text", "fitted", "posterior"):
        assert family in str(err.value)


def test_vocab_priors_refuse_prefix_tensors(ctx):
    with pytest.raises(EptkUsageError, match="width"):
        build_prior("vocab", ctx, {"prefix.0.key": ParamInfo("prefix.0.key", (2, 6, 16), 0)})


def test_prior_jitter_moves_the_start_by_its_relative_size(tmp_path, run_cli):
    """--prior-jitter R: the start is the prior sample times 1 + R·N(0,1), recorded in config.json; R = 0 is the
    plain sample."""
    import json

    from safetensors.torch import load_file

    args = ["tune", "--model", "tiny", "--method", "soft", "--tokens", "4", "--steps", "1", "--batch-size", "2",
            "--eval-size", "2", "--test-size", "2", "--train-size", "8", "--quiet"]
    for name, extra in (("plain", []), ("jitter", ["--prior-jitter", "1e-3"])):
        code, _, err = run_cli(*args, *extra, "--out", tmp_path / name)
        assert code == 0, err
    plain, moved = (load_file(str(tmp_path / n / "prior.safetensors"))["soft"].double() for n in ("plain", "jitter"))
    relative = (moved / plain - 1).flatten()
    assert 0.5e-3 < float(relative.std()) < 1.5e-3 and abs(float(relative.mean())) < 3e-4
    assert json.loads((tmp_path / "jitter" / "config.json").read_text())["prior_jitter"] == 1e-3
