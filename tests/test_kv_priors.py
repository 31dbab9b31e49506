"""Priors over a prefix's key/value space: `zero` (every registered method's prompt starts at exactly 0, and
still trains), and the region families fitted to the task's captured keys/values (decoder layer l's attention
keys or values after RoPE, one row per token with its kv heads concatenated), checked against the keys/values
of a plain Hugging Face forward's own cache."""
import pytest
import torch

from eptk.capture import capture, real_tokens, without_massive
from eptk.config import TuneConfig
from eptk.errors import EptkUsageError
from eptk.families import model_dims
from eptk.methods import METHODS, build_method
from eptk.models import load_model
from eptk.priors import PRIORS, PriorContext, build_prior
from eptk.priors.registry import KEY_VALUE_PRIORS
from eptk.spaces import slot_rows
from eptk.stats_cache import StatsCache
from eptk.train import prior_context
from eptk.transformers_api import returned_cache

KV_METHODS = sorted(n for n, cls in METHODS.items() if any(space == "key" for space in cls.patterns.values()))


# ---- zero ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_zero_prior_materializes_exactly_zero_and_trains(tiny_models, name):
    """Every method (the encoders too) starts at a prompt of exact zeros, and every prompt tensor can move from there
    (a zero start whose parameters get no gradient would never train)."""
    loaded = tiny_models["llama"]
    cls = METHODS[name]
    method = build_method(name, 5, model_dims(loaded.model), dict(cls.contract_options))
    ctx = prior_context(loaded, TuneConfig(model="tiny", prior="zero"))
    init = build_prior("zero", ctx, method.tensor_specs()).sample(torch.Generator().manual_seed(0))
    params = method.build_parameters(init, seed=0)
    prompt = params.prompt()
    assert set(prompt) == set(method.tensor_specs())
    for tensor_name, t in prompt.items():
        assert torch.count_nonzero(t) == 0, f"{name}: {tensor_name} starts at {float(t.abs().max())}, not 0"
    weights = torch.Generator().manual_seed(1)
    for tensor_name in prompt:  # each prompt tensor can move: some parameter gets a gradient through it
        params.zero_grad()
        t = params.prompt()[tensor_name]
        (t * torch.randn(t.shape, generator=weights)).sum().backward()
        moved = [n for n, p in params.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        assert moved, f"{name}: no parameter gets a gradient through {tensor_name} from the zero start"


@pytest.mark.parametrize("name", KV_METHODS)
def test_zero_prior_gives_zero_prefix_keys_values(tiny_models, name):
    """What the real tokens attend to at every layer, before training, is exactly zero keys and values."""
    from eptk.prompts import PromptedModel

    loaded = tiny_models["llama"]
    method = build_method(name, 3, model_dims(loaded.model))
    ctx = prior_context(loaded, TuneConfig(model="tiny", prior="zero"))
    init = build_prior("zero", ctx, method.tensor_specs()).sample(torch.Generator().manual_seed(0))
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method, backend="torch",
                             parameters=method.build_parameters(init, seed=0))
    try:
        with torch.no_grad():
            prefix = prompted.prefix()
    finally:
        prompted.remove_hooks()
    assert sorted(prefix) == list(range(model_dims(loaded.model)["num_layers"]))
    for layer, (k, v) in prefix.items():
        assert k.shape == (2, 3, 16) and torch.count_nonzero(k) == 0 and torch.count_nonzero(v) == 0, layer


# ---- captured keys/values -------------------------------------------------------------------------

TEXTS = ["12+34=46 and 7*8=56", "what is 3 times 9? 27", "the cat sat on the mat", "x"]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_captured_keys_values_are_the_models_own_cache(tiny_models, family):
    """Every kept token's row in the key (value) statistics is its keys (values) in the cache of a plain HF forward,
    layer by layer, heads concatenated, in token order (a reservoir larger than the tokens keeps them all)."""
    loaded = tiny_models[family]
    model, tok = loaded.model, loaded.tokenizer
    L = model_dims(model)["num_layers"]
    tok.padding_side = "right"
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    plain = load_model(f"tiny:{family}").model   # the model's own attention, no eptk code in it
    with torch.no_grad():
        cache = returned_cache(plain(input_ids=ids, attention_mask=mask, use_cache=True))
    real = real_tokens(tok, ids, mask)
    compared = set()
    for space, part in (("key", "keys"), ("value", "values")):
        stats = capture(loaded, TEXTS, list(range(L)), samples=4096, space=space, progress=False)
        assert stats.meta["space"] == space and stats.dim == model_dims(model)["num_kv_heads"] * model_dims(model)["head_dim"]
        for l in range(L):
            layer = cache.layers[l] if hasattr(cache, "layers") else None
            theirs = getattr(layer, part) if layer is not None else (cache.key_cache if space == "key" else cache.value_cache)[l]
            if theirs.shape[2] < ids.shape[1]:
                continue  # a sliding-window layer's cache keeps only the window (Gemma-2's every other layer)
            compared.add(l)
            rows = theirs.transpose(1, 2).flatten(2)                     # [B,T,Hkv*D]
            kept = rows[without_massive(rows, real)]
            ours = stats.layer(l)
            assert ours.samples.shape == kept.shape, (space, l)
            torch.testing.assert_close(ours.samples, kept.float(), rtol=1e-4, atol=1e-5, msg=f"{space} layer {l}")
            torch.testing.assert_close(ours.mean, kept.double().mean(0).float(), rtol=1e-4, atol=1e-5)
    assert len(compared) >= L // 2, compared


@pytest.fixture(scope="module")
def kv_ctx(tmp_path_factory):
    loaded = load_model("tiny")
    cache = StatsCache(loaded, "tiny", "arith", samples=512, seed=0, n_examples=48, progress=False,
                       root=tmp_path_factory.mktemp("stats"))
    return loaded, PriorContext(task="arith", model="tiny", seed=0, stats=cache), cache


def test_region_data_on_prefix_samples_the_captured_keys_values(kv_ctx):
    """A region:data prefix's sample, seen as slot rows, has the captured keys'/values' mean and covariance at its
    own layer, keys and values apart (P = 4000 slots: the sampling error is small against the gaps)."""
    loaded, ctx, cache = kv_ctx
    method = build_method("prefix", 4000, model_dims(loaded.model))
    prior = build_prior("region:data", ctx, method.tensor_specs())
    sample = prior.sample(torch.Generator().manual_seed(0))
    assert set(cache.folders) == {"key:arith", "value:arith"}
    for name, x in sample.items():
        _, layer, space = name.split(".")
        assert x.shape == (2, 4000, 16)
        target = cache("arith", int(layer), space=space)
        rows = slot_rows(x).double()
        scale = target.cov.double().diagonal().sqrt()
        mean_err = ((rows.mean(0) - target.mean.double()) / scale).abs().max()
        assert mean_err < 0.1, f"{name}: sample mean off by {mean_err:.3g} standard deviations"
        cov_err = (torch.cov(rows.T) - target.cov.double()).abs().max() / target.cov.double().abs().max()
        assert cov_err < 0.1, f"{name}: sample covariance off by {cov_err:.3g} of its largest entry"
    lp = prior.log_prob({k: v.requires_grad_(True) for k, v in sample.items()})
    lp.backward()
    assert torch.isfinite(lp)


@pytest.mark.parametrize("spec", ["region:new", "region:between:arith,fill", "exclusion:5"])
def test_every_region_family_serves_keys_values(kv_ctx, spec):
    """The region families build on a prefix's keys/values, at [Hkv,P,D], with a finite differentiable log-density;
    region:new's rows lie outside the captured keys' (values') Mahalanobis range."""
    loaded, ctx, cache = kv_ctx
    method = build_method("prefix", 6, model_dims(loaded.model))
    prior = build_prior(spec, ctx, method.tensor_specs())
    sample = prior.sample(torch.Generator().manual_seed(0))
    assert all(x.shape == (2, 6, 16) and torch.isfinite(x).all() for x in sample.values())
    lp = prior.log_prob({k: v.clone().requires_grad_(True) for k, v in sample.items()})
    assert torch.isfinite(lp)
    if spec == "region:new":
        for name, x in sample.items():
            _, layer, space = name.split(".")
            ls = cache("arith", int(layer), space=space)
            assert float(ls.mahalanobis(slot_rows(x)).min()) > float(ls.mahalanobis(ls.samples).max()), name


def test_the_key_value_prior_list_is_true(kv_ctx):
    """The families README lists for keys/values build on them; every other family refuses them in one line."""
    loaded, ctx, _ = kv_ctx
    ctx = PriorContext(task="arith", model="tiny", seed=0, stats=ctx.stats, tokenizer=loaded.tokenizer,
                       embeddings=torch.randn(100, 64),
                       text_kv=prior_context(loaded, TuneConfig(model="tiny", prior="text:1")).text_kv)
    specs = build_method("prefix", 2, model_dims(loaded.model)).tensor_specs()
    args = {"text": "text:12+3", "posterior": None, "region:between": "region:between:arith,fill"}
    for family in list(PRIORS):
        if family == "posterior":
            continue  # needs a run of the same shape: tests/test_priors.py
        spec = args.get(family) or family
        if family in KEY_VALUE_PRIORS:
            build_prior(spec, ctx, specs)
        else:
            with pytest.raises(EptkUsageError) as err:
                build_prior(spec, ctx, specs)
            assert "\n" not in str(err.value) and "prefix" in str(err.value), (family, str(err.value))


def test_readme_says_which_priors_serve_keys_values():
    """The README's priors table has a key/value column, and its "yes" rows are the families that serve them."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("| spec | what it samples | on a prefix's keys/values |"):]
    table = table[:table.index("\n\n")]
    yes = {row.split("`")[1].split("[")[0].split(":<")[0] for row in table.splitlines()[2:]
           if row.rstrip(" |").split("|")[-1].strip().startswith("yes")}
    assert yes == set(KEY_VALUE_PRIORS)
    assert {row.split("`")[1].split("[")[0].split(":<")[0] for row in table.splitlines()[2:]} == set(PRIORS)
