"""`ptuning`: P-tuning (Liu et al. 2021), a soft prompt produced by a trained encoder, PEFT's P_TUNING.

The trainable parameters are PEFT's `PromptEncoder` (training mode), under its parameter names: P free embeddings
`embedding.weight` [P,d] through an MLP head (Linear d->h, ReLU, Linear h->h, ReLU, Linear h->d) or a
bidirectional LSTM (`lstm_head`) and an MLP head (Linear 2h->2h, ReLU, Linear 2h->d). The encoder's output is the
soft prompt, run as `soft` runs it (one slot pass). The encoder starts at the prior's sample: the embeddings
are the sample and the head's last layer is solved so that the output equals it too (encoders.py).

PEFT: a P_TUNING adapter saved for inference holds the encoder's output alone, `prompt_embeddings` [P,d]
(PEFT's `PromptEncoder` in inference mode is that embedding): the materialized soft prompt. Importing one gives
a `ptuning` run whose prompt is that tensor (its encoder is not in the adapter).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EptkUsageError
from ..options import option
from .base import PromptParameters, register_method
from .encoders import fit_output_layer, seeded
from .soft import SlotOptions, SoftPrompt

ENCODERS = ("mlp", "lstm")


@dataclass(frozen=True)
class PTuningOptions(SlotOptions):
    encoder: str = option("mlp", "the encoder that produces the soft prompt (PEFT's encoder_reparameterization_type)",
                          choices=ENCODERS, in_name=str)
    encoder_hidden: int = option(128, "the encoder's hidden width (PEFT's encoder_hidden_size)", low=1,
                                 high=65536, in_name=lambda h: f"h{h}")
    encoder_layers: int = option(2, "LSTM layers (PEFT's encoder_num_layers; the MLP head has PEFT's fixed three "
                                    "linear layers)", low=1, high=16)


class PromptEncoder(PromptParameters):
    """PEFT's PromptEncoder in training mode: embedding -> [LSTM] -> MLP head -> the soft prompt [P,d]."""

    def __init__(self, tokens: int, width: int, options: PTuningOptions):
        super().__init__()
        self.kind, h = options.encoder, options.encoder_hidden
        self.embedding = nn.Embedding(tokens, width)
        if self.kind == "lstm":
            self.lstm_head = nn.LSTM(input_size=width, hidden_size=h, num_layers=options.encoder_layers,
                                     bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, width))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                          nn.Linear(h, width))

    def hidden(self) -> torch.Tensor:
        """The rows entering the head's last layer [P, h or 2h]."""
        x = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            x = self.lstm_head(x)[0]
        return self.mlp_head[:-1](x)[0]

    def prompt(self):
        return {"soft": self.mlp_head[-1](self.hidden())}


@register_method
class PTuningPrompt(SoftPrompt):
    name = "ptuning"
    Options = PTuningOptions
    peft_type = "P_TUNING"
    peft_parameters = True  # PEFT's encoder, under its parameter names
    patterns = {r"soft": "embedding"}

    def build_parameters(self, init, seed=0):
        with seeded(seed):
            encoder = PromptEncoder(self.tokens, self.dims["hidden_size"], self.options)
        with torch.no_grad():
            encoder.embedding.weight.copy_(init["soft"])
            fit_output_layer(encoder.mlp_head[-1], encoder.hidden(), init["soft"])
        return encoder

    def to_peft(self, source):
        weight, fields = super().to_peft(source)
        o = self.options
        fields = {k: v for k, v in fields.items() if not k.startswith("prompt_tuning") and not k.startswith("tokenizer")}
        return weight, dict(fields, peft_type=self.peft_type, encoder_reparameterization_type=o.encoder.upper(),
                            encoder_hidden_size=o.encoder_hidden, encoder_num_layers=o.encoder_layers,
                            encoder_dropout=0.0)

    @classmethod
    def from_peft(cls, adapter, weight, dims, where, model):
        kind = str(adapter.get("encoder_reparameterization_type") or "MLP").lower()
        if kind not in ENCODERS:
            raise EptkUsageError(f"{where}: encoder_reparameterization_type {kind.upper()!r}; known: MLP, LSTM")
        return super().from_peft(adapter, weight, dims, where, model)

    @classmethod
    def options_of_peft(cls, adapter: dict) -> dict:
        return {"encoder": str(adapter.get("encoder_reparameterization_type") or "MLP").lower(),
                "encoder_hidden": int(adapter.get("encoder_hidden_size") or PTuningOptions.encoder_hidden),
                "encoder_layers": int(adapter.get("encoder_num_layers") or PTuningOptions.encoder_layers)}
