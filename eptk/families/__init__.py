"""Model families: one adapter per architecture family, found by `config.model_type`.

Importing the package registers every adapter module in it (llama.py, gpt2.py, ...): a new family is
one new file with a `ModelFamily` subclass registered under its model types.
"""
from __future__ import annotations

from ..registry import import_modules
from .base import FAMILIES, ModelFamily, family_of, register_family

import_modules(__name__, __path__)


def decoder_layers(model):
    """The decoder layers of a supported causal LM, in order."""
    return family_of(model).decoder_layers(model)


def model_dims(model) -> dict:
    """hidden_size, num_layers, num_heads, num_kv_heads, head_dim of a supported causal LM."""
    return family_of(model).dims(model)


__all__ = ["FAMILIES", "ModelFamily", "family_of", "register_family", "decoder_layers", "model_dims"]
