"""Llama and the families that share its layout: Mistral, Qwen2, Qwen3 (model.layers[i].self_attn)."""
from .base import ModelFamily, register_family


@register_family("llama", "mistral", "qwen2", "qwen3")
class LlamaFamily(ModelFamily):
    pass
