"""What each model family adapter says about its models: the soft prompt's space (Gemma's √d-scaled
embedding module), what eptk refuses rather than computes differently, and the positions a RoPE that
switches frequencies with the sequence length is exact for."""
import pytest
import torch

from eptk.config import TuneConfig
from eptk.errors import EptkUsageError
from eptk.families import family_of, model_dims
from eptk.methods import build_method
from eptk.models import TINY_FAMILIES, build_tiny
from eptk.priors import build_prior
from eptk.prompts import PromptedModel
from eptk.train import prior_context

WORDS = "Say 12"


def test_every_model_type_has_a_tiny_model_from_its_adapter(tiny_models):
    """The tiny models come from the family adapters (`tiny_configs`): each registered model type is served by
    one, and each is the config's own model type, so the contract and two-pass suites cover every family."""
    from eptk.families import FAMILIES

    served = {name: family_of(tiny_models[name].model).model_type for name in TINY_FAMILIES}
    assert set(served.values()) == set(FAMILIES), served
    assert served["gemma3"] == "gemma3_text" and all(v == k for k, v in served.items() if k != "gemma3")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_text_prior_is_the_text_in_front(tiny_models, family):
    """The vocabulary eptk's priors read lives in the soft prompt's space (the model's inputs_embeds): a
    soft prompt drawn from `text:<words>` makes the model read exactly what it reads with the words typed
    in front of the tokens (Gemma: the embedding module's √d scale included once)."""
    loaded = tiny_models[family]
    model, tok = loaded.model, loaded.tokenizer
    words = tok(WORDS, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = tok("7*8=56", add_special_tokens=False, return_tensors="pt")["input_ids"]
    table = family_of(model).token_embeddings(model)
    with torch.no_grad():
        torch.testing.assert_close(table[ids[0]], model.get_input_embeddings()(ids)[0], rtol=0, atol=0)
    prompt = build_method("soft", words.shape[1], model_dims(model))
    ctx = prior_context(loaded, TuneConfig(model=f"tiny:{family}", prior=f"text:{WORDS}"))
    init = build_prior(f"text:{WORDS}", ctx, prompt.tensor_specs()).sample(torch.Generator().manual_seed(0))
    prompted = PromptedModel(model, tok, prompt, init, backend="torch")
    with torch.no_grad():
        ours = prompted(ids, torch.ones_like(ids)).logits
        prev = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            theirs = model(input_ids=torch.cat([words, ids], 1)).logits[:, words.shape[1]:]
        finally:
            model.set_attn_implementation(prev)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4


def test_gemma_scales_its_vocabulary_by_the_root_of_its_width(tiny_models):
    for family in ("gemma2", "gemma3"):
        model = tiny_models[family].model
        assert family_of(model).embedding_scale(model) == pytest.approx(64 ** 0.5)
        weight = model.get_input_embeddings().weight.detach()
        torch.testing.assert_close(family_of(model).token_embeddings(model), weight * 8.0)
    assert family_of(tiny_models["llama"].model).embedding_scale(tiny_models["llama"].model) == 1.0


@pytest.mark.parametrize("family,setting,named", [
    ("gemma3", {"use_bidirectional_attention": True}, "bidirectional"),
    ("gpt2", {"add_cross_attention": True}, "cross-attention"),
    ("gpt2", {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
])
def test_settings_eptk_does_not_honour_are_refused(family, setting, named):
    model, _ = build_tiny(family)
    for key, value in setting.items():
        setattr(model.config, key, value)
    with pytest.raises(EptkUsageError, match=named):
        family_of(model)


def _longrope_phi3():
    """A tiny Phi-3 with LongRoPE (Phi-3-mini-128k's scaling) over an original length of 32 positions."""
    import transformers
    from eptk.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    half = 16 // 2  # head_dim 16
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * half,
            "long_factor": [4.0] * half, "original_max_position_embeddings": 32}
    config = transformers.Phi3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     original_max_position_embeddings=32, rope_parameters=rope, pad_token_id=0,
                                     bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval(), tok


def test_longrope_is_exact_up_to_its_original_length_and_refused_past_it():
    """LongRoPE switches to its long factors when a forward's largest position passes the original length:
    in one [slots ; tokens] forward for every position, in the two passes only in the token pass. Inside
    the original length the two passes equal the full forward; past it eptk stops instead of differing."""
    from reference_forward import full_forward

    model, tok = _longrope_phi3()
    assert family_of(model).exact_positions(model) == 32
    prompt = build_method("soft", 4, model_dims(model))
    init = {"soft": torch.randn(4, 64, generator=torch.Generator().manual_seed(0))}
    prompted = PromptedModel(model, tok, prompt, init, backend="torch")
    short = torch.randint(5, 90, (2, 28), generator=torch.Generator().manual_seed(1))  # 4 + 28 = 32 positions
    with torch.no_grad():
        ours, full = prompted(short, torch.ones_like(short)).logits, full_forward(prompted, short, torch.ones_like(short))
    assert float((ours - full).abs().max() / full.abs().max()) <= 1e-4
    long = torch.randint(5, 90, (2, 29), generator=torch.Generator().manual_seed(1))   # 33 positions
    with pytest.raises(EptkUsageError, match="32 positions"):
        prompted(long, torch.ones_like(long))
