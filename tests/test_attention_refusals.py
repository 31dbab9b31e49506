"""No silent ignoring: an attention argument, mask or module feature that eptk's attention does not compute
stops with a one-line error naming it, never a quietly different result."""
import pytest
import torch
from torch import nn

from eptk.attention import eptk_attention, use_eptk_attention
from eptk.errors import EptkUsageError
from eptk.models import build_tiny
from eptk.transformers_api import cache_parameter


class Attention(nn.Module):
    """An attention module as eptk_attention sees one: a layer index and, here, optional flags."""

    def __init__(self, **flags):
        super().__init__()
        self.layer_idx = 0
        for key, value in flags.items():
            setattr(self, key, value)


def qkv(B=2, T=5, H=2, D=8):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, T, D, generator=gen) for _ in range(3)]


def refused(match, fn, *args, **kwargs):
    with pytest.raises(EptkUsageError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_plain_call_and_every_argument_transformers_passes_work():
    q, k, v = qkv()
    out, weights = eptk_attention(Attention(), q, k, v, None, scaling=0.3, dropout=0.0, sliding_window=3,
                                  softcap=5.0, position_ids=torch.arange(5)[None], use_cache=False,
                                  cache_position=None, head_mask=None, output_hidden_states=True)
    assert out.shape == (2, 5, 2, 8) and weights is None


def test_hidden_states_of_a_model_on_eptk_attention():
    """model(..., output_hidden_states=True) works on eptk's attention and gives the same states as the
    model's own attention (transformers 5.24 hands the flag down to every attention call)."""
    model, _ = build_tiny("llama")
    ids = torch.randint(5, 90, (1, 6))
    with torch.no_grad():
        before = model(input_ids=ids, output_hidden_states=True).hidden_states
        use_eptk_attention(model)
        after = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(before) == len(after)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,value", [("alibi_slopes", torch.ones(2)),   # ALiBi
                                        ("s_aux", torch.zeros(2)),         # attention sinks
                                        ("some_future_option", True)])
def test_an_unknown_argument_is_named(name, value):
    q, k, v = qkv()
    refused(name, eptk_attention, Attention(), q, k, v, None, **{name: value})


def test_an_unknown_argument_from_the_model_call_is_named():
    """transformers hands extra forward kwargs down to every attention call."""
    model, _ = build_tiny("llama")
    use_eptk_attention(model)
    ids = torch.randint(5, 90, (1, 6))
    refused("my_flag", model, input_ids=ids, my_flag=1)


def test_a_four_d_mask_or_additive_bias_is_refused():
    q, k, v = qkv()
    bias = torch.zeros(2, 1, 5, 5)  # an additive ALiBi-style bias or a custom 4-D mask
    refused("4-D attention mask", eptk_attention, Attention(), q, k, v, bias)


def test_cross_and_bidirectional_attention_are_refused():
    q, k, v = qkv()
    refused("cross-attention", eptk_attention, Attention(is_cross_attention=True), q, k, v, None)
    refused("bidirectional", eptk_attention, Attention(is_causal=False), q, k, v, None)


def test_attention_dropout_in_training_mode_is_refused():
    model, _ = build_tiny("llama")
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    use_eptk_attention(model)
    ids = torch.randint(5, 90, (1, 6))
    with torch.no_grad():
        model.eval()(input_ids=ids)  # eval mode: no dropout reaches the attention
        refused("dropout 0.1", model.train(), input_ids=ids)


def test_a_custom_mask_function_is_refused():
    """The model builds its masks through eptk's mask function, which checks the pattern it is given."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    model, _ = build_tiny("mistral")  # 6-position windows
    use_eptk_attention(model)
    embeds = torch.zeros(2, 9, 64)
    mask = torch.ones(2, 9, dtype=torch.long)
    args = dict(config=model.config, inputs_embeds=embeds, attention_mask=mask, position_ids=torch.arange(9)[None])
    args[cache_parameter(create_causal_mask)] = None
    assert create_causal_mask(**args) is None and create_sliding_window_causal_mask(**args) is None
    refused("custom mask", create_causal_mask, **args, or_mask_function=lambda b, h, q, kv: kv < 3)
    refused("custom mask", create_sliding_window_causal_mask, **args, and_mask_function=lambda b, h, q, kv: kv > 0)


def test_packed_sequences_are_refused():
    """Positions restarting inside a row without a padding mask: HF attends within each packed sequence."""
    model, _ = build_tiny("llama")
    use_eptk_attention(model)
    ids = torch.randint(5, 90, (2, 9))
    refused("custom mask", model, input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]] * 2),
            use_cache=False)
