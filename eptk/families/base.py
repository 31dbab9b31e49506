"""What eptk needs to know about an architecture family, in one adapter class.

The prompt passes, capture and the priors reach a model only through its family's adapter: where the
decoder layers and their attention modules are, the dimensions of keys and values, the scale between
the token-embedding matrix and the input of decoder layer 0, and the LM head. Families with sliding
windows, logit soft-capping or fused projections override these.
"""
from __future__ import annotations

import torch

from ..errors import EptkUsageError
from ..registry import Registry

FAMILIES = Registry("architecture", usage=lambda family: family.model_type)


class ModelFamily:
    """Defaults that fit Llama-style Hugging Face causal LMs."""
    model_type = ""        # the config.model_type this instance serves
    layers_attr = "layers"  # the decoder layers' ModuleList on the base model
    attention_attr = "self_attn"  # the attention module of a decoder layer

    def __init__(self, model_type: str):
        self.model_type = model_type

    def unsupported(self, config) -> str | None:
        """Why a model of this family cannot be prompted (a setting eptk does not honour), or None."""
        return None

    def base_model(self, model) -> torch.nn.Module:
        """The decoder stack without the LM head (what the slot and token passes call)."""
        return getattr(model, model.base_model_prefix)

    def decoder_layers(self, model) -> torch.nn.ModuleList:
        layers = getattr(self.base_model(model), self.layers_attr, None)
        if not isinstance(layers, torch.nn.ModuleList):
            raise EptkUsageError(f"cannot find the decoder layers of {type(model).__name__}")
        return layers

    def attention_modules(self, model) -> list[torch.nn.Module]:
        """Each decoder layer's attention module, in layer order."""
        return [getattr(layer, self.attention_attr) for layer in self.decoder_layers(model)]

    def dims(self, model) -> dict:
        cfg = model.config
        hidden, heads = cfg.hidden_size, cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        return {"hidden_size": hidden, "num_layers": cfg.num_hidden_layers, "num_heads": heads,
                "num_kv_heads": kv_heads, "head_dim": head_dim}

    def embedding_scale(self, model) -> float:
        """The factor the model applies to input embeddings before decoder layer 0 (√d in Gemma; 1 here)."""
        return 1.0

    def token_embeddings(self, model) -> torch.Tensor:
        """The vocabulary as layer-0 states: the input-embedding matrix [V,d] times the embedding scale,
        float32 on the CPU (what vocabulary priors sample and analyze compares soft prompts with)."""
        weight = model.get_input_embeddings().weight.detach().float().cpu()
        scale = self.embedding_scale(model)
        return weight if scale == 1 else weight * scale

    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states (after the final norm)."""
        return model.get_output_embeddings()(hidden)


def register_family(*model_types: str):
    """Class decorator: one adapter instance per model type."""
    def wrap(cls):
        for model_type in model_types:
            FAMILIES.register(model_type, cls(model_type))
        return cls
    return wrap


def family_of(model) -> ModelFamily:
    """The adapter of a loaded model; an unsupported architecture is a usage error naming the supported ones."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in FAMILIES or not getattr(model, "_supports_attention_backend", False):
        raise EptkUsageError(f"unsupported architecture {model_type!r}; supported: {FAMILIES.choices()}")
    family = FAMILIES[model_type]
    problem = family.unsupported(model.config)
    if problem:
        raise EptkUsageError(f"unsupported {model_type} model: {problem}")
    return family
