"""Gemma-2 and Gemma-3 (text): the Llama layout (model.layers[i].self_attn) with soft-capped final logits,
which eptk's LM head applies itself. The rest comes through the adapter base and HF's own modules: the
embedding module's √d scale (`embed_scale`, which `inputs_embeds` bypass, so the soft prompt lives in the
scaled space and the vocabulary reference is scaled to match), alternating local (sliding-window) and
global layers (`layer_types`) and Gemma-2's attention logit soft-capping (arguments of every attention
call), and Gemma-3's q/k norms and local RoPE base."""
import torch

from .base import ModelFamily, register_family


@register_family("gemma2", "gemma3_text")
class GemmaFamily(ModelFamily):
    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """cap · tanh(logits / cap), as the model's own forward applies `final_logit_softcapping`."""
        logits = super().logits(model, hidden)
        cap = getattr(model.config, "final_logit_softcapping", None)
        return logits if cap is None else cap * torch.tanh(logits / cap)
