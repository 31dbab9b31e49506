"""The prior families that need no captured statistics: normal, uniform, xavier, zero, vocab, text, fitted,
posterior, and the distributions they (and the region families) build on.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import linalg
from ..errors import EptkUsageError, choices
from ..runs import CONFIG, RunDir, is_run
from .registry import Distribution, PriorContext, check_width, positive_float, register_prior, rows


# ---- distributions ------------------------------------------------------------------------------

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
        points = x.reshape(-1, self.centres.shape[1])
        centres = self.centres.to(x.device)
        d2 = torch.cdist(points, centres).pow(2)
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
        self.scale_tril = scale_tril(cov)

    def _mvn(self, device):
        return torch.distributions.MultivariateNormal(self.mean.to(device), scale_tril=self.scale_tril.to(device))

    def sample(self, generator):
        z = torch.randn(rows(self.shape), self.mean.shape[0], generator=generator)  # CPU generator: sample on the CPU
        return (self.mean.cpu() + z @ self.scale_tril.cpu().T).reshape(self.shape)

    def log_prob(self, x):
        return self._mvn(x.device).log_prob(x.reshape(-1, self.mean.shape[0])).sum()


def scale_tril(cov: torch.Tensor) -> torch.Tensor:
    """float32 Cholesky factor of a covariance (with the smallest ridge that makes it positive definite)."""
    return linalg.psd_cholesky(cov.double(), error=EptkUsageError).float()


# ---- the families that need no captured statistics ---------------------------------------------

@register_prior("normal", "[:std]", "isotropic N(0, std^2), std default 0.02 (the paper's baseline)",
                parse=positive_float("normal", "std", 0.02))
def _normal(args, ctx, param):
    return Normal(param.shape, args["std"])


@register_prior("uniform", "[:a]", "U[-a, a], a default 0.5 (Lester et al. 2021)",
                parse=positive_float("uniform", "a", 0.5))
def _uniform(args, ctx, param):
    return Uniform(param.shape, args["a"])


@register_prior("xavier", "", "Xavier-uniform over [rows, width] (the usual deep-prompt init)")
def _xavier(args, ctx, param):
    fan_out = rows(param.shape)
    return Uniform(param.shape, math.sqrt(6.0 / (fan_out + param.shape[-1])))


@register_prior("zero", "", "every element 0 (prefix tuning's zero init; any space); log-density N(0, 0.02^2)")
def _zero(args, ctx, param):
    return PosteriorPrior(torch.zeros(param.shape), 0.0)


@register_prior("vocab", "", "rows of the input-embedding matrix, sampled without replacement")
def _vocab(args, ctx, param):
    emb = ctx.need_embeddings("vocab")
    check_width("vocab", param, emb.shape[1])
    return RowMixture(param.shape, emb)


def _parse_text(rest):
    if not rest or not rest.strip():
        raise EptkUsageError("prior text: needs words, e.g. text:classify the sentiment")
    return {"text": rest}


@register_prior("text", ":<words>", "embeddings of the tokenized text, cycled to the prompt length; for "
                "keys/values (prefix), the frozen model's own keys/values of that text (log-density N(them, 0.02^2))",
                parse=_parse_text)
def _text(args, ctx, param):
    ids = ctx.tokenizer(args["text"], add_special_tokens=False)["input_ids"]
    if not ids:
        raise EptkUsageError(f"prior text:{args['text']!r} tokenizes to nothing")
    if param.space in ("key", "value"):  # [Hkv,P,D]: the text (cycled to P tokens) in front of the real tokens
        if ctx.text_kv is None:
            raise EptkUsageError("prior text: on keys/values needs the frozen model")
        P = param.shape[1]
        cycled = tuple((ids * (P // len(ids) + 1))[:P])
        key, value = ctx.text_kv(cycled)[param.layer]
        return PosteriorPrior(key if param.space == "key" else value, 0.0)
    emb = ctx.need_embeddings("text")
    check_width("text", param, emb.shape[1])
    return RowMixture(param.shape, emb[torch.tensor(ids)], cycle=True)


@register_prior("fitted", "", "full-covariance Gaussian fitted to 20,000 random vocabulary embeddings (paper)")
def _fitted(args, ctx, param):
    emb = ctx.need_embeddings("fitted")
    check_width("fitted", param, emb.shape[1])
    gen = torch.Generator().manual_seed(ctx.seed + 7919)
    picked = emb[torch.randperm(emb.shape[0], generator=gen)[:20000]]
    mean, cov = linalg.fit_gaussian(picked)
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
                "log-density N(posterior, max(std, 0.02)^2)", parse=_parse_posterior,
                check=lambda args, ctx: load_posterior(args["run"], ctx))
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
    path = Path(run)
    if not is_run(path):
        raise EptkUsageError(f"posterior:{run}: not a run directory (no {CONFIG})")
    key = str(path.resolve())
    if key not in _POSTERIOR_CACHE:
        run_dir = RunDir(path)
        config = run_dir.config()
        if ctx.model is not None and config.get("model") not in (None, ctx.model):
            raise EptkUsageError(f"posterior:{run} was tuned on model {config.get('model')!r}, not {ctx.model!r}")
        _POSTERIOR_CACHE[key] = run_dir.tensors("posterior", "posterior")
    return _POSTERIOR_CACHE[key]
