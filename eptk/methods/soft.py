"""`soft`: P trainable vectors as the slots' input to layer 0 (Lester et al. 2021).

The slots' keys/values at every layer come from one slot pass: the P slots alone (batch 1, positions
0..P-1) through the frozen model, each layer recording its slot keys/values. PEFT: PROMPT_TUNING, whose
`prompt_embeddings` [P, d] is the soft tensor (PEFT puts it in front of the token embeddings, so the
real tokens sit at positions P.., as here).
"""
from __future__ import annotations

import torch

from ..attention import SlotPass, active
from ..errors import EptkUsageError
from ..spaces import TensorSpec
from .base import PromptMethod, register_method


def slot_pass(prompted, slots: torch.Tensor, first_layer: int = 0) -> dict:
    """Run the P slots (inputs_embeds [P,d]) through the frozen model; layer -> (k, v) [Hkv,P,D] of every
    layer from `first_layer` on (the methods' hooks may replace slot states on the way).

    The soft prompt's space is the space of `inputs_embeds`, the embedding module's output: the model
    applies to it whatever it applies to token embeddings after the lookup (GPT-2's positions), and an
    embedding module's own scale (Gemma's √d) is already in the vocabulary reference the priors use."""
    P = slots.shape[0]
    state = SlotPass(first_layer=first_layer, backend=prompted.backend, owner=prompted)
    with active(state):
        prompted.family.base_model(prompted.model)(
            inputs_embeds=slots.to(prompted.device, prompted.dtype).unsqueeze(0),
            position_ids=torch.arange(P, device=prompted.device).unsqueeze(0), use_cache=False)
    return state.kv


@register_method
class SoftPrompt(PromptMethod):
    name = "soft"
    peft_type = "PROMPT_TUNING"
    patterns = {r"soft": "embedding"}

    def tensor_specs(self):
        return {"soft": TensorSpec("soft", (self.tokens, self.dims["hidden_size"]), 0, "embedding")}

    def prefix(self, prompted):
        return slot_pass(prompted, prompted.param("soft"))

    def to_peft(self, source):
        tensors = source.posterior()
        if "soft" not in tensors:
            raise EptkUsageError(f"{source.where} has no 'soft' tensor")
        weight = tensors["soft"].float()
        d = source.config.get("hidden_size", weight.shape[1])
        if tuple(weight.shape) != (self.tokens, d):
            raise EptkUsageError(f"soft tensor has shape {tuple(weight.shape)}, expected {(self.tokens, d)}")
        config = source.config
        return weight, {"peft_type": self.peft_type, "token_dim": int(d), "num_attention_heads": config.get("num_heads"),
                        "num_layers": config.get("num_layers"), "prompt_tuning_init": "RANDOM",
                        "prompt_tuning_init_text": None, "tokenizer_kwargs": None, "tokenizer_name_or_path": None}

    @classmethod
    def from_peft(cls, adapter, weight, dims, where, model):
        if weight.shape[1] != dims["hidden_size"]:
            raise EptkUsageError(f"{where}: prompt width {weight.shape[1]} does not match model {model!r} "
                                 f"(hidden size {dims['hidden_size']})")
        return {"soft": weight.contiguous()}
