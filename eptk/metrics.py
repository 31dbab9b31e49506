"""Where prompt vectors sit: displacement, vocabulary collapse, geometry, position against the
data's activations, task clusters and trajectories.

Every function takes row matrices (one vector per row, torch tensors or arrays), computes in
float64 on the CPU, and returns plain Python numbers or small dicts of them. Functions that draw
random numbers take a `seed` and use their own generator, so results are reproducible.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import linalg

# ---------------------------------------------------------------------------------------------
# helpers


def _rows(x) -> torch.Tensor:
    """A float64 CPU [n, d] tensor from a tensor or array (a single vector becomes one row)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        t = t.reshape(-1, t.shape[-1])
    return t


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def subsample_rows(x: torch.Tensor, max_n: int | None, seed: int) -> torch.Tensor:
    """At most `max_n` rows of x, drawn without replacement by `seed` (None, or x no longer: x itself)."""
    if max_n is None or x.shape[0] <= max_n:
        return x
    return x[torch.randperm(x.shape[0], generator=_generator(seed))[:max_n]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
# displacement


def displacement(prior, posterior) -> dict:
    """How far each vector moved in training.

    For row i, with p = prior[i] and q = posterior[i]:
    `l2` = ‖q − p‖, `l2_rel` = ‖q − p‖ / ‖p‖, `cos` = cos(p, q) (1 = direction unchanged).
    Returns the means over rows (`l2`, `l2_rel`, `cos`) and the per-row lists (`*_rows`).
    """
    p, q = _rows(prior), _rows(posterior)
    if p.shape != q.shape:
        raise ValueError(f"prior {tuple(p.shape)} and posterior {tuple(q.shape)} differ in shape")
    l2 = (q - p).norm(dim=1)
    rel = l2 / p.norm(dim=1).clamp_min(1e-12)
    cos = (_unit(p) * _unit(q)).sum(dim=1)
    return {
        "l2": l2.mean().item(), "l2_rel": rel.mean().item(), "cos": cos.mean().item(),
        "l2_rows": l2.tolist(), "l2_rel_rows": rel.tolist(), "cos_rows": cos.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# vocabulary neighbours and collapse


def _rows32(x) -> torch.Tensor:
    """A float32 CPU view/copy for large matrices (vocabularies) that need no float64."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().to(device="cpu", dtype=torch.float32)


def collapse_threshold(vocab, *, quantile: float = 0.999, n_pairs: int = 100_000, seed: int = 0) -> float:
    """The cosine above which a vector counts as collapsed onto a token.

    Definition: the `quantile` (default 99.9th percentile) of cos(e_i, e_j) over `n_pairs` random
    pairs of distinct vocabulary rows i ≠ j. A prompt vector whose nearest token is closer than
    that is closer to a token than almost any two tokens are to each other. Note that the maximum
    over V tokens of a random direction's cosine can exceed a single-pair percentile for a large,
    isotropic vocabulary; compare collapsed shares between runs of one model, not across models.
    """
    e = vocab if isinstance(vocab, torch.Tensor) else torch.as_tensor(np.asarray(vocab))
    v = e.shape[0]
    if v < 2:
        return float("nan")
    g = _generator(seed)
    i = torch.randint(0, v, (n_pairs,), generator=g)
    j = (i + torch.randint(1, v, (n_pairs,), generator=g)) % v  # j != i
    cos = (_unit(_rows(e[i])) * _unit(_rows(e[j]))).sum(dim=1)
    return torch.quantile(cos.float(), quantile).item()


def vocab_neighbours(vectors, vocab, tokens=None, *, k: int = 5, threshold: float | None = None,
                     prior=None, chunk: int = 8192) -> dict:
    """Nearest vocabulary tokens of each vector by cosine similarity (float32).

    Returns per-row lists: `topk_ids` / `topk_tokens` / `topk_cos` (k best, best first),
    `max_cos` (cosine to the nearest token) and `nearest` (its id); summaries `max_cos_mean`;
    `collapsed_share` = share of rows with max_cos > `threshold` (see `collapse_threshold`; NaN
    when no threshold is given); and, when `prior` (the same rows before training) is given,
    `nn_kept` per row and `nn_kept_share` = share of rows whose nearest token is still the nearest
    token of their prior vector (Lester et al. 2021 report this for tuned soft prompts).
    """
    v = _rows32(vectors)
    x = _unit(v.reshape(-1, v.shape[-1]))
    e = vocab if isinstance(vocab, torch.Tensor) else torch.as_tensor(np.asarray(vocab))
    k = max(1, min(int(k), e.shape[0]))
    best_cos = torch.full((x.shape[0], k), -2.0)
    best_ids = torch.zeros((x.shape[0], k), dtype=torch.long)
    for start in range(0, e.shape[0], chunk):  # chunked: a 128k×2048 vocabulary is never copied whole
        block = _unit(_rows32(e[start:start + chunk]))
        top = (x @ block.T).topk(min(k, block.shape[0]), dim=1)
        cat_cos = torch.cat([best_cos, top.values], dim=1)
        cat_ids = torch.cat([best_ids, top.indices + start], dim=1)
        order = cat_cos.topk(k, dim=1).indices
        best_cos, best_ids = cat_cos.gather(1, order), cat_ids.gather(1, order)
    best_cos = best_cos.double()
    max_cos = best_cos[:, 0]
    out = {
        "topk_ids": best_ids.tolist(),
        "topk_cos": best_cos.tolist(),
        "topk_tokens": [[tokens[i] for i in row] for row in best_ids.tolist()] if tokens is not None else None,
        "max_cos": max_cos.tolist(),
        "nearest": best_ids[:, 0].tolist(),
        "max_cos_mean": max_cos.mean().item(),
        "collapsed_share": float("nan") if threshold is None else (max_cos > threshold).double().mean().item(),
    }
    if prior is not None:
        before = vocab_neighbours(prior, vocab, None, k=1, chunk=chunk)["nearest"]
        kept = [a == b for a, b in zip(before, out["nearest"])]
        out["nn_kept"] = kept
        out["nn_kept_share"] = float(np.mean(kept)) if kept else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# geometry


def norm_position(vectors, reference) -> dict:
    """Vector norms against the norms of a reference set (vocabulary rows or data activations).

    `norm_mean` = mean ‖x‖; `norm_pctile` = mean percentile rank (0–100) of each ‖x‖ among the
    reference norms; `outside_share` = share of vectors whose norm lies outside the reference's
    [1st, 99th] percentile range; `ref_p1`, `ref_p50`, `ref_p99` = reference norm percentiles.
    """
    n = _rows(vectors).norm(dim=1)
    ref = _rows32(reference).norm(dim=1).double().sort().values
    p1, p50, p99 = (torch.quantile(ref.float(), q).item() for q in (0.01, 0.5, 0.99))
    rank = torch.searchsorted(ref, n, right=True).double() / ref.numel() * 100.0
    outside = ((n < p1) | (n > p99)).double().mean().item()
    return {"norm_mean": n.mean().item(), "norm_pctile": rank.mean().item(), "outside_share": outside,
            "ref_p1": p1, "ref_p50": p50, "ref_p99": p99}


def mean_pairwise_cosine(vectors) -> float:
    """Anisotropy: the mean of cos(x_i, x_j) over all pairs i ≠ j (0 for isotropic directions,
    1 when every vector points the same way). NaN for fewer than two vectors."""
    x = _unit(_rows(vectors))
    n = x.shape[0]
    if n < 2:
        return float("nan")
    s = x.sum(dim=0)
    return ((s @ s - n) / (n * (n - 1))).item()  # Σ_{i≠j} cos = ‖Σ u_i‖² − n


def effective_rank(vectors) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(H(p)) with p_i = σ_i / Σ σ_j the normalized
    singular values of the (uncentred) matrix and H the Shannon entropy. Equals r for a matrix
    with r equal non-zero singular values; lies in [1, min(n, d)]."""
    x = _rows(vectors)
    given = vectors.dtype if isinstance(vectors, torch.Tensor) and vectors.is_floating_point() else torch.float64
    s = torch.linalg.svdvals(x)
    # singular values below the input precision's noise floor (as in matrix_rank) are zero
    s = s[s > s.max() * max(x.shape) * torch.finfo(given).eps] if s.numel() else s
    if s.numel() == 0:
        return float("nan")
    p = s / s.sum()
    return math.exp(-(p * p.log()).sum().item())


def participation_ratio(vectors) -> float:
    """Participation ratio of the centred covariance: (Σ λ_i)² / Σ λ_i², λ the covariance
    eigenvalues (squared singular values of the centred rows). r for r equal variances."""
    x = _rows(vectors)
    if x.shape[0] < 2:
        return float("nan")
    lam = torch.linalg.svdvals(x - x.mean(dim=0)) ** 2
    denom = (lam ** 2).sum()
    return float("nan") if denom <= 0 else ((lam.sum() ** 2) / denom).item()


def pca_2d(reference, *, max_n: int = 5000, seed: int = 0) -> dict:
    """A 2-D PCA fitted on `reference` (subsampled to `max_n` rows). Returns `mean` [d],
    `components` [2, d] and `explained` (the two components' shares of the total variance);
    project with (x − mean) @ components.T."""
    ref = reference if isinstance(reference, torch.Tensor) else torch.as_tensor(np.asarray(reference))
    x = _rows(subsample_rows(ref.reshape(-1, ref.shape[-1]), max_n, seed))  # subsample before float64
    mean = x.mean(dim=0)
    xc = x - mean
    if x.shape[0] < 2:
        comps = torch.eye(2, x.shape[1], dtype=torch.float64)
        return {"mean": mean, "components": comps, "explained": [float("nan")] * 2}
    n, d = xc.shape
    q = min(20, n, d)
    if q == min(n, d):
        _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    else:  # randomized subspace iteration (Halko et al. 2011): matmuls only, seeded
        basis = torch.linalg.qr(xc @ torch.randn(d, q, generator=_generator(seed + 1), dtype=xc.dtype)).Q
        for _ in range(6):
            basis = torch.linalg.qr(xc @ torch.linalg.qr(xc.T @ basis).Q).Q
        _, s, vh = torch.linalg.svd(basis.T @ xc, full_matrices=False)
    comps = vh[:2]
    s = s[:2]
    if comps.shape[0] < 2:  # d == 1
        comps = torch.cat([comps, torch.zeros_like(comps)])
        s = torch.cat([s, s.new_zeros(1)])
    total = xc.pow(2).sum().clamp_min(1e-300)
    return {"mean": mean, "components": comps, "explained": ((s ** 2) / total).tolist()}


# ---------------------------------------------------------------------------------------------
# position against the data's activations


class DataGaussian:
    """The data's activations at one layer as a Gaussian with a shrunk covariance, for Mahalanobis
    distances. `mean` [d], `cov` [d, d] (from `eptk capture`); `samples` [n, d] (the reservoir of
    token activations) are used to estimate the Ledoit–Wolf shrinkage when `shrinkage` is None
    and to calibrate the 99% region."""

    def __init__(self, mean, cov, samples=None, *, shrinkage: float | None = None):
        self.mean = _rows(mean)[0]
        cov = _rows(cov)
        cov = (cov + cov.T) / 2
        self.samples = None if samples is None else _rows(samples)
        if shrinkage is None:
            shrinkage = (linalg.ledoit_wolf_shrinkage(self.samples) if self.samples is not None
                         and self.samples.shape[0] > 2 else 0.1)
        self.shrinkage = float(shrinkage)
        cov = linalg.shrink(cov, self.shrinkage)
        # a singular covariance (shrinkage 0, too few tokens) gets a growing jitter
        self._chol = linalg.psd_cholesky(cov, ridge=1e-10, growth=100.0, tries=6)
        self.dim = cov.shape[0]
        self._radius: dict[float, tuple[float, str]] = {}

    def mahalanobis(self, vectors) -> torch.Tensor:
        """√((x − μ)ᵀ Σ_shrunk⁻¹ (x − μ)) per row."""
        return linalg.mahalanobis(_rows(vectors), self._chol, self.mean)

    def radius(self, quantile: float = 0.99) -> tuple[float, str]:
        """The Mahalanobis radius of the data's `quantile` region and how it was obtained:
        'empirical' = the quantile of the captured samples' own distances (used whenever samples
        exist: real activations are far from Gaussian, so χ² would misplace the boundary);
        'chi2' = √(χ²_d quantile) otherwise."""
        if quantile not in self._radius:
            if self.samples is not None and self.samples.shape[0] >= 10:
                dist = self.mahalanobis(self.samples).float()
                self._radius[quantile] = (torch.quantile(dist, quantile).item(), "empirical")
            else:
                from scipy.stats import chi2

                self._radius[quantile] = (math.sqrt(chi2.ppf(quantile, self.dim)), "chi2")
        return self._radius[quantile]


def region_position(vectors, data: DataGaussian, *, quantile: float = 0.99) -> dict:
    """Mahalanobis position of vectors against the data Gaussian: `maha_mean` (mean distance),
    `maha_rel` (mean distance / the region radius: ≤ 1 is inside), `inside_share` (share of rows
    inside the data's `quantile` region), `radius` and `radius_kind` (see `DataGaussian.radius`)."""
    dist = data.mahalanobis(vectors)
    radius, kind = data.radius(quantile)
    return {"maha_mean": dist.mean().item(), "maha_rel": (dist / radius).mean().item(),
            "inside_share": (dist <= radius).double().mean().item(), "radius": radius, "radius_kind": kind}


class DataSample:
    """A fixed sample of the data's activations that prompt vectors are compared with.

    The data–data distances, the data points' k-NN radii and the pooled RBF bandwidth inputs
    are computed once and reused for every set of prompt vectors (prior and posterior of every
    run at this layer). `samples` is subsampled to `max_n` rows (seeded)."""

    def __init__(self, samples, *, max_n: int | None = 1000, seed: int = 0):
        self.x = subsample_rows(_rows(samples), max_n, seed)
        self.n = self.x.shape[0]
        self._dist = torch.cdist(self.x, self.x)
        self._radius: dict[int, torch.Tensor] = {}

    def knn_radius(self, k: int) -> torch.Tensor:
        """Distance of each data point to its k-th nearest other data point."""
        if k not in self._radius:
            self._radius[k] = self._dist.kthvalue(k + 1, dim=1).values  # +1: the point itself at 0
        return self._radius[k]

    def knn_precision_recall(self, fake, *, k: int = 5) -> dict:
        """See `knn_precision_recall`."""
        f = _rows(fake)
        k_real = min(k, self.n - 1)
        nan = float("nan")
        if k_real < 1 or f.shape[0] == 0:
            return {"precision": nan, "recall": nan, "density": nan, "coverage": nan}
        r_radius = self.knn_radius(k_real)
        d_fr = torch.cdist(f, self.x)  # [m, n]
        inside = d_fr <= r_radius[None, :]
        out = {"precision": inside.any(dim=1).double().mean().item(), "recall": nan,
               "density": (inside.double().sum(dim=1) / k_real).mean().item(),
               "coverage": (d_fr.min(dim=0).values <= r_radius).double().mean().item()}
        if f.shape[0] > k:
            f_radius = torch.cdist(f, f).kthvalue(k + 1, dim=1).values
            out["recall"] = (d_fr <= f_radius[:, None]).any(dim=0).double().mean().item()
        return out

    def two_sample_tests(self, x, *, n_perm: int = 200, seed: int = 0) -> dict:
        """MMD (RBF, median heuristic) and energy distance between `x` and the data, with
        permutation p-values from one shared set of `n_perm` seeded permutations. See `mmd_rbf`
        and `energy_distance` for the definitions. Returns mmd2, mmd_p, bandwidth, energy, energy_p."""
        a = _rows(x)
        m, n = a.shape[0], self.n
        if m < 2 or n < 2:
            return {k: float("nan") for k in ("mmd2", "mmd_p", "bandwidth", "energy", "energy_p")}
        d_ax = torch.cdist(a, self.x)
        dist = torch.cat([torch.cat([torch.cdist(a, a), d_ax], dim=1), torch.cat([d_ax.T, self._dist], dim=1)])
        off = dist[~torch.eye(m + n, dtype=torch.bool)]
        h = off.kthvalue(max(1, (off.numel() + 1) // 2)).values.item()  # median pooled distance
        h = max(h, 1e-12)
        kernels = torch.stack([torch.exp(-dist.pow(2) / (2 * h * h)), dist])  # [2, N, N]
        g = _generator(seed + 1)
        member = torch.zeros(n_perm + 1, m + n, dtype=torch.float64)
        member[0, :m] = 1  # row 0: the observed split
        for i in range(n_perm):
            member[i + 1, torch.randperm(m + n, generator=g)[:m]] = 1
        # within-X, within-Y and cross sums over distinct pairs from one product a·K per kernel
        row_sums = kernels.sum(dim=2)                      # [2, N]
        diag = torch.diagonal(kernels, dim1=1, dim2=2)     # [2, N]
        total = row_sums.sum(dim=1)                        # [2]
        ak = torch.einsum("pn,knj->kpj", member, kernels)  # [2, P, N]
        a_k_a = (ak * member).sum(dim=2)                   # Σ_{i,j∈X} K_ij
        a_k_1 = member @ row_sums.T                        # [P, 2] Σ_{i∈X, j} K_ij
        a_k_1 = a_k_1.T
        a_diag = (member @ diag.T).T                       # [2, P]
        b_diag = diag.sum(dim=1, keepdim=True) - a_diag
        s_xx = (a_k_a - a_diag) / (m * (m - 1))
        s_yy = (total[:, None] - 2 * a_k_1 + a_k_a - b_diag) / (n * (n - 1))
        s_xy = (a_k_1 - a_k_a) / (m * n)
        mmd = s_xx[0] + s_yy[0] - 2 * s_xy[0]
        energy = 2 * s_xy[1] - s_xx[1] - s_yy[1]

        def p_value(stat):
            return (1 + (stat[1:] >= stat[0] - 1e-12).sum().item()) / (1 + n_perm)

        return {"mmd2": mmd[0].item(), "mmd_p": p_value(mmd), "bandwidth": h,
                "energy": energy[0].item(), "energy_p": p_value(energy)}


def knn_precision_recall(real, fake, *, k: int = 5, max_real: int | None = 2000, seed: int = 0) -> dict:
    """kNN manifold metrics of `fake` (prompt vectors) against `real` (data samples).

    Each point's ball has the radius of its k-th nearest neighbour within its own set.
    `precision` = share of fake points inside some real ball, `recall` = share of real points
    inside some fake ball (Kynkäänniemi et al. 2019); `density` = mean over fake points of the
    number of real balls containing it, divided by k, `coverage` = share of real points whose ball
    contains some fake point (Naeem et al. 2020). Recall is NaN when fake has ≤ k points.
    """
    return DataSample(real, max_n=max_real, seed=seed).knn_precision_recall(fake, k=k)


def mmd_rbf(x, y, *, n_perm: int = 200, seed: int = 0, max_n: int | None = 1000) -> dict:
    """Maximum mean discrepancy between samples x and y with the RBF kernel
    k(a, b) = exp(−‖a − b‖² / (2h²)), h = the median pairwise distance of the pooled sample
    (median heuristic). `mmd2` is the unbiased estimate of MMD²; `p` the permutation p-value
    ((1 + #{null ≥ observed}) / (1 + n_perm)) for H0: same distribution; `bandwidth` = h.
    y (the reference) is subsampled to `max_n` rows first."""
    out = DataSample(y, max_n=max_n, seed=seed).two_sample_tests(x, n_perm=n_perm, seed=seed)
    return {"mmd2": out["mmd2"], "p": out["mmd_p"], "bandwidth": out["bandwidth"]}


def energy_distance(x, y, *, n_perm: int = 200, seed: int = 0, max_n: int | None = 1000) -> dict:
    """Multivariate energy distance (Székely & Rizzo): E = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖,
    the within-sample means over distinct pairs; 0 iff the distributions agree. `energy` is the
    estimate, `p` its permutation p-value (as for `mmd_rbf`)."""
    out = DataSample(y, max_n=max_n, seed=seed).two_sample_tests(x, n_perm=n_perm, seed=seed)
    return {"energy": out["energy"], "p": out["energy_p"]}


# ---------------------------------------------------------------------------------------------
# outcome


def steps_to_fraction(steps, values, fraction: float = 0.95) -> int | None:
    """The first step at which a validation-loss curve has made `fraction` of its final
    improvement: the first step s with v_0 − v_s ≥ fraction·(v_0 − v_last), where v_0 is the first
    logged validation loss. None when there is no improvement or fewer than two points."""
    pairs = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
    if len(pairs) < 2:
        return None
    v0, vlast = pairs[0][1], pairs[-1][1]
    gain = v0 - vlast
    if gain <= 0:
        return None
    for s, v in pairs:
        if v0 - v >= fraction * gain - 1e-12:
            return int(s)
    return int(pairs[-1][0])


# ---------------------------------------------------------------------------------------------
# task clusters


def silhouette(x, labels) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) with Euclidean distance: for each point
    s = (b − a) / max(a, b), a = mean distance to its own cluster, b = smallest mean distance to
    another cluster (s = 0 for a point alone in its cluster). In [−1, 1]; high = separated."""
    z = _rows(x)
    return silhouette_from_distances(torch.cdist(z, z), labels)


def silhouette_from_distances(dist: torch.Tensor, labels) -> float:
    """`silhouette` from the pairwise distance matrix [n, n] (a permutation test reuses one matrix)."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    codes = torch.as_tensor(codes.reshape(-1))
    if int(codes.max()) < 1:
        return float("nan")
    onehot = torch.nn.functional.one_hot(codes).double()  # [n, K]
    sizes = onehot.sum(dim=0)
    sums = dist.double() @ onehot  # [n, K] summed distance to each cluster
    own = onehot.bool()
    own_size = (onehot * sizes).sum(dim=1)
    a = (sums * onehot).sum(dim=1) / (own_size - 1).clamp_min(1)
    mean_other = (sums / sizes).masked_fill(own, float("inf"))
    b = mean_other.min(dim=1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
    s = torch.where(own_size > 1, s, torch.zeros_like(s))
    return s.mean().item()


def nc1(x, labels) -> float:
    """Within-class variability relative to between-class: tr(Σ_W) / tr(Σ_B), Σ_W the mean of the
    classes' covariances, Σ_B the covariance of the class means around their mean (a trace form
    of Papyan et al.'s NC1). Small = tight, well-separated task clusters."""
    z = _rows(x)
    lab = np.asarray(labels)
    classes = np.unique(lab)
    if len(classes) < 2:
        return float("nan")
    means, within = [], []
    for c in classes:
        zc = z[torch.as_tensor(lab == c)]
        means.append(zc.mean(dim=0))
        within.append(((zc - zc.mean(dim=0)) ** 2).sum(dim=1).mean())
    mu = torch.stack(means)
    between = ((mu - mu.mean(dim=0)) ** 2).sum(dim=1).mean()
    return (torch.stack(within).mean() / between.clamp_min(1e-300)).item()


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """Fréchet (2-Wasserstein) distance² between N(μ1, Σ1) and N(μ2, Σ2):
    ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)."""
    m1, m2 = _rows(mean1)[0], _rows(mean2)[0]
    c1, c2 = _rows(cov1), _rows(cov2)
    s1 = linalg.sqrtm_psd(c1)
    cross = torch.linalg.eigvalsh((s1 @ c2 @ s1 + (s1 @ c2 @ s1).T) / 2).clamp_min(0).sqrt().sum()
    return ((m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross).item()


# ---------------------------------------------------------------------------------------------
# trajectories


def step_lengths(trajectory) -> np.ndarray:
    """‖x_{t+1} − x_t‖ for consecutive rows of a trajectory [T, d]."""
    t = _rows(trajectory)
    return (t[1:] - t[:-1]).norm(dim=1).numpy()


def trajectory_against_data(states, data, *, n_perm: int = 200, walk_pairs: int = 4096, seed: int = 0) -> dict:
    """Is a generated trajectory [n, d] localized, against the data's token activations [m, d] at its layer?

    `mean_step` = mean ‖x_{t+1} − x_t‖; `walk_step` = the mean step of a random walk over the data (distance
    between two uniformly drawn data tokens, `walk_pairs` pairs); `step_ratio` = mean_step / walk_step.
    `radius` = mean distance of the trajectory's points to their centroid, `data_radius` the same for the
    data; `spread_ratio` = radius / data_radius. `order_p` = one-sided permutation p-value of the order
    ((1 + #{shuffled orders with a mean step ≤ the observed}) / (1 + n_perm)): small = consecutive states
    are closer than the same states in random order. `points` = n.
    """
    x, ref = _rows(states), _rows(data)
    nan = float("nan")
    if x.shape[0] < 2 or ref.shape[0] < 2:
        return {"points": int(x.shape[0]), "mean_step": nan, "walk_step": nan, "step_ratio": nan, "radius": nan,
                "data_radius": nan, "spread_ratio": nan, "order_p": nan}
    g = _generator(seed)
    i = torch.randint(ref.shape[0], (walk_pairs,), generator=g)
    j = (i + torch.randint(1, ref.shape[0], (walk_pairs,), generator=g)) % ref.shape[0]  # two distinct tokens
    walk = (ref[i] - ref[j]).norm(dim=1).mean().item()
    observed = float(step_lengths(x).mean())
    order = torch.stack([torch.randperm(x.shape[0], generator=g) for _ in range(n_perm)])   # [n_perm, n]
    shuffled = x[order]
    null = (shuffled[:, 1:] - shuffled[:, :-1]).norm(dim=-1).mean(dim=1)
    radius = (x - x.mean(dim=0)).norm(dim=1).mean().item()
    data_radius = (ref - ref.mean(dim=0)).norm(dim=1).mean().item()
    return {"points": int(x.shape[0]), "mean_step": observed, "walk_step": walk,
            "step_ratio": observed / walk if walk > 0 else nan, "radius": radius, "data_radius": data_radius,
            "spread_ratio": radius / data_radius if data_radius > 0 else nan,
            "order_p": (1 + int((null <= observed + 1e-12).sum())) / (1 + n_perm)}


def tsne_2d(x: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> torch.Tensor:
    """A 2-D t-SNE embedding of the rows of x (scikit-learn; perplexity capped below the row count).

    Unlike PCA, distances between far clusters in the map carry no meaning; use it to see whether
    clusters separate at all, and the silhouette / NC1 columns for how much."""
    from sklearn.manifold import TSNE

    n = x.shape[0]
    tsne = TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (n - 1) / 3)), init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x.double().numpy())).double()
