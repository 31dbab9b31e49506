"""What eptk needs to know about an architecture family, in one adapter class.

The prompt passes, capture and the priors reach a model only through its family's adapter: where the
decoder layers and their attention modules are, the dimensions of keys and values, the space of the
soft prompt (the model's `inputs_embeds`), the LM head, and what eptk cannot honour. Sliding windows and
attention soft-capping need nothing here: the attention modules pass them to `eptk_attention`.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch

from ..errors import EptkUsageError
from ..registry import Registry

FAMILIES = Registry("architecture", usage=lambda family: family.model_type)
# The random test models' sliding windows: smaller than the tests' [slots ; tokens] (5 + 11), so they bite.
TINY_WINDOW = 6
TINY_ALTERNATING = ["sliding_attention", "full_attention"] * 2  # Gemma-2/3's local and global layers


class ModelFamily:
    """Defaults that fit Llama-style Hugging Face causal LMs."""
    model_type = ""        # the config.model_type this instance serves
    layers_attr = "layers"  # the decoder layers' ModuleList on the base model
    attention_attr = "self_attn"  # the attention module of a decoder layer
    # `tiny:<name>` random test models of this family: name -> the HF config, given the settings every tiny model
    # shares (vocabulary, special tokens, positions), with the family's attention features switched on
    tiny_configs: ClassVar[dict[str, Callable[[dict], object]]] = {}

    def __init__(self, model_type: str):
        self.model_type = model_type

    def unsupported(self, config) -> str | None:
        """Why a model of this family cannot be prompted (a setting eptk does not honour), or None."""
        if getattr(config, "is_causal", True) is False or getattr(config, "use_bidirectional_attention", False):
            return "bidirectional attention (is_causal=False / use_bidirectional_attention) is not implemented by eptk"
        if getattr(config, "add_cross_attention", False):
            return "cross-attention (add_cross_attention=True) is not implemented by eptk"
        return None

    def exact_positions(self, model) -> int | None:
        """How many positions ([slots ; tokens]) the two passes can span and still equal one full forward, or
        None for no limit. RoPE variants that switch their frequencies by the largest position of a forward
        (dynamic NTK, LongRoPE) switch in each pass on its own, so past their original length they differ."""
        limits = []
        for params in rope_parameter_sets(model.config):
            kind = str(params.get("rope_type") or params.get("type") or "default")
            if "dynamic" in kind:
                limits.append(model.config.max_position_embeddings)
            elif kind == "longrope":
                limits.append(params.get("original_max_position_embeddings")
                              or getattr(model.config, "original_max_position_embeddings", None)
                              or model.config.max_position_embeddings)
        return min(limits) if limits else None

    def max_positions(self, model) -> tuple[int, str] | None:
        """The most positions one sequence ([slots ; tokens ; generated tokens]) may span, and why: the model's
        maximum positions (max_position_embeddings; GPT-2's n_positions), or fewer where the two passes equal
        one full forward only up to fewer (`exact_positions`); None when the config states neither."""
        stated = getattr(model.config, "max_position_embeddings", None)
        exact = self.exact_positions(model)
        if isinstance(exact, int) and (not isinstance(stated, int) or exact < stated):
            return exact, (f"the {exact} positions this model's RoPE scaling is exact for in two passes (it switches "
                           f"frequencies with the sequence length)")
        if isinstance(stated, int) and stated > 0:
            return stated, f"the {stated} positions this model takes (max_position_embeddings)"
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
        """The factor the input-embedding module multiplies its rows by, in the weights' dtype as the module
        applies it: its `embed_scale` (√d in Gemma-2/3), else 1. `inputs_embeds` bypass the module."""
        module = model.get_input_embeddings()
        scale = getattr(module, "embed_scale", None)
        return 1.0 if scale is None else float(torch.as_tensor(scale).to(module.weight.dtype))

    def token_embeddings(self, model) -> torch.Tensor:
        """The vocabulary in the soft prompt's space, the space of the model's `inputs_embeds`: the
        input-embedding matrix [V,d] times the embedding scale, float32 on the CPU (what vocabulary priors
        sample and analyze compares soft prompts with)."""
        weight = model.get_input_embeddings().weight.detach().float().cpu()
        scale = self.embedding_scale(model)
        return weight if scale == 1 else weight * scale

    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on final hidden states (after the final norm)."""
        return model.get_output_embeddings()(hidden)


def rope_parameter_sets(config) -> list[dict]:
    """The RoPE settings of a config: one dict, or one per layer type (Gemma-3's local and global layers)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return []
    nested = [v for v in params.values() if isinstance(v, dict)]
    return nested if nested else [params]


def register_family(*model_types: str):
    """Class decorator: one adapter instance per model type."""
    def wrap(cls):
        for model_type in model_types:
            FAMILIES.register(model_type, cls(model_type))
        return cls
    return wrap


def tiny_configs() -> dict[str, Callable[[dict], object]]:
    """Every registered family's `tiny:<name>` config builders, in registration order."""
    found = {}
    for family in FAMILIES.values():
        found.update(family.tiny_configs)
    return found


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
