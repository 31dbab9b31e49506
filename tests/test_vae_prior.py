"""The `vae` prior on synthetic data: samples follow the reference rows, the ELBO ranks data above far points,
its MAP gradient is finite, the trained VAE is cached (hit, seed-independent, rebuilt when corrupt), deep layers
learn the fixed-seed reference statistics, and bad specs are one-line usage errors."""
import math
from types import SimpleNamespace

import pytest
import torch

from eptk.errors import EptkUsageError
from eptk.priors import ParamInfo, PriorContext, build_prior
from eptk.priors import vae as vae_module

D = 8


def reference(seed=0, n=3000, shift=3.0):
    """Correlated, shifted, non-spherical rows: a VAE that ignores the data's moments shows it."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g) * torch.linspace(0.2, 2.0, D)
    return torch.randn(n, D, generator=g) @ mix + shift


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "vae"


@pytest.fixture
def trainings(monkeypatch):
    """Counts the VAE trainings (the real training still runs)."""
    calls = []
    real = vae_module.train_vae

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(vae_module, "train_vae", counted)
    return calls


def soft_prior(rows, spec="vae", seed=0, P=5):
    ctx = PriorContext(embeddings=rows, model="synthetic", seed=seed)
    return build_prior(spec, ctx, {"soft": ParamInfo("soft", (P, D), 0)})


def test_samples_follow_the_reference_moments(cache):
    rows = reference()
    x = soft_prior(rows, P=4000).sample(torch.Generator().manual_seed(1))["soft"]
    std = rows.std(0)
    assert float(((x.mean(0) - rows.mean(0)).abs() / std).max()) < 0.15
    ratio = float(torch.cov(x.T).trace() / torch.cov(rows.T).trace())
    assert 0.8 < ratio < 1.2, ratio
    # per-dimension spread too (the data's widths differ tenfold)
    assert float(((x.std(0) / std).log().abs()).max()) < math.log(1.3)
    # and how the dimensions move together: a decoder that ignores its latent gives independent dimensions,
    # with the right means and widths but none of the data's correlations
    want, got = torch.corrcoef(rows.T), torch.corrcoef(x.T)
    off = ~torch.eye(D, dtype=torch.bool)
    assert float(want[off].abs().mean()) > 0.3, "the reference rows are correlated"
    # measured: 0.12 for the trained VAE, 0.31 (all of it) for a decoder that ignores its latent
    assert float((got - want)[off].abs().mean()) < 0.2


def test_elbo_ranks_data_above_far_points_and_its_gradient_is_finite(cache):
    rows = reference()
    prior = soft_prior(rows)
    data = rows[:5]
    far = data + 6 * rows.std(0)
    assert float(prior.log_prob({"soft": data})) > float(prior.log_prob({"soft": far})) + 50
    for x in (data, far, torch.zeros(5, D)):
        x = x.clone().requires_grad_(True)
        lp = prior.log_prob({"soft": x})
        lp.backward()
        assert math.isfinite(float(lp.detach())) and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    # deterministic: fixed noise draws
    assert float(prior.log_prob({"soft": data})) == float(prior.log_prob({"soft": data}))


def test_cached_vae_is_reused_for_every_run_seed(cache, trainings):
    rows = reference()
    first = soft_prior(rows, seed=0).sample(torch.Generator().manual_seed(5))["soft"]
    assert len(trainings) == 1 and len(list(cache.glob("*.safetensors"))) == 1
    again = soft_prior(rows, seed=0).sample(torch.Generator().manual_seed(5))["soft"]
    other_seed = soft_prior(rows, seed=3)
    assert len(trainings) == 1, "a cache hit trains nothing, whatever the run seed"
    assert torch.equal(first, again)
    assert torch.equal(other_seed.sample(torch.Generator().manual_seed(5))["soft"], first)  # same distribution
    assert not torch.equal(other_seed.sample(torch.Generator().manual_seed(6))["soft"], first)
    # another latent size or other reference rows are other VAEs
    soft_prior(rows, spec="vae:4")
    soft_prior(reference(seed=1))
    assert len(trainings) == 3 and len(list(cache.glob("*.safetensors"))) == 3


def test_corrupt_cache_is_retrained(cache, trainings):
    rows = reference()
    first = soft_prior(rows).sample(torch.Generator().manual_seed(2))["soft"]
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    again = soft_prior(rows).sample(torch.Generator().manual_seed(2))["soft"]
    assert len(trainings) == 2
    assert torch.equal(first, again), "deterministic training gives the same VAE"
    soft_prior(rows)
    assert len(trainings) == 2, "the retrained entry is readable"


def test_deep_layers_learn_the_fixed_seed_reference_statistics(cache, trainings):
    run_seed = SimpleNamespace(samples=reference(seed=7) * 5, dim=D)
    fixed = SimpleNamespace(samples=reference(seed=0), dim=D)
    ctx = PriorContext(model="synthetic", task="arith", seed=2, stats=lambda task, layer: run_seed,
                       reference_stats=lambda task, layer: fixed)
    prior = build_prior("vae", ctx, {"deep.2": ParamInfo("deep.2", (2000, D), 2)})
    x = prior.sample(torch.Generator().manual_seed(0))["deep.2"]
    key = vae_module.cache_key("synthetic", 2, "activations of arith at layer 2", fixed.samples, 16)
    assert (cache / f"{key}.safetensors").is_file()
    assert float((x.mean(0) - fixed.samples.mean(0)).norm()) < 0.2 * float((run_seed.samples.mean(0) -
                                                                             fixed.samples.mean(0)).norm())


@pytest.mark.parametrize("spec", ["vae:0", "vae:x", "vae:2000", "vae:-3"])
def test_bad_latent_is_a_usage_error(spec):
    with pytest.raises(EptkUsageError, match="latent must be an integer"):
        soft_prior(reference(n=10), spec=spec)


def test_prefix_tensors_are_refused():
    ctx = PriorContext(embeddings=reference(n=10), model="synthetic")
    with pytest.raises(EptkUsageError, match="prefix tensors are keys/values"):
        build_prior("vae", ctx, {"prefix.0.key": ParamInfo("prefix.0.key", (2, 5, 4), 0, "key")})


@pytest.mark.parametrize("args,message", [(["--prior", "vae:0"], "latent must be"),
                                          (["--method", "prefix", "--prior", "vae"], "prefix tensors")])
def test_cli_refuses_bad_vae_specs(run_cli, tmp_path, cache, args, message):
    out = tmp_path / "run"
    code, _, err = run_cli("tune", "--model", "tiny", "--steps", "1", "--quiet", *args, "--out", out)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not cache.exists()
