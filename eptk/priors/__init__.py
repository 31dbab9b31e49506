"""Priors over prompt tensors: the registry (registry.py), the families that need no captured statistics
(basic.py) and those placed relative to a task's activations (region.py).

Importing the package registers every family module in it, so a new family is one new file.
"""
from ..registry import import_modules
from .registry import (PRIORS, Distribution, ParamInfo, Prior, PriorContext, PriorFamily, build_prior, check_prior,
                       jitter, parse_spec,
                       register_prior, spec_choices)

import_modules(__name__, __path__)

__all__ = ["PRIORS", "Distribution", "ParamInfo", "Prior", "PriorContext", "PriorFamily", "build_prior",
           "check_prior", "jitter", "parse_spec", "register_prior", "spec_choices"]
