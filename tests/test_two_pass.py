"""The two-pass forward equals the full [slots ; tokens] forward (fp32, max relative error <= 1e-4), on a
tiny model of every family with its attention features on: sliding windows smaller than [slots ; tokens]
(Mistral, Qwen2 and Qwen3 upper layers, Phi-3, Gemma's local layers), Gemma-2's soft-caps, Gemma's √d embedding
scale, Gemma-3's q/k norms and local RoPE base, Phi-3's fused qkv. Both ways of running the passes: one after
the other, and packed in one forward (slots and real tokens in one row, PromptedModel.packed_hidden)."""
import warnings

import pytest
import torch

from eptk.families import model_dims
from eptk.methods import NoPrompt, build_method
from eptk.models import TINY_FAMILIES
from eptk.prompts import PromptedModel
from reference_forward import full_forward

TOL = 1e-4
WINDOWED = ("qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")


PACKED = pytest.mark.parametrize("packed", [True, False], ids=["packed", "two-pass"])


def make_prompted(loaded, method, layer_spec="all", tokens=5, soft=True, seed=0, packed=True, backend="torch"):
    dims = model_dims(loaded.model)
    options = {"layers": layer_spec, "soft": soft} if method == "deep" else {}
    prompt = build_method(method, tokens, dims, options)
    gen = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(s.shape, generator=gen) * 0.5 for k, s in prompt.tensor_specs().items()}
    prompted = PromptedModel(loaded.model, loaded.tokenizer, prompt, init, backend=backend)
    prompted.pack_passes = packed
    return prompted


def batch(seed=0, left=False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    if left:
        mask[1, :4] = 0
        mask[2, :1] = 0
    else:
        mask[1, 7:] = 0
        mask[2, 10:] = 0
    return ids, mask


def rel_err(a, b, mask):
    m = mask.bool()
    return float((a - b).abs()[m].max() / b[m].abs().max())


@pytest.mark.parametrize("family", WINDOWED)
def test_windowed_families_have_windows_shorter_than_slots_and_tokens(tiny_models, family):
    """Else the equivalence tests below would pass with every window ignored."""
    config = tiny_models[family].model.config
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention"]  # Mistral, Phi-3: every layer
    assert config.sliding_window < 5 + 11 and "sliding_attention" in layer_types


# (method, layers, soft): --no-soft deep prompts have no slots below their first layer
CASES = [("soft", "all", True), ("deep", "all", True), ("deep", "last:1", True), ("deep", "1,2", True),
         ("prefix", "all", True), ("deep", "1,2", False), ("deep", "last:1", False)]


def case_id(case):
    method, layers, soft = case
    return f"{method}-{layers}" + ("" if soft else "-nosoft")


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("left", [False, True])
@PACKED
def test_two_pass_equals_full_forward(tiny_models, family, case, left, packed):
    method, layers, soft = case
    prompted = make_prompted(tiny_models[family], method, layers, soft=soft, packed=packed)
    try:
        ids, mask = batch(left=left)
        with torch.no_grad():
            two_pass = prompted(ids, mask).logits
            full = full_forward(prompted, ids, mask)
        assert rel_err(two_pass, full, mask) <= TOL, f"{family} {case_id(case)} left={left}"
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("case", [("soft", "all", True), ("deep", "1,2", True), ("deep", "1,2", False),
                                  ("prefix", "all", True)], ids=case_id)
@pytest.mark.parametrize("left", [False, True])
@PACKED
def test_gradients_match_full_forward(tiny_models, family, case, left, packed):
    """The prompt gradients of the two-pass loss equal those of the full forward: every method, both
    padding sides, every family."""
    method, layers, soft = case
    prompted = make_prompted(tiny_models[family], method, layers, soft=soft, packed=packed)
    try:
        ids, mask = batch(left=left)
        # Labels on real tokens after the first: a padding position's own prediction is no one's output.
        first = mask.cumsum(-1) == 1
        labels = ids.masked_fill((mask == 0) | first, -100)
        out = prompted(ids, mask, labels=labels)
        out.loss.backward()
        two = {n: p.grad.clone() for n, p in prompted.parameters_by_name().items()}
        prompted.zero_grad()
        logits = full_forward(prompted, ids, mask, keep_graph=True)
        ref = torch.nn.functional.cross_entropy(logits[:, :-1][labels[:, 1:] != -100], labels[:, 1:][labels[:, 1:] != -100])
        ref.backward()
        for n, p in prompted.parameters_by_name().items():
            err = float((two[n] - p.grad).abs().max() / p.grad.abs().max())
            assert err < 1e-4, f"{family} {case_id(case)} left={left} {n}: {err}"
    finally:
        prompted.remove_hooks()


def test_soft_equals_hand_built_inputs_embeds(tiny_models):
    loaded = tiny_models["llama"]
    prompted = make_prompted(loaded, "soft")
    ids, mask = batch()
    soft = prompted.prompt_tensor("soft").detach()
    model = loaded.model
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        embeds = torch.cat([soft.expand(3, -1, -1), model.get_input_embeddings()(ids)], dim=1)
        with torch.no_grad():
            ref = model(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(3, 5, dtype=mask.dtype), mask], 1)).logits[:, 5:]
    finally:
        model.set_attn_implementation(prev)
    with torch.no_grad():
        ours = prompted(ids, mask).logits
    assert rel_err(ours, ref, mask) <= TOL


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["deep", "prefix"])
@pytest.mark.parametrize("left", [False, True])
def test_prefix_mass_equals_explicit_attention(tiny_models, family, method, left):
    """eval.json's prefix mass: per layer and query head, the softmax probability on the prompt's keys,
    averaged over the real (not padded) query rows, from the full forward's explicit attention."""
    prompted = make_prompted(tiny_models[family], method, "1,2")
    try:
        ids, mask = batch(left=left)
        mass = prompted.prefix_mass(ids, mask)
        probs = {}
        full_forward(prompted, ids, mask, probs=probs)
        assert set(mass) == set(probs)
        real = mask.bool()
        for layer, p in probs.items():
            on_prompt = p[..., :prompted.tokens].sum(-1).permute(0, 2, 1)     # [B,T,Hq]
            want = on_prompt[real].double().mean(0)
            torch.testing.assert_close(mass[layer].double(), want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"layer {layer}: {m}")
            assert 0 < float(want.min()) and float(want.max()) < 1
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral", "gemma2"])
@pytest.mark.parametrize("method", ["soft", "deep", "prefix", "none"])
def test_cached_generation_equals_uncached(tiny_models, family, method):
    """Generation through the KV cache equals recomputing every step; 11 + 8 tokens run past the windowed
    families' 6-position window, where HF's sliding-window cache keeps only the last positions."""
    loaded = tiny_models[family]
    if method == "none":
        prompted = PromptedModel(loaded.model, loaded.tokenizer, NoPrompt(dims=model_dims(loaded.model)), backend="torch")
    else:
        prompted = make_prompted(loaded, method, "last:1")
    try:
        ids, mask = batch(seed=3, left=True)
        ids = ids.masked_fill(mask == 0, loaded.tokenizer.pad_token_id)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cached = prompted.generate(ids, mask, max_new_tokens=8, use_cache=True, eos_token_id=-1)
        # transformers 5.2x takes the cache as `cache` and warns on the old name: eptk passes the one it takes
        assert not [w.message for w in caught if "past_key_values" in str(w.message)]
        plain = prompted.generate(ids, mask, max_new_tokens=8, use_cache=False, eos_token_id=-1)
        assert torch.equal(cached, plain)
        assert cached.shape == (3, 11 + 8)
    finally:
        if method != "none":
            prompted.remove_hooks()


def test_left_padded_generation_matches_unpadded_rows(tiny_models):
    """A left-padded row generates what it generates alone."""
    prompted = make_prompted(tiny_models["llama"], "deep", "all")
    try:
        ids, mask = batch(seed=4, left=True)
        together = prompted.generate(ids, mask, max_new_tokens=6, eos_token_id=-1)
        alone = prompted.generate(ids[1:2, 4:], mask[1:2, 4:], max_new_tokens=6, eos_token_id=-1)
        assert torch.equal(together[1, -6:], alone[0, -6:])
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("P,pad", [(3, "left"), (3, "right"), (0, None), (1, "left")])
def test_reference_paths_agree(P, pad):
    """The reference's fused (SDPA) path and its explicit-softmax path compute one function (float64)."""
    from eptk.kernels import prefix_attention_reference as ref
    gen = torch.Generator().manual_seed(P)
    B, Hq, Hkv, T, S, D = 2, 4, 2, 5, 7, 8
    q = torch.randn(B, Hq, T, D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, S, D, generator=gen, dtype=torch.float64) for _ in range(2))
    pk, pv = (torch.randn(Hkv, P, D, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = None
    if pad:
        mask = torch.ones(B, S, dtype=torch.bool)
        mask[1, :2] = False if pad == "left" else True
        mask[1, -2:] = False if pad == "right" else True
    fused = ref(q, k, v, pk, pv, key_padding_mask=mask)
    explicit, _ = ref(q, k, v, pk, pv, key_padding_mask=mask, return_prefix_mass=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-12, atol=1e-12)
