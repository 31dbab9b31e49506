"""Gaussians in float64: fitting, covariance shrinkage, PSD Cholesky, whitening, Mahalanobis distance.

One implementation of each, shared by the statistics (eptk.stats), the priors and the metrics. A
leaf module: it imports nothing from eptk, so everything else may import it.
"""
from __future__ import annotations

import math

import torch


def fit_gaussian(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [d] and unbiased covariance [d,d] of the rows [n,d], computed in float64, returned float32."""
    x = rows.double()
    mean = x.mean(0)
    xc = x - mean
    return mean.float(), (xc.T @ xc / max(x.shape[0] - 1, 1)).float()


# ---- shrinkage toward the scaled identity --------------------------------------------------------

def shrink(cov: torch.Tensor, delta: float) -> torch.Tensor:
    """(1 − δ)·S + δ·(tr S / d)·I in float64; a zero (or non-finite) S gives 1e-12·I."""
    S = cov.to(torch.float64)
    scale = float(S.diagonal().mean())
    if not math.isfinite(scale) or scale <= 0:
        return torch.eye(S.shape[0], dtype=torch.float64) * 1e-12
    return (1 - delta) * S + delta * (scale * torch.eye(S.shape[0], dtype=torch.float64))


def ledoit_wolf_intensity(cov: torch.Tensor, n: float, centred: torch.Tensor) -> float:
    """Ledoit and Wolf's (2004) optimal δ for shrinking S toward (tr S / d)·I.

    S is the covariance of n points; its fourth-moment term is estimated from `centred` (rows of a
    uniform sample of the same points, minus their mean), so S may come from streamed sums while
    the sample is a reservoir: δ = min(E‖x xᵀ − S‖²_F / n, ‖S − μI‖²_F) / ‖S − μI‖²_F.
    """
    S = cov.to(torch.float64)
    d = S.shape[0]
    target = float(S.diagonal().mean()) * torch.eye(d, dtype=torch.float64)
    dist2 = float((S - target).pow(2).sum())                  # ‖S − μI‖²_F
    if dist2 <= 0:
        return 1.0
    x = centred.to(torch.float64)
    # mean over rows of ‖x xᵀ − S‖²_F = ‖x‖⁴ − 2 xᵀSx + ‖S‖²_F, without forming d×d per row
    norms2 = (x * x).sum(1)
    quad = ((x @ S) * x).sum(1)
    spread = float((norms2.pow(2) - 2 * quad).mean() + S.pow(2).sum())
    return min(max(spread / max(float(n), 1.0), 0.0), dist2) / dist2


def oas_intensity(cov: torch.Tensor, n: float) -> float:
    """The oracle-approximating δ (Chen et al. 2010), which needs only S, n and d."""
    S = cov.to(torch.float64)
    d = S.shape[0]
    n = max(float(n), 1.0)
    tr2, tr_s2 = float(S.trace()) ** 2, float((S * S).sum())
    num = (1 - 2 / d) * tr_s2 + tr2
    den = (n + 1 - 2 / d) * (tr_s2 - tr2 / d)
    return 1.0 if den <= 0 else min(num / den, 1.0)


def ledoit_wolf_shrinkage(samples: torch.Tensor) -> float:
    """The Ledoit–Wolf δ of the sample covariance of `samples` [n,d] alone (scikit-learn's estimator)."""
    x = samples.to(torch.float64)
    n = x.shape[0]
    if n < 2:
        return 1.0
    x = x - x.mean(dim=0)
    return ledoit_wolf_intensity(x.T @ x / n, n, x)


def covariance_shrinkage(cov: torch.Tensor, count: float, mean: torch.Tensor | None = None,
                         samples: torch.Tensor | None = None) -> float:
    """δ for the covariance S of `count` points: Ledoit–Wolf from `samples` when given, else OAS.

    With count ≤ d, S is singular and δ is kept at 1e-3 or more so the result is clearly positive
    definite."""
    d = cov.shape[0]
    if samples is not None and samples.shape[0] > 0:
        x = samples.to(torch.float64)
        delta = ledoit_wolf_intensity(cov, count, x - (mean.to(torch.float64) if mean is not None else x.mean(0)))
    else:
        delta = oas_intensity(cov, count)
    return max(delta, 1e-3) if count <= d else delta


# ---- factors and distances ------------------------------------------------------------------------

def psd_cholesky(cov: torch.Tensor, ridge: float = 1e-6, growth: float = 10.0, tries: int = 8,
                 error: type[Exception] = torch.linalg.LinAlgError) -> torch.Tensor:
    """Lower Cholesky factor of the symmetrized cov + r·(tr cov / d)·I, r starting at `ridge` and
    multiplied by `growth` until the factorization succeeds; raises `error` after `tries` attempts."""
    cov = 0.5 * (cov + cov.T)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    jitter = ridge * float(cov.diagonal().mean().clamp_min(1e-12))
    for _ in range(tries):
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            return factor
        jitter *= growth
    raise error("covariance is not positive definite even with a ridge")


def whiten(x: torch.Tensor, tril: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """L⁻¹(x − mean) for x [..., d] in x's dtype and device (differentiable): Σ = L Lᵀ becomes I."""
    tril = tril.to(x.device, x.dtype)
    xc = x if mean is None else x - mean.to(x.device, x.dtype)
    z = torch.linalg.solve_triangular(tril, xc.reshape(-1, tril.shape[0]).T, upper=False).T
    return z.reshape(x.shape)


def mahalanobis(x: torch.Tensor, tril: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """√((x − mean)ᵀ Σ⁻¹ (x − mean)) for each row of x [..., d], Σ = tril·trilᵀ; shape [...]."""
    return whiten(x, tril, mean).norm(dim=-1)


def sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a PSD matrix (negative eigenvalues from rounding clipped to 0)."""
    lam, vec = torch.linalg.eigh((c + c.T) / 2)
    return (vec * lam.clamp_min(0).sqrt()) @ vec.T
