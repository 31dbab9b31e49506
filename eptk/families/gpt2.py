"""GPT-2: transformer.h[i].attn, learned positions added to the input embeddings."""
from .base import ModelFamily, register_family


@register_family("gpt2")
class GPT2Family(ModelFamily):
    layers_attr = "h"
    attention_attr = "attn"

    def unsupported(self, config):
        if getattr(config, "reorder_and_upcast_attn", False):
            return "reorder_and_upcast_attn=True bypasses the attention interface eptk injects the prompt through"
        return super().unsupported(config)
