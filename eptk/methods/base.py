"""The prompt-method interface, its registry, and the no-prompt baseline.

A method is built for one model shape (`dims`) and one prompt length P. It declares the tensors of the
prompt it injects (`TensorSpec`: name, shape, layer, space: soft vectors, deep slot states, per-layer
keys/values), owns the trainable parameters those tensors are materialized from (`build_parameters`: a
`PromptParameters` module; for most methods the prompt tensors themselves, `DirectPrompt`), builds every
layer's prefix keys/values from the prompt (`prefix`), installs and removes the hooks it needs, maps
itself to and from PEFT adapters, and tells `eptk analyze` where a tensor name lives (`locate`).
`PromptedModel` runs the two passes around it.

Priors, the MAP term, collapse metrics, `analyze` and posterior.safetensors see the materialized prompt;
the optimizer, checkpoints and parameters.safetensors see the parameters.
"""
from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import torch
from torch import nn

from ..errors import EptkUsageError
from ..options import NoOptions, build_options, fields_of
from ..registry import Registry
from ..spaces import TensorSpec, slot_rows

METHODS = Registry("method")


def register_method(cls):
    """Class decorator: `--method <cls.name>` builds this class. Its options sit beside the settings of every run
    in config.json, so none may take a setting's name (tests/test_method_contract.py checks)."""
    METHODS.register(cls.name, cls)
    return cls


class PromptParameters(nn.Module):
    """A prompt's trainable parameters and the step that materializes the prompt from them."""

    def prompt(self) -> dict[str, torch.Tensor]:
        """Every prompt tensor by run-directory name, differentiable in the parameters."""
        raise NotImplementedError

    def tensor(self, name: str) -> torch.Tensor:
        """One prompt tensor (a method's hook may ask for one layer's alone)."""
        return self.prompt()[name]

    def named(self) -> dict[str, nn.Parameter]:
        """The trainable parameters by the names checkpoints and parameters.safetensors give them."""
        return dict(self.named_parameters())

    def lr_scales(self, prompt_scales: dict[str, float]) -> dict[str, float]:
        """Each parameter's learning-rate multiplier, from those of the prompt tensors (`--lr-scale`). An
        encoder's parameters serve every tensor at once: one rate."""
        return {name: 1.0 for name in self.named()}


def _key(name: str) -> str:  # ParameterDict keys cannot hold dots
    return name.replace(".", "__")


class DirectPrompt(PromptParameters):
    """The prompt tensors are the parameters (soft, deep, prefix; and any run's prompt read back for inference)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tensors)
        self.values = nn.ParameterDict({_key(n): nn.Parameter(t.detach().clone().float()) for n, t in tensors.items()})

    def tensor(self, name):
        return self.values[_key(name)]

    def prompt(self):
        return {name: self.tensor(name) for name in self.names}

    def named(self):
        return self.prompt()

    def lr_scales(self, prompt_scales):
        return {name: prompt_scales[name] for name in self.names}


class PromptMethod:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions          # the method's own options (eptk/options.py)
    reports_prefix_mass: ClassVar[bool] = False  # eval.json records the attention mass on the prompt
    peft_type: ClassVar[str | None] = None      # the PEFT adapter type it is imported from
    exportable: ClassVar[bool] = True           # `eptk export --format peft` can write it
    peft_parameters: ClassVar[bool] = False     # its parameters are PEFT's training-mode encoder of its export
    # the options tests/test_method_contract.py runs it with: valid on every tiny model (3 to 4 layers)
    contract_options: ClassVar[dict] = {}
    patterns: ClassVar[dict[str, str]] = {}      # tensor-name regex -> space; group 1, if any, is the layer
    keep_sink: bool = False                     # a slot pass whose first slot is left to the model

    def __init__(self, tokens: int, dims: dict, options=None):
        if tokens < 1:
            raise EptkUsageError(f"--tokens must be at least 1 (got {tokens})")
        self.tokens, self.dims = int(tokens), dict(dims)
        self.options = options if options is not None else self.Options()

    # ---- options ----------------------------------------------------------------------------------
    @classmethod
    def check_options(cls, values: dict):
        """The method's options from `values` (option name -> value, defaults for the rest), every value and
        their combination checked before anything is loaded or written."""
        return build_options(cls.Options, values, cls.name, owners=option_owners)

    @classmethod
    def options_from_config(cls, config: dict) -> dict:
        """The option values a run's config.json records (an older run may lack some: their defaults)."""
        return {name: config[name] for name in fields_of(cls.Options) if name in config}

    @classmethod
    def options_of_peft(cls, adapter: dict) -> dict:
        """The option values a PEFT adapter config of this method's type records (imported runs)."""
        return {}

    def config_entries(self) -> dict:
        """What config.json records of the options (top-level keys, read back by `options_from_config`)."""
        return dataclasses.asdict(self.options)

    @property
    def slots(self) -> int:
        """Slots in front of the real tokens: the P trainable ones, plus the model's own first slot with --keep-sink."""
        return self.tokens + int(self.keep_sink)

    # ---- declaration ------------------------------------------------------------------------------
    def tensor_specs(self) -> dict[str, TensorSpec]:
        """The prompt's tensors, by run-directory name, in the order the run files list them."""
        raise NotImplementedError

    def build_parameters(self, init: dict[str, torch.Tensor], seed: int = 0) -> PromptParameters:
        """The trainable parameters, started so that the prompt they materialize is `init` (a prior's sample of
        the prompt tensors), or as near to it as the parameterization reaches; `seed` seeds whatever else the
        parameters hold. Default: the prompt tensors themselves."""
        return DirectPrompt(init)

    @classmethod
    def locate(cls, name: str) -> tuple[int, str] | None:
        """(layer, space) of a tensor this method names `name`, read from the name alone; else None."""
        for pattern, space in cls.patterns.items():
            if match := re.fullmatch(pattern, name):
                return (int(match.group(1)) if match.groups() else 0), space
        return None

    @staticmethod
    def vectors(tensor: torch.Tensor) -> torch.Tensor:
        """A tensor as one row per slot: [P, d] as is, keys/values [Hkv, P, D] with the heads concatenated."""
        return slot_rows(tensor.float())

    # ---- forward ----------------------------------------------------------------------------------
    def install(self, prompted) -> list:
        """Register the hooks the method needs on `prompted.model`; returns their handles."""
        return []

    def prefix(self, prompted) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """layer -> (prefix_k, prefix_v) [Hkv,P,D]: what the real tokens attend to at each layer."""
        raise NotImplementedError

    def slot_pass_inputs(self, prompted) -> tuple[torch.Tensor, int] | None:
        """(inputs_embeds [S,d], first layer) of the slot pass that builds `prefix`, or None for a method whose
        prefix is no slot pass (PromptedModel may then run the slots packed with the tokens in one forward)."""
        return None

    # ---- PEFT -------------------------------------------------------------------------------------
    def export_problem(self) -> str | None:
        """Why this prompt cannot be written as a PEFT adapter, or None."""
        return None

    def to_peft(self, source) -> tuple[torch.Tensor, dict]:
        """(prompt_embeddings, the adapter-config fields of its PEFT type). `source` gives the run's
        `config`, `posterior()` tensors, the slot-pass `prefix()` and `where` (for messages)."""
        raise NotImplementedError

    @classmethod
    def from_peft(cls, adapter: dict, weight: torch.Tensor, dims: dict, where: str, model: str) -> dict[str, torch.Tensor]:
        """The run-directory tensors of a PEFT adapter of type `peft_type` for `model` of these dims."""
        raise NotImplementedError


class NoPrompt(PromptMethod):
    """The baseline: the frozen model alone, through the same code path (not a `--method`)."""
    name = "none"
    exportable = False

    def __init__(self, tokens: int = 0, dims: dict | None = None):
        self.tokens, self.dims, self.options = 0, dict(dims or {}), NoOptions()

    def tensor_specs(self):
        return {}

    def prefix(self, prompted):
        return {}


def get_method(name: str) -> type[PromptMethod]:
    """The method class registered as `name` (a usage error naming the valid methods otherwise)."""
    return METHODS[name]


def build_method(name: str, tokens: int, dims: dict, options: dict | None = None) -> PromptMethod:
    """Method `name` for P = `tokens` on a model of these dims, with these option values (checked)."""
    cls = get_method(name)
    return cls(tokens, dims, cls.check_options(options or {}))


def method_from_config(config: dict, dims: dict | None = None) -> PromptMethod:
    """The method of a run's config.json, for the model dims given (default: those the config records)."""
    dims = dims if dims is not None else {k: config.get(k) for k in
                                          ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")}
    cls = get_method(config["method"])
    return build_method(cls.name, int(config["tokens"]), dims, cls.options_from_config(config))


def option_owners(option: str) -> list[str]:
    """The methods that declare the option `option`."""
    return [name for name, cls in METHODS.items() if option in fields_of(cls.Options)]


def locate(name: str) -> tuple[int, str] | None:
    """(layer, space) of a run-directory tensor name, asking every registered method; None if none knows it."""
    for cls in METHODS.values():
        found = cls.locate(name)
        if found is not None:
            return found
    return None


def peft_types() -> dict[str, type[PromptMethod]]:
    """PEFT adapter type -> the method that imports it."""
    return {cls.peft_type: cls for cls in METHODS.values() if cls.peft_type}
