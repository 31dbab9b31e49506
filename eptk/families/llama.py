"""Llama and the families that share its layout (model.layers[i].self_attn): Mistral, Qwen2, Qwen3, Phi-3.

Their sliding windows (every layer in Mistral and Phi-3, the layers from `max_window_layers` on in Qwen2/3)
reach `eptk_attention` as the `sliding_window` argument of each attention call. Phi-3's fused qkv projection
sits inside HF's attention module, before the keys and values eptk reads.
"""
from .base import TINY_WINDOW, ModelFamily, register_family


def _tiny_llama(common):
    import transformers
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **common)


def _tiny_qwen2(common):  # sliding windows on layers 1..
    import transformers
    return transformers.Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                    num_attention_heads=6, num_key_value_heads=2, use_sliding_window=True,
                                    sliding_window=TINY_WINDOW, max_window_layers=1, **common)


def _tiny_qwen3(common):  # Qwen2's layout with q/k norms
    import transformers
    return transformers.Qwen3Config(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                    num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                    use_sliding_window=True, sliding_window=TINY_WINDOW, max_window_layers=1, **common)


def _tiny_mistral(common):  # a sliding window on every layer
    import transformers
    return transformers.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=1, sliding_window=TINY_WINDOW,
                                      **common)


def _tiny_phi3(common):  # a sliding window on every layer
    import transformers
    return transformers.Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, sliding_window=TINY_WINDOW, **common)


@register_family("llama", "mistral", "qwen2", "qwen3", "phi3")
class LlamaFamily(ModelFamily):
    tiny_configs = {"llama": _tiny_llama, "qwen2": _tiny_qwen2, "qwen3": _tiny_qwen3, "mistral": _tiny_mistral,
                    "phi3": _tiny_phi3}
