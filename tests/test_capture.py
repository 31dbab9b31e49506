"""Activation capture: streaming statistics, reservoirs, the stats file format, hooks that stop the
forward early, BOS/padding exclusion, the on-disk cache and the StatsCache."""
import math

import pytest
import torch

from eptk.capture import capture, run_to_layers
from eptk.errors import EptkUsageError
from eptk.families import decoder_layers
from eptk.linalg import covariance_shrinkage, shrink
from eptk.models import load_model
from eptk.stats import ActivationStats, Reservoir, RunningGaussian, check_model
from eptk.stats_cache import StatsCache, ensure_stats, stats_folder

TEXTS = ["12+34=46", "hello world", "a", "the quick brown fox", "7*8=56", "xyz xyz xyz", "q"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


# ---- RunningGaussian --------------------------------------------------------------------------------

def test_running_gaussian_merges_batches_like_one_shot():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 12, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 12) + 1e3
    one = x.mean(0), torch.cov(x.T)
    by_sums, by_rows = RunningGaussian(12), RunningGaussian(12)
    halves = [RunningGaussian(12), RunningGaussian(12)]
    for i, chunk in enumerate(x.split([1, 7, 300, 2, 690])):
        by_sums.update(chunk.shape[0], chunk.sum(0), chunk.T @ chunk)
        by_rows.add(chunk)
        halves[i % 2].add(chunk)
    merged = halves[0].merge(halves[1])
    for g in (by_rows, merged):
        assert g.count == 1000
        torch.testing.assert_close(g.mean, one[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(g.covariance(), one[1], rtol=1e-10, atol=1e-10)
    # sums of raw x lose digits to the 1e3 offset (gram − n·m·mᵀ), still far below float32 rounding
    torch.testing.assert_close(by_sums.mean, one[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(by_sums.covariance(), one[1], rtol=1e-6, atol=1e-6)
    RunningGaussian(12).update(0, torch.zeros(12), torch.zeros(12, 12))   # an empty batch is a no-op


@pytest.mark.parametrize("with_samples", [True, False])
def test_ledoit_wolf_is_positive_definite_when_count_below_dim(with_samples):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 40, generator=gen, dtype=torch.float64) @ torch.randn(40, 40, generator=gen,
                                                                               dtype=torch.float64)
    g = RunningGaussian(40).add(x)
    cov = g.covariance()
    assert torch.linalg.eigvalsh(cov).min() < 1e-8                     # singular: 10 points in 40 dims
    shrunk = shrink(cov, covariance_shrinkage(cov, g.count, g.mean, x if with_samples else None))
    eig = torch.linalg.eigvalsh(shrunk)
    assert eig.min() > 1e-6 * eig.max()
    assert torch.allclose(shrunk.trace(), cov.trace())                  # shrinks toward tr(S)/d · I


def test_ledoit_wolf_barely_shrinks_well_sampled_data():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 8, generator=gen, dtype=torch.float64) * torch.linspace(1, 4, 8)
    g = RunningGaussian(8).add(x)
    cov = g.covariance()
    shrunk = shrink(cov, covariance_shrinkage(cov, g.count, g.mean, x[:2000]))
    assert (shrunk - cov).abs().max() < 0.02 * cov.abs().max()
    assert torch.equal(shrink(torch.zeros(3, 3), covariance_shrinkage(torch.zeros(3, 3), 5)),
                       torch.eye(3, dtype=torch.float64) * 1e-12)


# ---- Reservoir --------------------------------------------------------------------------------------

def test_reservoir_is_seeded_and_uniform():
    stream = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    first = Reservoir(10, 1, seed=3)
    again = Reservoir(10, 1, seed=3)
    for res in (first, again):
        for chunk in stream.split(7):
            res.add(chunk)
    assert torch.equal(first.samples, again.samples) and first.seen == 50
    assert len(set(first.samples.flatten().tolist())) == 10              # no row kept twice
    hits = torch.zeros(50)
    for seed in range(300):
        res = Reservoir(10, 1, seed=seed)
        for chunk in stream.split(13):
            res.add(chunk)
        hits[res.samples.flatten().long()] += 1
    freq = hits / 300
    assert (freq - 0.2).abs().max() < 0.1, freq                          # each row kept with p = n/N


def test_reservoir_merge_keeps_a_uniform_sample_of_both():
    hits_a = 0
    for seed in range(200):
        a, b = Reservoir(8, 1, seed=seed), Reservoir(8, 1, seed=seed + 1000)
        a.add(torch.zeros(30, 1))
        b.add(torch.ones(90, 1))
        a.merge(b)
        assert a.seen == 120 and a.samples.shape == (8, 1)
        hits_a += int((a.samples == 0).sum())
    assert abs(hits_a / (200 * 8) - 0.25) < 0.05


# ---- capture ----------------------------------------------------------------------------------------

def count_layer_calls(model):
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, layer in enumerate(decoder_layers(model))]
    handles.append(model.lm_head.register_forward_hook(lambda m, a, o: calls.append("lm_head")))
    return calls, handles


@pytest.mark.parametrize("layers,ran", [([0], []), ([0, 1], [0]), ([2], [0, 1]), ([1, 4], [0, 1, 2, 3])])
def test_capture_stops_after_the_last_requested_layer(tiny, layers, ran):
    calls, handles = count_layer_calls(tiny.model)
    try:
        stats = capture(tiny, TEXTS[:3], layers, samples=8, batch_size=8, progress=False)
    finally:
        for h in handles:
            h.remove()
    # two passes (the statistics, then every token's Mahalanobis distance), each stopping after the last
    # requested layer; layer 4 = output of the last layer: no lm_head
    assert calls == ran + ran
    assert stats.layers == layers
    assert not any(module._forward_pre_hooks or module._forward_hooks for module in decoder_layers(tiny.model))


def states_of(loaded, text: str, layers: list[int]) -> dict[int, torch.Tensor]:
    """layer -> [S, d]: what capture's hooks (run_to_layers) see of one text, every position."""
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    states = {}
    run_to_layers(loaded.model, ids, torch.ones_like(ids), layers,
                  lambda l, h: states.__setitem__(l, h[0].float().cpu().clone()))
    return states


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_layers_match_hidden_states_of_hf(tiny_models, family):
    """Layer l = hidden_states[l] of HF for l < L; layer L = the last layer's output before the final norm."""
    loaded = tiny_models[family]
    L = loaded.model.config.num_hidden_layers
    text = "12+3=45"
    states = states_of(loaded, text, list(range(L + 1)))
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([loaded.tokenizer(text)["input_ids"]]), output_hidden_states=True)
    for l in range(L):
        torch.testing.assert_close(states[l], out.hidden_states[l][0], rtol=1e-5, atol=1e-5)
    norm = getattr(getattr(loaded.model, loaded.model.base_model_prefix), "norm", None) or \
        loaded.model.transformer.ln_f
    with torch.no_grad():
        torch.testing.assert_close(norm(states[L]), out.hidden_states[L][0], rtol=1e-5, atol=1e-5)


def test_capture_statistics_equal_the_real_token_states(tiny):
    stats = capture(tiny, TEXTS, [0, 2, 4], samples=1000, batch_size=3, progress=False)
    tok = tiny.tokenizer
    for l in (0, 2, 4):
        # every token but the first of each text (the attention sink)
        rows = torch.cat([states_of(tiny, t, [l])[l][1:] for t in TEXTS])
        assert stats.gaussians[l].count == rows.shape[0] == sum(len(tok(t)["input_ids"]) - 1 for t in TEXTS)
        torch.testing.assert_close(stats.layer(l).mean, rows.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats.gaussians[l].covariance().float(), torch.cov(rows.T), rtol=1e-3, atol=1e-6)
        assert rows.shape[0] <= 64 and torch.equal(stats.layer(l).cov, stats.layer(l).shrunk_cov)  # count <= d
        assert stats.layer(l).samples.shape == rows.shape                 # capacity > tokens: all kept
        with_tokens = sum(len(tok(t)["input_ids"]) > 1 for t in TEXTS)  # a one-token text has none left
        assert stats.pooled(l).shape == (with_tokens, rows.shape[1])


def test_bos_and_padding_are_excluded():
    loaded = load_model("tiny")
    tok, emb = loaded.tokenizer, loaded.model.get_input_embeddings()
    with torch.no_grad():
        emb.weight[tok.bos_token_id] = 1e4                  # a BOS that would dominate any mean
        emb.weight[tok.pad_token_id] = -1e4
    texts = ["abc", "de fgh ij", "k"]
    ids = [[tok.bos_token_id] + tok(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    batch = {"input_ids": torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids]),
             "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])}
    with_bos = capture(loaded, [batch], [0, 3], samples=64, progress=False)
    # without BOS the first real token is the attention sink and is left out instead: prefix a token
    plain = capture(loaded, ["x" + t for t in texts], [0], samples=64, batch_size=1, progress=False)
    assert with_bos.gaussians[0].count == plain.gaussians[0].count == sum(len(tok(t)["input_ids"]) for t in texts)
    torch.testing.assert_close(with_bos.layer(0).mean, plain.layer(0).mean)
    assert with_bos.layer(0).samples.abs().max() < 10 and with_bos.layer(3).mean.abs().max() < 1e3
    assert "BOS" in with_bos.meta["excluded"]


# ---- the file format --------------------------------------------------------------------------------

def test_save_load_round_trip_and_refusals(tiny, tmp_path):
    stats = capture(tiny, TEXTS, [0, 4], samples=16, seed=5, batch_size=4, progress=False,
                    meta={"model": "tiny", "task": "texts"})
    stats.save(tmp_path / "s")
    back = ActivationStats.load(tmp_path / "s", model_name="tiny", hidden_size=64)
    assert back.layers == [0, 4] and back.meta["seed"] == 5 and back.meta["model"] == "tiny"
    assert "BOS" in back.meta["excluded"] and back.meta["eptk_version"]
    for l in (0, 4):
        a, b = stats.layer(l), back.layer(l)
        torch.testing.assert_close(a.mean, b.mean)
        torch.testing.assert_close(a.cov, b.cov, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.shrunk_cov, b.shrunk_cov, rtol=1e-5, atol=1e-7)
        assert torch.equal(a.samples, b.samples) and a.count == b.count
        assert torch.equal(stats.pooled(l), back.pooled(l))
    from safetensors.torch import load_file
    tensors = load_file(str(tmp_path / "s" / "stats.safetensors"))
    assert tensors["layer4.mean"].shape == (64,) and tensors["layer4.cov"].shape == (64, 64)
    assert tensors["layer4.samples"].shape == (16, 64) and float(tensors["layer4.count"]) == stats.gaussians[4].count

    with pytest.raises(EptkUsageError, match="'tiny'.*'smollm2'|'smollm2'.*'tiny'"):
        ActivationStats.load(tmp_path / "s", model_name="smollm2")
    with pytest.raises(EptkUsageError, match="width"):
        check_model(back.meta, "tiny", 576)
    path = tmp_path / "s" / "stats.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EptkUsageError, match="safetensors"):
        ActivationStats.load(tmp_path / "s")
    from eptk.io import save_tensors_atomic
    save_tensors_atomic(path, {"layer0.mean": torch.zeros(64)})
    with pytest.raises(EptkUsageError, match="layer0.cov"):
        ActivationStats.load(tmp_path / "s")


# ---- cache and provider -----------------------------------------------------------------------------

def test_ensure_stats_caches_on_disk(tiny, tmp_path, monkeypatch):
    first = ensure_stats(tiny, "tiny", "arith", [0, 2], samples=32, seed=1, n_examples=24, progress=False,
                         root=tmp_path)
    folder = stats_folder(tiny, "tiny", "arith", [0, 2], 32, 1, 24, root=tmp_path)
    assert (folder / "stats.safetensors").is_file() and (folder / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]          # no temp folder left behind
    assert first.meta["task"] == "arith" and first.meta["examples"] == 24

    import eptk.capture
    monkeypatch.setattr(eptk.capture, "capture_task", lambda *a, **k: pytest.fail("recaptured"))
    again = ensure_stats(tiny, "tiny", "arith", [0, 2], samples=32, seed=1, n_examples=24, progress=False,
                         root=tmp_path)
    torch.testing.assert_close(again.layer(2).mean, first.layer(2).mean)
    assert folder != stats_folder(tiny, "tiny", "arith", [0, 2], 32, 2, 24, root=tmp_path)


def test_stats_cache_captures_every_layer_once(tiny, tmp_path, monkeypatch):
    import eptk.capture
    real, calls = eptk.capture.capture_task, []
    monkeypatch.setattr(eptk.capture, "capture_task", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    provider = StatsCache(tiny, "tiny", "arith", samples=64, seed=0, n_examples=16, progress=False,
                             root=tmp_path)
    for layer in range(5):
        ls = provider(None, layer)
        assert ls.mean.shape == (64,) and ls.cov.shape == (64, 64) and ls.samples.shape[1] == 64
        assert ls.mean.dtype == ls.cov.dtype == torch.float32 and ls.count > 0
    assert provider("arith", 3) is provider(None, 3)
    assert calls == ["arith"]
    ls = provider(None, 2)
    x = ls.samples[:5]
    diff = (x - ls.mean).double()
    want = (diff @ torch.linalg.inv(ls.shrunk_cov.double()) * diff).sum(1).sqrt()
    torch.testing.assert_close(ls.mahalanobis(x).double(), want, rtol=1e-3, atol=1e-3)
    with pytest.raises(EptkUsageError, match="0..4"):
        provider(None, 5)
    with pytest.raises(EptkUsageError, match="task"):
        StatsCache(tiny, "tiny", None, progress=False, root=tmp_path)(None, 0)
    assert not math.isnan(float(ls.cov.sum()))


# ---- CLI --------------------------------------------------------------------------------------------

def test_cli_capture_writes_the_stats_files(run_cli, tmp_path):
    code, out, err = run_cli("capture", "--model", "tiny", "--task", "arith", "--layers", "0,4", "--samples", "16",
                             "--examples", "8", "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    assert "tokens" in out and str(tmp_path / "s") in out.replace("\n", "")
    back = ActivationStats.load(tmp_path / "s", model_name="tiny")
    assert back.layers == [0, 4] and back.meta["task"] == "arith" and back.meta["examples"] == 8
    code, out, err = run_cli("capture", "--model", "tiny", "--layers", "0,9", "--out", tmp_path / "t", "--quiet")
    assert code == 2 and "0..4" in err and len(err.strip().splitlines()) == 1


@pytest.mark.gpu  # conftest: skipped without CUDA, interpreter off
def test_capture_on_gpu_matches_the_cpu_capture():
    """The CUDA path (Triton capture_stats, float64 merges on the GPU) equals the CPU capture."""
    cpu = load_model("tiny")
    gpu = load_model("tiny", device="cuda")
    texts = TEXTS * 5
    want = capture(cpu, texts, [0, 2, 4], samples=32, seed=3, batch_size=4, progress=False)
    got = capture(gpu, texts, [0, 2, 4], samples=32, seed=3, batch_size=4, progress=False, backend="triton")
    for l in (0, 2, 4):
        assert got.gaussians[l].count == want.gaussians[l].count
        torch.testing.assert_close(got.layer(l).mean, want.layer(l).mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.layer(l).cov, want.layer(l).cov, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(got.layer(l).samples, want.layer(l).samples, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.pooled(l), want.pooled(l), rtol=1e-4, atol=1e-5)
    half = load_model("tiny", device="cuda")
    half.model.to(torch.bfloat16)
    bf16 = capture(half, texts, [0, 4], samples=32, seed=3, progress=False)
    assert (bf16.layer(4).mean - want.layer(4).mean).abs().max() < 0.05 * want.layer(4).mean.abs().max() + 1e-2


def test_massive_activations_are_excluded():
    """A token whose activation norm is far above its batch's median is left out and counted."""
    loaded = load_model("tiny")
    tok, emb = loaded.tokenizer, loaded.model.get_input_embeddings()
    huge = tok("q", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        emb.weight[huge] = 1e3
    texts = ["abqcd", "efqgh", "rst"]
    stats = capture(loaded, texts, [0], samples=64, progress=False)
    assert stats.meta["massive_excluded"]["0"] == 2
    assert stats.gaussians[0].count == sum(len(t) - 1 for t in texts) - 2
    assert stats.layer(0).samples.abs().max() < 10
