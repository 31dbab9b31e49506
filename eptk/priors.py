"""Priors over prompt tensors: the spec grammar `family[:args]`, sampling and log-densities.

A prior spec builds one `Distribution` per prompt tensor (soft [P,d], deep.<l> [P,d],
prefix.<l>.key/value [Hkv,P,D]). Families that need captured activation statistics (`region:*`,
`exclusion`) register themselves from eptk/region_priors.py through the same registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import EptkUsageError, choices


@dataclass
class ParamInfo:
    name: str      # run-directory name: soft, deep.<l>, prefix.<l>.key, prefix.<l>.value
    shape: tuple
    layer: int     # activation layer: 0 = token embeddings, l = hidden state entering layer l


@dataclass
class PriorContext:
    """What prior families may read. `stats(task, layer)` returns captured activation statistics."""
    embeddings: torch.Tensor | None = None          # [V,d] float32 input-embedding matrix
    tokenizer: object = None
    task: str | None = None
    model: str | None = None
    seed: int = 0
    stats: Callable | None = None
    generator: torch.Generator = field(default=None)

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


PRIORS: dict[str, PriorFamily] = {}


def register_prior(name: str, args: str, description: str, parse=None, needs_stats: bool = False):
    """Decorator registering `make(parsed, ctx, param) -> Distribution` under `name`."""
    def wrap(make):
        PRIORS[name] = PriorFamily(name, args, description, parse or _no_args(name), make, needs_stats)
        return make
    return wrap


def spec_choices() -> str:
    return choices(f"{f.name}{f.args}" for f in PRIORS.values())


def parse_spec(spec: str) -> tuple[PriorFamily, dict]:
    """'family[:args]' -> (family, parsed args). The longest registered family name that prefixes wins."""
    _load_region_priors()
    spec = (spec or "").strip()
    for name in sorted(PRIORS, key=len, reverse=True):
        if spec == name or spec.startswith(name + ":"):
            family = PRIORS[name]
            rest = spec[len(name) + 1:] if spec != name else None
            return family, family.parse(rest)
    raise EptkUsageError(f"unknown prior {spec!r}; valid: {spec_choices()}")


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


def build_prior(spec: str, ctx: PriorContext, params: dict[str, ParamInfo]) -> Prior:
    family, parsed = parse_spec(spec)
    return Prior(spec, {name: family.make(parsed, ctx, info) for name, info in params.items()})


# ---- argument parsing helpers --------------------------------------------------------------------

def _no_args(name):
    def parse(rest):
        if rest:
            raise EptkUsageError(f"prior {name!r} takes no arguments (got {rest!r}); valid: {spec_choices()}")
        return {}
    return parse


def _positive_float(name: str, key: str, default: float):
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


# ---- distributions ----------------------------------------------------------------------------

class Normal(Distribution):
    """Isotropic N(mean, std^2) per element."""
    def __init__(self, shape, std: float, mean: torch.Tensor | None = None):
        self.shape, self.std = tuple(shape), std
        self.mean = torch.zeros(self.shape) if mean is None else mean.float()

    def sample(self, generator):
        return self.mean.cpu() + self.std * torch.randn(self.shape, generator=generator)

    def log_prob(self, x):
        z = (x - self.mean.to(x.device)) / self.std
        return -0.5 * (z * z).sum() - x.numel() * (math.log(self.std) + 0.5 * math.log(2 * math.pi))


class Uniform(Distribution):
    """U[-a, a] per element. Its log-density is constant on the support (no MAP pull); outside it is
    reported as the support's value so that training stays finite."""
    def __init__(self, shape, bound: float):
        self.shape, self.bound = tuple(shape), bound

    def sample(self, generator):
        return (torch.rand(self.shape, generator=generator) * 2 - 1) * self.bound

    def log_prob(self, x):
        return x.sum() * 0.0 - x.numel() * math.log(2 * self.bound)


class RowMixture(Distribution):
    """Rows drawn from a set of centre vectors; log-density of an isotropic Gaussian kernel mixture
    around the centres (bandwidth = median distance of a centre to its nearest other centre)."""
    def __init__(self, shape, centres: torch.Tensor, cycle: bool = False):
        self.shape, self.centres, self.cycle = tuple(shape), centres.float(), cycle
        self.bandwidth = _nn_bandwidth(self.centres)

    def sample(self, generator):
        n = self.shape[0]
        if self.cycle:
            idx = torch.arange(n) % self.centres.shape[0]
        else:
            idx = torch.randperm(self.centres.shape[0], generator=generator)[:n]
            if idx.numel() < n:
                idx = torch.randint(self.centres.shape[0], (n,), generator=generator)
        return self.centres.cpu()[idx].clone().reshape(self.shape)

    def log_prob(self, x):
        rows = x.reshape(-1, self.centres.shape[1])
        centres = self.centres.to(x.device)
        d2 = torch.cdist(rows, centres).pow(2)
        dim, h = centres.shape[1], self.bandwidth
        per_row = torch.logsumexp(-0.5 * d2 / h**2, dim=1) - math.log(centres.shape[0]) \
            - dim * (math.log(h) + 0.5 * math.log(2 * math.pi))
        return per_row.sum()


def _nn_bandwidth(centres: torch.Tensor, probe: int = 2048) -> float:
    sub = centres[:probe]
    if sub.shape[0] < 2:
        return float(sub.norm(dim=-1).mean().clamp_min(1e-3)) * 0.1 + 1e-3
    d = torch.cdist(sub, sub)
    d.fill_diagonal_(float("inf"))
    return max(float(d.min(dim=1).values.median()), 1e-4)


class Gaussian(Distribution):
    """Full-covariance Gaussian per row: every row of the tensor is an independent N(mean, cov)."""
    def __init__(self, shape, mean: torch.Tensor, cov: torch.Tensor):
        self.shape = tuple(shape)
        self.mean = mean.float()
        self.scale_tril = psd_cholesky(cov.double()).float()

    def _mvn(self, device):
        return torch.distributions.MultivariateNormal(self.mean.to(device), scale_tril=self.scale_tril.to(device))

    def sample(self, generator):
        rows = self.shape[0] if len(self.shape) == 2 else int(torch.tensor(self.shape[:-1]).prod())
        z = torch.randn(rows, self.mean.shape[0], generator=generator)  # CPU generator: sample on the CPU
        return (self.mean.cpu() + z @ self.scale_tril.cpu().T).reshape(self.shape)

    def log_prob(self, x):
        return self._mvn(x.device).log_prob(x.reshape(-1, self.mean.shape[0])).sum()


def psd_cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a covariance, adding the smallest ridge that makes it positive definite."""
    cov = 0.5 * (cov + cov.T)
    ridge = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype))
        if int(info) == 0:
            return factor
        ridge *= 10
    raise EptkUsageError("covariance is not positive definite even with a ridge")


def fit_gaussian(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = rows.double()
    mean = x.mean(0)
    xc = x - mean
    return mean.float(), (xc.T @ xc / max(x.shape[0] - 1, 1)).float()


def _check_width(family: str, param: ParamInfo, width: int) -> None:
    if param.shape[-1] != width:
        raise EptkUsageError(f"prior {family!r} gives vectors of width {width} but {param.name} has width "
                             f"{param.shape[-1]} (prefix key/value tensors need normal, uniform or xavier)")


# ---- the families that need no captured statistics ---------------------------------------------

@register_prior("normal", "[:std]", "isotropic N(0, std^2), std default 0.02 (the paper's baseline)",
                parse=_positive_float("normal", "std", 0.02))
def _normal(args, ctx, param):
    return Normal(param.shape, args["std"])


@register_prior("uniform", "[:a]", "U[-a, a], a default 0.5 (Lester et al. 2021)",
                parse=_positive_float("uniform", "a", 0.5))
def _uniform(args, ctx, param):
    return Uniform(param.shape, args["a"])


@register_prior("xavier", "", "Xavier-uniform over [rows, width] (the usual deep-prompt init)")
def _xavier(args, ctx, param):
    fan_out = int(torch.tensor(param.shape[:-1]).prod())
    return Uniform(param.shape, math.sqrt(6.0 / (fan_out + param.shape[-1])))


@register_prior("vocab", "", "rows of the input-embedding matrix, sampled without replacement")
def _vocab(args, ctx, param):
    emb = ctx.need_embeddings("vocab")
    _check_width("vocab", param, emb.shape[1])
    return RowMixture(param.shape, emb)


def _parse_text(rest):
    if not rest or not rest.strip():
        raise EptkUsageError("prior text: needs words, e.g. text:classify the sentiment")
    return {"text": rest}


@register_prior("text", ":<words>", "embeddings of the tokenized text, cycled to the prompt length",
                parse=_parse_text)
def _text(args, ctx, param):
    emb = ctx.need_embeddings("text")
    _check_width("text", param, emb.shape[1])
    ids = ctx.tokenizer(args["text"], add_special_tokens=False)["input_ids"]
    if not ids:
        raise EptkUsageError(f"prior text:{args['text']!r} tokenizes to nothing")
    return RowMixture(param.shape, emb[torch.tensor(ids)], cycle=True)


@register_prior("fitted", "", "full-covariance Gaussian fitted to 20,000 random vocabulary embeddings (paper)")
def _fitted(args, ctx, param):
    emb = ctx.need_embeddings("fitted")
    _check_width("fitted", param, emb.shape[1])
    gen = torch.Generator().manual_seed(ctx.seed + 7919)
    rows = emb[torch.randperm(emb.shape[0], generator=gen)[:20000]]
    mean, cov = fit_gaussian(rows)
    return Gaussian(param.shape, mean, cov)


def _parse_posterior(rest):
    if not rest:
        raise EptkUsageError("prior posterior: needs a run directory, e.g. posterior:runs/my-run[:std]")
    path, std = rest, 0.0
    head, _, tail = rest.rpartition(":")
    if head:
        try:
            path, std = head, float(tail)
        except ValueError:
            path, std = rest, 0.0
    if std < 0 or not math.isfinite(std):
        raise EptkUsageError(f"prior posterior:{rest}: std must be a non-negative number")
    return {"run": path, "std": std}


@register_prior("posterior", ":<run>[:std]", "the posterior of an earlier run (+ N(0, std^2) noise); "
                "log-density N(posterior, max(std, 0.02)^2)", parse=_parse_posterior)
def _posterior(args, ctx, param):
    tensors = load_posterior(args["run"], ctx)
    if param.name not in tensors:
        raise EptkUsageError(f"run {args['run']} has no tensor {param.name!r} (it has: {choices(sorted(tensors))})")
    value = tensors[param.name]
    if tuple(value.shape) != tuple(param.shape):
        raise EptkUsageError(f"run {args['run']}: {param.name} has shape {tuple(value.shape)}, this run needs "
                             f"{tuple(param.shape)} (another model, width or prompt length)")
    return PosteriorPrior(value, args["std"])


class PosteriorPrior(Normal):
    def __init__(self, centre: torch.Tensor, std: float):
        super().__init__(centre.shape, max(std, 0.02), mean=centre)
        self.noise = std

    def sample(self, generator):
        return self.mean.cpu() + self.noise * torch.randn(self.shape, generator=generator)


_POSTERIOR_CACHE: dict[str, dict] = {}


def load_posterior(run: str, ctx: PriorContext) -> dict[str, torch.Tensor]:
    from pathlib import Path

    from .io import load_tensors, read_json

    path = Path(run)
    if not (path / "config.json").is_file():
        raise EptkUsageError(f"posterior:{run}: not a run directory (no config.json)")
    key = str(path.resolve())
    if key not in _POSTERIOR_CACHE:
        config = read_json(path / "config.json", "run config")
        if ctx.model is not None and config.get("model") not in (None, ctx.model):
            raise EptkUsageError(f"posterior:{run} was tuned on model {config.get('model')!r}, not {ctx.model!r}")
        _POSTERIOR_CACHE[key] = load_tensors(path / "posterior.safetensors", "posterior")
    return _POSTERIOR_CACHE[key]


def _load_region_priors() -> None:
    """Region priors live in their own module; importing it registers them."""
    try:
        from . import region_priors  # noqa: F401
    except ImportError as exc:
        if "region_priors" not in str(exc):
            raise
