"""GPT-2: transformer.h[i].attn, learned positions added to the input embeddings."""
from .base import ModelFamily, register_family


def _tiny_gpt2(common):
    import transformers
    common = dict(common)
    n_positions = common.pop("max_position_embeddings")
    return transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=n_positions, **common)


@register_family("gpt2")
class GPT2Family(ModelFamily):
    layers_attr = "h"
    attention_attr = "attn"
    tiny_configs = {"gpt2": _tiny_gpt2}

    def unsupported(self, config):
        if getattr(config, "reorder_and_upcast_attn", False):
            return "reorder_and_upcast_attn=True bypasses the attention interface eptk injects the prompt through"
        return super().unsupported(config)
