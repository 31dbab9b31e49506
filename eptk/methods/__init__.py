"""Prompt methods: one module per method, registered by name (`--method`); see base.py for the interface.

Importing the package registers every method module in it, so a new method is one new file.
"""
from ..registry import import_modules
from .base import (METHODS, DirectPrompt, NoPrompt, PromptMethod, PromptParameters, build_method, get_method, locate,
                   method_from_config, option_owners, peft_types, register_method)

import_modules(__name__, __path__)

__all__ = ["METHODS", "DirectPrompt", "NoPrompt", "PromptMethod", "PromptParameters", "build_method", "get_method",
           "locate", "method_from_config", "option_owners", "peft_types", "register_method"]
