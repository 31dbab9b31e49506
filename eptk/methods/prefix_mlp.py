"""`prefix-mlp`: prefix tuning with the reparameterization MLP (Li & Liang 2021; PEFT PREFIX_TUNING with
`prefix_projection=True`).

The trainable parameters are PEFT's `PrefixEncoder` in training mode, under its parameter names: P embeddings
`embedding.weight` [P, Hkv*D] through `transform` (Linear Hkv*D->h, Tanh, Linear h->L*2*Hkv*D). Its output is
every layer's prefix keys/values in PEFT's prefix layout (peft_prefix.py), which `prefix` then runs as its own.
The prompt tensors, priors and the analysis are `prefix`'s; the encoder starts at the prior's sample (its last
layer solved, encoders.py).

PEFT: an adapter saved for inference holds the projection's output, [P, L*2*Hkv*D] (PEFT's inference-mode
PrefixEncoder is that embedding), with `prefix_projection` true: it imports back as a `prefix` run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..options import NoOptions, option
from .base import PromptParameters, register_method
from .encoders import fit_output_layer, seeded
from .peft_prefix import pack_prefix, unpack_prefix
from .prefix import PrefixPrompt


@dataclass(frozen=True)
class PrefixMLPOptions(NoOptions):
    encoder_hidden: int = option(512, "the projection's hidden width (PEFT's encoder_hidden_size)", low=1,
                                 high=65536, in_name=lambda h: f"h{h}")


class PrefixEncoder(PromptParameters):
    """PEFT's PrefixEncoder with prefix_projection: embedding [P, Hkv*D] -> transform -> every layer's K/V."""

    def __init__(self, tokens: int, dims: dict, hidden: int):
        super().__init__()
        self.dims = dims
        width = dims["num_kv_heads"] * dims["head_dim"]
        self.embedding = nn.Embedding(tokens, width)
        self.transform = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(),
                                       nn.Linear(hidden, dims["num_layers"] * 2 * width))

    def hidden(self) -> torch.Tensor:
        return self.transform[:-1](self.embedding.weight)

    def prompt(self):
        flat = self.transform[-1](self.hidden())  # [P, L*2*Hkv*D], PEFT's past_key_values before its view
        return unpack_prefix(flat, self.dims["num_layers"], self.dims["num_kv_heads"], self.dims["head_dim"])


@register_method
class PrefixMLPPrompt(PrefixPrompt):
    name = "prefix-mlp"
    Options = PrefixMLPOptions
    peft_type = None  # its export is a PREFIX_TUNING adapter, which imports as a prefix prompt
    peft_parameters = True  # PEFT's encoder, under its parameter names

    def build_parameters(self, init, seed=0):
        with seeded(seed):
            encoder = PrefixEncoder(self.tokens, self.dims, self.options.encoder_hidden)
        L = self.dims["num_layers"]
        target = pack_prefix({l: (init[f"prefix.{l}.key"], init[f"prefix.{l}.value"]) for l in range(L)}, L)
        fit_output_layer(encoder.transform[-1], encoder.hidden().detach(), target)
        return encoder

    def to_peft(self, source):
        weight, fields = super().to_peft(source)
        return weight, dict(fields, prefix_projection=True, encoder_hidden_size=self.options.encoder_hidden)
