"""Llama and the families that share its layout (model.layers[i].self_attn): Mistral, Qwen2, Qwen3, Phi-3.

Their sliding windows (every layer in Mistral and Phi-3, the layers from `max_window_layers` on in Qwen2/3)
reach `eptk_attention` as the `sliding_window` argument of each attention call. Phi-3's fused qkv projection
sits inside HF's attention module, before the keys and values eptk reads.
"""
from .base import ModelFamily, register_family


@register_family("llama", "mistral", "qwen2", "qwen3", "phi3")
class LlamaFamily(ModelFamily):
    pass
