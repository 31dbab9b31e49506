"""Gemma-2 and Gemma-3 (text): the Llama layout (model.layers[i].self_attn) with soft-capped final logits,
which eptk's LM head applies itself. The rest comes through the adapter base and HF's own modules: the
embedding module's √d scale (`embed_scale`, which `inputs_embeds` bypass, so the soft prompt lives in the
scaled space and the vocabulary reference is scaled to match), alternating local (sliding-window) and
global layers (`layer_types`) and Gemma-2's attention logit soft-capping (arguments of every attention
call), and Gemma-3's q/k norms and local RoPE base."""
import torch

from .base import TINY_ALTERNATING, TINY_WINDOW, ModelFamily, register_family


def _tiny_gemma2(common):  # alternating local/global layers and both soft-caps, low enough to change random logits
    import transformers
    return transformers.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     query_pre_attn_scalar=16, sliding_window=TINY_WINDOW, layer_types=TINY_ALTERNATING,
                                     attn_logit_softcapping=1.0, final_logit_softcapping=2.0,
                                     initializer_range=0.2, **common)


def _tiny_gemma3(common):  # alternating local/global layers
    import transformers
    return transformers.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                         query_pre_attn_scalar=16, sliding_window=TINY_WINDOW,
                                         layer_types=TINY_ALTERNATING, initializer_range=0.2, **common)


@register_family("gemma2", "gemma3_text")
class GemmaFamily(ModelFamily):
    tiny_configs = {"gemma2": _tiny_gemma2, "gemma3": _tiny_gemma3}
    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """cap · tanh(logits / cap), as the model's own forward applies `final_logit_softcapping`."""
        logits = super().logits(model, hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if cap is None else cap * torch.tanh(logits / cap)
