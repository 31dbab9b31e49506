"""Priors placed relative to a task's captured activations: region:data, region:new, region:between,
exclusion.

Each family reads `ctx.stats(task, layer)` (a `LayerActivations`: mean, covariance, shrunk covariance
and a reservoir sample of token activations at that layer) for the layer of each prompt tensor:
`soft` is layer 0 (token embeddings), `deep.<l>` layer l. A prefix's keys/values `prefix.<l>.key` /
`.value` [Hkv,P,D] read `ctx.stats(task, l, space="key" / "value")`, the task's captured keys or values of
decoder layer l, one row per token with its kv heads concatenated; the family then works on the prefix as P
such rows (`SlotRows`), so every region family serves both kinds of space with one sampler.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .. import linalg
from ..errors import EptkUsageError
from ..spaces import KEY_VALUE, TensorSpec, capture_space, from_slot_rows, slot_rows
from ..stats import LayerActivations
from ..tasks import load_task
from .basic import Gaussian, RowMixture, scale_tril
from .registry import Distribution, ParamInfo, PriorContext, check_width, positive_float, register_prior, rows

log = logging.getLogger(__name__)

KNN_K = 5           # region:new: the k of the kNN radius
KNN_QUANTILE = 0.95  # region:new: the kNN radius is this quantile of the data points' own k-NN distances
                     # (the max is set by a handful of outlier tokens far outside the norm band)
MARGIN = 0.05       # region:new: samples clear each bound by 5%
NORM_BAND = (0.05, 0.95)
POOL_ROWS = 256     # region:new: drawn points whose kernel mixture is the log-density


# ---- shared --------------------------------------------------------------------------------------

def layer_stats_for(family: str, ctx: PriorContext, param: ParamInfo, task: str | None,
                    reference: bool = False) -> LayerActivations:
    """The captured statistics at the layer of `param` in its space (activations for soft and deep vectors, the
    keys or values of its decoder layer for a prefix's; a key/value `param` is given as its slot rows, see
    `slot_row_spec`), checked for width (`reference`: those of the fixed capture seed, `ctx.reference_stats`,
    when the context has them)."""
    if ctx.stats is None:
        raise EptkUsageError(f"prior {family!r} needs captured activation statistics of a task "
                             f"(give --task, or name one: {family}:<task>)")
    source = ctx.reference_stats if reference and ctx.reference_stats is not None else ctx.stats
    space = capture_space(param.space)
    # activations keep the two-argument call (the statistics callables written before key/value spaces)
    stats = source(task or ctx.task, param.layer) if space == "activation" else \
        source(task or ctx.task, param.layer, space=space)
    check_width(family, param, stats.dim)
    return stats


class SlotRows(Distribution):
    """A distribution over the P slot rows [P, Hkv*D] of a key/value tensor, seen as that tensor [Hkv,P,D]."""

    def __init__(self, rows: Distribution, shape):
        self.rows, self.shape = rows, tuple(shape)

    def sample(self, generator):
        return from_slot_rows(self.rows.sample(generator), self.shape)

    def log_prob(self, x):
        return self.rows.log_prob(slot_rows(x))

    def to(self, device):
        self.rows.to(device)
        return self

    @property
    def acceptance_rate(self) -> float:  # an exclusion prior's, logged by tune (AttributeError for the others)
        return self.rows.acceptance_rate


def sampler_seed(ctx: PriorContext, param: ParamInfo, salt: int) -> int:
    """The seed of a family's own sampler for one tensor: apart per run seed, layer and (keys vs values) space."""
    space = KEY_VALUE.index(param.space) + 1 if param.space in KEY_VALUE else 0
    return ctx.seed * 1_000_003 + 7 * param.layer + salt + 100_003 * space


def slot_row_spec(param: ParamInfo) -> ParamInfo:
    """A key/value tensor [Hkv,P,D] as its slot rows [P, Hkv*D] (the layout of captured keys/values)."""
    heads, slots, width = param.shape
    return TensorSpec(param.name, (slots, heads * width), param.layer, param.space)


def over_slot_rows(make):
    """A region family's `make` for every space: on keys/values it builds over the slot rows and wraps them."""
    def wrapped(args, ctx, param):
        if param.space not in KEY_VALUE:
            return make(args, ctx, param)
        return SlotRows(make(args, ctx, slot_row_spec(param)), param.shape)
    return wrapped


def _check_tasks(args, ctx) -> None:
    """The tasks a region prior names resolve (their statistics are captured later, with the model)."""
    for task in args.get("tasks") or [args.get("task") or ctx.task]:
        if task:
            load_task(task, ctx.seed)


def _parse_task(name: str):
    def parse(rest):
        if rest is not None and not rest.strip():
            raise EptkUsageError(f"prior {name}: needs a task after the colon, e.g. {name}:arith (or {name})")
        return {"task": rest.strip() if rest else None}
    return parse


# ---- region:data ---------------------------------------------------------------------------------

@register_prior("region:data", "[:task]", "Gaussian fitted to the task's activations at each prompted layer "
                "(soft: token embeddings, deep.<l>: layer l)", parse=_parse_task("region:data"), needs_stats=True,
                check=_check_tasks)
@over_slot_rows
def _region_data(args, ctx, param):
    stats = layer_stats_for("region:data", ctx, param, args["task"])
    return Gaussian(param.shape, stats.mean, stats.cov)


# ---- region:new ----------------------------------------------------------------------------------

@dataclass
class NewRegionBounds:
    """What every region:new sample must clear (before the margin)."""
    mahalanobis: float   # the largest Mahalanobis distance of any captured token (shrunk covariance)
    norm_lo: float       # the data's 5th percentile of norms
    norm_hi: float       # the data's 95th percentile of norms
    knn_radius: float    # KNN_QUANTILE of the data points' distances to their k-th nearest other data point
    k: int


def knn_distance(x: torch.Tensor, data: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest row of data (skipping itself when x is data)."""
    kth = min(k + 1 if exclude_self else k, data.shape[0])
    data = data.double()
    return torch.cat([torch.cdist(chunk.double(), data).topk(kth, dim=1, largest=False).values[:, -1]
                      for chunk in x.split(1024)])


def new_region_bounds(stats: LayerActivations, k: int = KNN_K) -> NewRegionBounds:
    data = stats.samples.double()
    if data.shape[0] <= k:
        raise EptkUsageError(f"region:new needs more than {k} captured token activations at layer {stats.layer} "
                             f"(have {data.shape[0]}); capture more examples")
    norms = data.norm(dim=1)
    lo, hi = torch.quantile(norms, torch.tensor(NORM_BAND, dtype=torch.float64)).tolist()
    # every token the capture saw (its second pass), else only the reservoir (statistics before eptk-stats/4)
    worst = float(stats.mahalanobis(data).max())
    if stats.max_mahalanobis is None:
        log.warning("region:new at layer %d: these statistics predate eptk-stats/4 and record no distance over "
                    "every token; the bound is the reservoir's (recapture for the full guarantee)", stats.layer)
    else:
        worst = max(worst, stats.max_mahalanobis)
    return NewRegionBounds(mahalanobis=worst, norm_lo=lo, norm_hi=hi,
                           knn_radius=float(torch.quantile(knn_distance(data, data, k, exclude_self=True),
                                                           KNN_QUANTILE)), k=k)


class NewRegion(RowMixture):
    """Vectors outside the data cloud of one layer, every row checked against `NewRegionBounds`.

    Sampler (per row): a target norm ρ ~ U(band), a direction u ∝ Σ⁻¹ᐟ²-weighted Gaussian draw
    (u = L⁻ᵀg, so it leans toward low-variance directions where leaving the data is cheapest), and
    the path v(t) = ρ·(μ + t·u)/‖μ + t·u‖: every point has norm exactly ρ; t runs over a geometric grid
    from the step that reaches the data's largest Mahalanobis distance up to t = ∞ (v = ρ·u). The
    first point of the path that clears all three bounds by the margin is taken; rows whose path
    never does are redrawn. If too few rows succeed the data fills its own norm band in every
    direction tried, and the prior refuses with the numbers.

    log-density: an isotropic Gaussian kernel mixture over POOL_ROWS points drawn at construction
    (bandwidth = median distance of a pool point to its nearest other one) — a smooth density of
    the sampler's own output, finite and differentiable everywhere, highest in the new region.
    """

    def __init__(self, shape, stats: LayerActivations, generator: torch.Generator, margin: float = MARGIN,
                 k: int = KNN_K):
        self.stats, self.margin, self.k = stats, margin, k
        self.bounds = new_region_bounds(stats, k)
        self.data = stats.samples.double()
        self.mean = stats.mean.double()
        self.tril = stats.scale_tril().double()
        pool = self.draw(POOL_ROWS, generator)
        super().__init__(shape, pool.float())

    def checks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-row booleans for the three bounds (with the margin), x [m,d]."""
        b, m = self.bounds, self.margin
        far, in_band = self._mahalanobis_and_norm(x)
        return {"mahalanobis": far, "norm": in_band,
                "knn": knn_distance(x, self.data, self.k) > b.knn_radius * (1 + m)}

    def cheap_checks(self, x: torch.Tensor) -> torch.Tensor:
        """The Mahalanobis and norm bounds together (the kNN bound needs distances to every data point)."""
        far, in_band = self._mahalanobis_and_norm(x)
        return far & in_band

    def _mahalanobis_and_norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m = self.bounds, self.margin
        norms = x.double().norm(dim=1)
        far = linalg.mahalanobis(x.double(), self.tril, self.mean) > b.mahalanobis * (1 + m)
        return far, (norms >= b.norm_lo) & (norms <= b.norm_hi)

    def draw(self, rows: int, generator: torch.Generator, rounds: int = 20) -> torch.Tensor:
        b, m = self.bounds, self.margin
        d = self.mean.shape[0]
        steps = 2.0 ** (torch.arange(16, dtype=torch.float64) / 2)             # 1 .. 181 × the first step
        found: list[torch.Tensor] = []
        have, tried = 0, 0
        for _ in range(rounds):
            need = rows - have
            if need <= 0:
                break
            n = max(need + need // 4, 16)
            tried += n
            width = b.norm_hi - b.norm_lo
            rho = b.norm_lo + width * (0.02 + 0.96 * torch.rand(n, 1, generator=generator, dtype=torch.float64))
            g = torch.randn(n, d, generator=generator, dtype=torch.float64)
            u = torch.linalg.solve_triangular(self.tril.T, g.T, upper=True).T
            u = u / u.norm(dim=1, keepdim=True)
            per_unit = linalg.mahalanobis(u, self.tril).unsqueeze(1)
            t = b.mahalanobis * (1 + m) / per_unit * steps                        # [n, S]
            path = self.mean + t.unsqueeze(-1) * u.unsqueeze(1)                   # [n, S, d]
            path = torch.cat([path, u.unsqueeze(1)], dim=1)                       # t = ∞
            path = rho.unsqueeze(-1) * path / path.norm(dim=-1, keepdim=True)
            cheap = self.cheap_checks(path.reshape(-1, d)).reshape(n, -1)
            # walk the paths outward; the kNN bound (distances to every data point) only where needed
            done = torch.zeros(n, dtype=torch.bool)
            for step in range(path.shape[1]):
                rows_here = torch.nonzero(~done & cheap[:, step]).squeeze(1)
                if rows_here.numel():
                    far = knn_distance(path[rows_here, step], self.data, self.k) > b.knn_radius * (1 + m)
                    hit = rows_here[far]
                    done[hit] = True
                    chosen = path[hit, step]
                    found.append(chosen[:rows - have])
                    have += min(chosen.shape[0], rows - have)
                if have >= rows or bool(done.all()):
                    break
        if have < rows:
            raise EptkUsageError(
                f"region:new: found only {have} of {rows} vectors outside the data at layer {self.stats.layer} "
                f"after {tried} tries (data: max Mahalanobis {b.mahalanobis:.3g}, norms {b.norm_lo:.3g}.."
                f"{b.norm_hi:.3g}, kNN radius {b.knn_radius:.3g}); the data fills its norm band here, use "
                f"another layer or prior")
        return torch.cat(found)[:rows]

    def sample(self, generator):
        return self.draw(rows(self.shape), generator).float().reshape(self.shape)

    def to(self, device):
        self.centres = self.centres.to(device)
        return self


@register_prior("region:new", "[:task]", "outside the data: Mahalanobis beyond every captured data point, norm in "
                "the data's 5-95% norm range, k=5 nearest-neighbour distance beyond the data's own kNN radius (95th percentile)",
                parse=_parse_task("region:new"), needs_stats=True, check=_check_tasks)
@over_slot_rows
def _region_new(args, ctx, param):
    stats = layer_stats_for("region:new", ctx, param, args["task"])
    gen = torch.Generator().manual_seed(sampler_seed(ctx, param, 11))
    return NewRegion(param.shape, stats, gen)


# ---- region:between ------------------------------------------------------------------------------

class Between(Distribution):
    """x = α·a + (1−α)·b per row, a ~ N(μA, ΣA), b ~ N(μB, ΣB), α ~ U[0,1] (the paper's interpolation).

    log-density: the Gaussian with the interpolation's exact first two moments,
    mean ½(μA+μB), cov ⅓ΣA + ⅓ΣB + (1/12)(μA−μB)(μA−μB)ᵀ  (E[α²] = E[(1−α)²] = ⅓, Var α = 1/12).
    """

    def __init__(self, shape, a: LayerActivations, b: LayerActivations):
        self.shape = tuple(shape)
        self.a = Gaussian(shape, a.mean, a.cov)
        self.b = Gaussian(shape, b.mean, b.cov)
        delta = (a.mean - b.mean).double()
        cov = (a.cov.double() + b.cov.double()) / 3 + torch.outer(delta, delta) / 12
        self.moments = Gaussian(shape, 0.5 * (a.mean + b.mean), cov)

    def sample_with_parts(self, generator):
        """(x, alpha [rows,1], a [rows,d], b [rows,d]) with x = alpha·a + (1−alpha)·b row by row."""
        n = rows(self.shape)
        a = self.a.sample(generator).reshape(n, -1)
        b = self.b.sample(generator).reshape(n, -1)
        alpha = torch.rand(n, 1, generator=generator)
        return (alpha * a + (1 - alpha) * b).reshape(self.shape), alpha, a, b

    def sample(self, generator):
        return self.sample_with_parts(generator)[0]

    def log_prob(self, x):
        return self.moments.log_prob(x)

    def to(self, device):
        for g in (self.a, self.b, self.moments):
            g.to(device)
        return self


def _parse_between(rest):
    tasks = [t.strip() for t in (rest or "").split(",")]
    if len(tasks) != 2 or not all(tasks):
        raise EptkUsageError(f"prior region:between needs two tasks, e.g. region:between:arith,qa (got {rest!r})")
    return {"tasks": tasks}


@register_prior("region:between", ":<taskA>,<taskB>", "a·x + (1-a)·y with x, y from the two tasks' Gaussians, "
                "a ~ U[0,1] (paper)", parse=_parse_between, needs_stats=True, check=_check_tasks)
@over_slot_rows
def _region_between(args, ctx, param):
    task_a, task_b = args["tasks"]
    return Between(param.shape, layer_stats_for("region:between", ctx, param, task_a),
                   layer_stats_for("region:between", ctx, param, task_b))


# ---- exclusion -----------------------------------------------------------------------------------

class Exclusion(Distribution):
    """The paper's Gaussian-exclusion prior around the data Gaussian N(μ, Σ) of a layer.

    Proposals come from the wide N(μ, c_d·Σ), c_d = c^(2/d), and are accepted with
    p = max(0, 1 − N(x; μ, Σ)/N(x; μ, c_d·Σ)). In log space, with D² the Mahalanobis distance under Σ,
    log(N/N_wide) = log c − ½·D²·(1 − 1/c_d) (|c_d·Σ| = c²|Σ|), so the accepted region is
    D² > 2 log c / (1 − 1/c_d). `acceptance_rate` is the fraction of proposals accepted so far
    (4096 calibration proposals at construction, then every sample() call); it is logged.

    log-density: the accepted distribution, N_wide(x)·p(x) / acceptance_rate. Inside the excluded
    core the exact density is 0; there p is replaced by τ·softplus((1 − ratio)/τ), τ = 0.01, which
    equals p outside the core up to O(τ) and inside it keeps the log-density finite and falling
    linearly toward the centre, so MAP training pushes vectors out of the core.
    """
    TAU = 0.01

    def __init__(self, shape, stats: LayerActivations, c: float, generator: torch.Generator):
        self.shape, self.c = tuple(shape), float(c)
        self.mean = stats.mean.float()
        self.scale_tril = scale_tril(stats.cov)   # the region:data Gaussian
        d = self.mean.shape[0]
        self.c_dim = self.c ** (2.0 / d)
        self.log_det = 2 * float(self.scale_tril.double().diagonal().log().sum())
        self.proposed = self.accepted = 0
        self.acceptance_rate = float("nan")
        self.draw(4096, generator, calibrate=True)
        log.info("exclusion:%g prior at layer %d: acceptance rate %.3f", self.c, stats.layer, self.acceptance_rate)

    def _log_ratio(self, d2: torch.Tensor) -> torch.Tensor:
        return math.log(self.c) - 0.5 * d2 * (1 - 1 / self.c_dim)

    def draw(self, rows: int, generator: torch.Generator, calibrate: bool = False) -> torch.Tensor:
        d = self.mean.shape[0]
        out, have = [], 0
        while have < rows:
            n = rows if calibrate else max(64, int(2 * (rows - have) / max(self.acceptance_rate, 1e-3)))
            g = torch.randn(n, d, generator=generator, dtype=torch.float64)
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            d2 = self.c_dim * (g * g).sum(1)                     # Mahalanobis² under Σ of μ + √c_d·L·g
            accept = u < -torch.expm1(self._log_ratio(d2).clamp(max=0.0))
            self.proposed += n
            self.accepted += int(accept.sum())
            self.acceptance_rate = self.accepted / self.proposed
            x = self.mean.double().cpu() + math.sqrt(self.c_dim) * g[accept] @ self.scale_tril.double().cpu().T
            out.append(x)
            have += x.shape[0]
            if calibrate:
                break
            if self.proposed > 50_000_000 and self.accepted == 0:
                raise EptkUsageError(f"exclusion:{self.c}: no proposal accepted in {self.proposed}; use a larger c")
        return torch.cat(out)[:rows]

    def sample(self, generator):
        x = self.draw(rows(self.shape), generator).float().reshape(self.shape)
        log.info("exclusion:%g acceptance rate %.3f over %d proposals", self.c, self.acceptance_rate, self.proposed)
        return x

    def mahalanobis2(self, x: torch.Tensor) -> torch.Tensor:
        return linalg.whiten(x, self.scale_tril, self.mean).reshape(-1, self.mean.shape[0]).pow(2).sum(1)

    def log_prob(self, x):
        d = self.mean.shape[0]
        d2 = self.mahalanobis2(x)
        log_wide = -0.5 * d2 / self.c_dim - 0.5 * (self.log_det + 2 * math.log(self.c)) \
            - 0.5 * d * math.log(2 * math.pi)
        s = -torch.expm1(self._log_ratio(d2)) / self.TAU        # (1 − ratio)/τ: p/τ outside the core, < 0 inside
        # log softplus(s), = s where softplus underflows (deep in the core); both branches kept finite
        log_p = math.log(self.TAU) + torch.where(
            s < -30, s, torch.log(torch.nn.functional.softplus(s.clamp(min=-30))))
        return (log_wide + log_p).sum() - d2.shape[0] * math.log(max(self.acceptance_rate, 1e-12))


@register_prior("exclusion", "[:c]", "the paper's Gaussian-exclusion prior around the task's data Gaussian: "
                "propose N(mu, c^(2/d) Sigma), accept with 1 - pdf/pdf_wide; c default 5",
                parse=positive_float("exclusion", "c", 5.0), needs_stats=True,
                check=_check_tasks)
@over_slot_rows
def _exclusion(args, ctx, param):
    if args["c"] <= 1:
        raise EptkUsageError(f"prior exclusion:{args['c']:g}: c must be greater than 1, e.g. exclusion:5")
    stats = layer_stats_for("exclusion", ctx, param, None)
    gen = torch.Generator().manual_seed(sampler_seed(ctx, param, 13))
    return Exclusion(param.shape, stats, args["c"], gen)
