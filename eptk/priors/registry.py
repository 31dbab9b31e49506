"""The prior registry: the spec grammar `family[:args]`, one `Distribution` per prompt tensor, and `Prior`.

A family registers `make(parsed_args, ctx, param) -> Distribution` under its name; `build_prior` parses a
spec (the longest registered family name that prefixes it wins) and makes one distribution per tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import EptkUsageError
from ..registry import Registry
from ..spaces import TensorSpec

ParamInfo = TensorSpec  # a prior sees a prompt tensor as its method declares it: name, shape, layer, space


@dataclass
class PriorContext:
    """What prior families may read. `stats(task, layer)` returns captured activation statistics of the run's
    seed (`stats(task, layer, space="key" / "value")` the captured keys or values of decoder layer `layer`); `reference_stats(task, layer)` those of one fixed capture seed, for a prior that must be the same
    distribution for every run seed (`vae`); without it, `stats` serves both."""
    embeddings: torch.Tensor | None = None          # [V,d] float32 token embeddings in the soft prompt's space
    tokenizer: object = None
    task: str | None = None
    model: str | None = None
    seed: int = 0
    stats: Callable | None = None
    generator: torch.Generator = field(default=None)
    reference_stats: Callable | None = None
    progress: bool = False                          # progress bars for long prior preparation (VAE training)
    # token ids -> layer -> (key, value) [Hkv,T,D]: the frozen model's own keys/values over those tokens
    text_kv: Callable | None = None

    def __post_init__(self):
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def need_embeddings(self, family: str) -> torch.Tensor:
        if self.embeddings is None:
            raise EptkUsageError(f"prior {family!r} needs the model's input embeddings")
        return self.embeddings


class Distribution:
    """A distribution over one prompt tensor."""
    def sample(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Total log-density of x (a scalar), differentiable in x."""
        raise NotImplementedError

    def to(self, device) -> "Distribution":
        for key, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self


@dataclass
class PriorFamily:
    name: str
    args: str
    description: str
    parse: Callable[[str | None], dict]
    make: Callable[[dict, PriorContext, ParamInfo], Distribution]
    needs_stats: bool = False
    # what can be checked before a model loads or statistics are captured (files, task names)
    check: Callable[[dict, PriorContext], None] | None = None


PRIORS = Registry("prior", usage=lambda family: f"{family.name}{family.args}")


def register_prior(name: str, args: str, description: str, parse=None, needs_stats: bool = False,
                   check=None):
    """Decorator registering `make(parsed, ctx, param) -> Distribution` under `name`; `check(parsed, ctx)`
    refuses bad input that needs no model (a missing run, an unknown task)."""
    def wrap(make):
        PRIORS.register(name, PriorFamily(name, args, description, parse or no_args(name), make, needs_stats, check))
        return make
    return wrap


def spec_choices() -> str:
    return PRIORS.choices()


def parse_spec(spec: str) -> tuple[PriorFamily, dict]:
    """'family[:args]' -> (family, parsed args)."""
    spec = (spec or "").strip()
    found = PRIORS.match(spec)
    if found is None:
        raise EptkUsageError(f"unknown prior {spec!r}; valid: {spec_choices()}")
    family, rest = found
    return family, family.parse(rest)


def check_prior(spec: str, ctx: PriorContext) -> None:
    """Everything about a prior spec that can be refused before a model loads: its grammar, its arguments
    and the files and tasks it names (`ctx` carries the model name, task and seed, no embeddings)."""
    family, parsed = parse_spec(spec)
    if family.check is not None:
        family.check(parsed, ctx)


class Prior:
    """One distribution per prompt tensor, built from a spec."""
    def __init__(self, spec: str, dists: dict[str, Distribution]):
        self.spec = spec
        self.dists = dists

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {name: dist.sample(generator).float() for name, dist in self.dists.items()}

    def log_prob(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.dists[name].log_prob(value.float()) for name, value in tensors.items())

    def to(self, device) -> "Prior":
        for dist in self.dists.values():
            dist.to(device)
        return self


def jitter(tensors: dict[str, torch.Tensor], relative: float, seed: int) -> dict[str, torch.Tensor]:
    """Each value times (1 + relative·ε), ε ~ N(0, 1) from its own generator (seeded by `seed`, apart from the
    prior's): `--prior-jitter`, to measure how much a run depends on its start beyond the prior's distribution."""
    if not relative:
        return tensors
    g = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    return {name: (t.double() * (1.0 + relative * torch.randn(t.shape, generator=g, dtype=torch.float64))).to(t.dtype)
            for name, t in sorted(tensors.items())}


def build_prior(spec: str, ctx: PriorContext, params: dict[str, ParamInfo]) -> Prior:
    family, parsed = parse_spec(spec)
    return Prior(spec, {name: family.make(parsed, ctx, info) for name, info in params.items()})


# ---- helpers the families share --------------------------------------------------------------------

def no_args(name):
    def parse(rest):
        if rest:
            raise EptkUsageError(f"prior {name!r} takes no arguments (got {rest!r}); valid: {spec_choices()}")
        return {}
    return parse


def positive_float(name: str, key: str, default: float):
    def parse(rest):
        if rest is None or rest == "":
            return {key: default}
        try:
            value = float(rest)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise EptkUsageError(f"prior {name}:{rest}: {key} must be a positive number, e.g. {name}:{default}")
        return {key: value}
    return parse


def check_width(family: str, param: ParamInfo, width: int) -> None:
    if param.shape[-1] != width:
        raise EptkUsageError(f"prior {family!r} gives vectors of width {width} but {param.name} has width "
                             f"{param.shape[-1]} (prefix key/value tensors take {', '.join(KEY_VALUE_PRIORS)})")


KEY_VALUE_PRIORS = ("normal", "uniform", "xavier", "zero", "text", "posterior", "region:data", "region:new",
                    "region:between", "exclusion")  # the families that serve a prefix's keys/values (README)


def rows(shape) -> int:
    """Rows of a prompt tensor of this shape (vectors of its last dimension)."""
    return int(math.prod(shape[:-1]))
