"""`soft`: P trainable vectors as the slots' input to layer 0 (Lester et al. 2021).

The slots' keys/values at every layer come from one slot pass: the P slots alone (batch 1, positions
0..P-1) through the frozen model, each layer recording its slot keys/values. PEFT: PROMPT_TUNING, whose
`prompt_embeddings` [P, d] is the soft tensor (PEFT puts it in front of the token embeddings, so the
real tokens sit at positions P.., as here).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import SlotPass, active
from ..errors import EptkUsageError
from ..options import NoOptions, option
from ..spaces import TensorSpec
from .base import PromptMethod, register_method


def slot_inputs(prompted, slots: torch.Tensor) -> torch.Tensor:
    """The slot pass's inputs_embeds [S,d]: the slots (P rows) in the model's dtype on its input device, behind
    the model's own first token with --keep-sink (S = P + 1), as an input embedding: never trained.

    The soft prompt's space is the space of `inputs_embeds`, the embedding module's output: the model
    applies to it whatever it applies to token embeddings after the lookup (GPT-2's positions), and an
    embedding module's own scale (Gemma's √d) is already in the vocabulary reference the priors use."""
    inputs = slots.to(prompted.device, prompted.dtype)
    if prompted.method.keep_sink:
        sink = torch.tensor([prompted.sink_token_id], device=prompted.device)
        inputs = torch.cat([prompted.model.get_input_embeddings()(sink).to(prompted.dtype), inputs])
    return inputs


def slot_pass(prompted, inputs: torch.Tensor, first_layer: int = 0) -> dict:
    """Run the slots (`slot_inputs`, [S,d]) through the frozen model; layer -> (k, v) [Hkv,S,D] of every layer
    from `first_layer` on (the methods' hooks may replace slot states on the way)."""
    state = SlotPass(first_layer=first_layer, backend=prompted.backend, owner=prompted)
    with active(state):
        prompted.family.base_model(prompted.model)(
            inputs_embeds=inputs.unsqueeze(0),
            position_ids=torch.arange(inputs.shape[0], device=prompted.device).unsqueeze(0), use_cache=False)
    return state.kv


def sink_token_id(tokenizer) -> int:
    """The token whose state --keep-sink leaves in the first slot: BOS when the tokenizer has one, else EOS."""
    for name in ("bos_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            return int(token)
    raise EptkUsageError("--keep-sink needs a tokenizer with a BOS or EOS token")


@dataclass(frozen=True)
class SlotOptions(NoOptions):
    """The options of a prompt that runs a slot pass."""
    keep_sink: bool = option(False, "one extra first slot left to the model (its BOS, else EOS, token; never "
                                    "trained or replaced): the attention sink")


@register_method
class SoftPrompt(PromptMethod):
    name = "soft"
    Options = SlotOptions
    peft_type = "PROMPT_TUNING"
    reports_prefix_mass = True
    patterns = {r"soft": "embedding"}

    def __init__(self, tokens, dims, options=None):
        super().__init__(tokens, dims, options)
        self.keep_sink = bool(self.options.keep_sink)

    def tensor_specs(self):
        return {"soft": TensorSpec("soft", (self.tokens, self.dims["hidden_size"]), 0, "embedding")}

    def slot_pass_inputs(self, prompted):
        return slot_inputs(prompted, prompted.prompt_tensor("soft")), 0

    def prefix(self, prompted):
        return slot_pass(prompted, *self.slot_pass_inputs(prompted))

    def to_peft(self, source):
        tensors = source.posterior()
        if "soft" not in tensors:
            raise EptkUsageError(f"{source.where} has no 'soft' tensor")
        weight = tensors["soft"].float()
        d = source.config.get("hidden_size", weight.shape[1])
        if tuple(weight.shape) != (self.tokens, d):
            raise EptkUsageError(f"soft tensor has shape {tuple(weight.shape)}, expected {(self.tokens, d)}")
        if self.keep_sink:  # the sink slot is part of the exported prompt: its token's embedding, first
            prompted = source.prompted()
            sink = prompted.family.token_embeddings(prompted.model)[prompted.sink_token_id]
            weight = torch.cat([sink.unsqueeze(0), weight])
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
