"""The columns of `summary.csv`: each is one entry (name, meaning, how it is computed), and the README's
column table is generated from these entries (tests/test_readme.py checks it).

A run column reads a `RunView`, a block column a `BlockView` (one prompt block of a run, with the
references it is measured against), a vector column a `VectorView` (the block's prior sample or its
posterior) and appears twice, as `prior_<name>` and `post_<name>`. Views compute each metric once and
cache it, so columns that share a metric (the three norm columns, say) cost one computation.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch

from .. import metrics as M
from ..runs import IMPORTED, scores


@dataclass(frozen=True)
class Column:
    name: str
    meaning: str
    compute: Callable


def num(x):
    """x as a finite float, else None."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ---- what the columns read ------------------------------------------------------------------------

class RunView:
    def __init__(self, run):
        self.run, self.config = run, run.config

    @cached_property
    def scores(self) -> tuple[dict, dict]:
        """eval.json's baseline and tuned entries ({} when absent)."""
        return scores(self.run.eval)

    @cached_property
    def val(self) -> list[tuple]:
        """(step, val_loss) of every logged validation."""
        return [(r.get("step"), r.get("val_loss")) for r in self.run.metrics if num(r.get("val_loss")) is not None]

    @property
    def status(self) -> str:
        if self.run.complete:
            return "complete"
        return "imported" if self.config.get("prior") == IMPORTED else "in progress"


class BlockView:
    """One prompt block and what it is measured against: the vocabulary (layer 0), a reference for norms
    and PCA, and the matched task's data Gaussian and data sample (residual-stream blocks)."""

    def __init__(self, block, *, vocab=None, threshold=None, reference=None, ref_kind="", data_task=None,
                 data=None, sample=None, opts=None):
        self.block, self.opts = block, opts
        self.vocab, self.threshold, self.reference, self.ref_kind = vocab, threshold, reference, ref_kind
        self.data_task, self.data, self.sample = data_task, data, sample
        self.prior = None if block.prior is None else VectorView(block.prior, self)
        self.post = None if block.posterior is None else VectorView(block.posterior, self, prior=block.prior)

    @property
    def rows(self) -> torch.Tensor:
        return self.block.prior if self.block.prior is not None else self.block.posterior

    @cached_property
    def displacement(self) -> dict | None:
        p, q = self.block.prior, self.block.posterior
        return M.displacement(p, q) if p is not None and q is not None and p.shape == q.shape else None

    @cached_property
    def region(self) -> tuple | None:
        return None if self.data is None else self.data.radius(self.opts.region_quantile)

    def data_value(self, value):
        """A column of the data region: only where a task's statistics matched this block."""
        return value if self.data is not None else None


class VectorView:
    """The prior sample or the posterior of a block: x [P, d] (with the prior, for a posterior)."""

    def __init__(self, x: torch.Tensor, block: BlockView, prior: torch.Tensor | None = None):
        self.x, self.b, self.prior = x, block, prior

    @cached_property
    def position(self) -> dict | None:
        return None if self.b.reference is None else M.norm_position(self.x, self.b.reference)

    @cached_property
    def neighbours(self) -> dict | None:
        b = self.b
        if b.vocab is None:
            return None
        return M.vocab_neighbours(self.x, b.vocab.embeddings, b.vocab.tokens, k=b.opts.top_k, threshold=b.threshold,
                                  prior=self.prior)

    @cached_property
    def region(self) -> dict | None:
        return None if self.b.data is None else M.region_position(self.x, self.b.data, quantile=self.b.opts.region_quantile)

    @cached_property
    def knn(self) -> dict | None:
        return None if self.b.sample is None else self.b.sample.knn_precision_recall(self.x, k=self.b.opts.knn_k)

    @cached_property
    def tests(self) -> dict | None:
        b = self.b
        return None if b.sample is None else b.sample.two_sample_tests(self.x, n_perm=b.opts.n_perm, seed=b.opts.seed)


def _from(metric: str, key: str):
    """A vector column read from one of the view's cached metrics (None where it was not measurable)."""
    return lambda v: None if getattr(v, metric) is None else getattr(v, metric)[key]


def _config(key: str):
    return lambda r: r.config.get(key)


def _score(which: int, key: str):
    return lambda r: num(r.scores[which].get(key))


def _norm_mean(v: VectorView):
    return v.position["norm_mean"] if v.position is not None else v.x.norm(dim=1).mean().item()


def _nn_kept_share(b: BlockView):
    neigh = b.post.neighbours if b.post is not None else None
    return neigh.get("nn_kept_share") if neigh is not None else None


# ---- the columns ----------------------------------------------------------------------------------

RUN_COLUMNS = [
    Column("run", "run name (config `name`, else the directory name; made unique)", lambda r: r.run.name),
    Column("path", "run directory", lambda r: str(r.run.path)),
    Column("status", "`complete` (eval.json present), `imported` (from a PEFT adapter) or `in progress`",
           lambda r: r.status),
    Column("model", "config `model`", _config("model")),
    Column("task", "config `task`", _config("task")),
    Column("method", "config `method` (soft, deep, prefix, ...: eptk/methods/)", _config("method")),
    Column("prior", "config `prior` spec", _config("prior")),
    Column("prior_weight", "config `prior_weight` (λ of the MAP prior term)", _config("prior_weight")),
    Column("tokens", "config `tokens` (P, prompt vectors per block)", _config("tokens")),
    Column("layers", "config `layers` (deep layers, `;`-separated)",
           lambda r: ";".join(str(l) for l in r.config.get("layers") or [])),
    Column("lr", "config `lr`", _config("lr")),
    Column("steps", "config `steps` (planned)", _config("steps")),
    Column("seed", "config `seed`", _config("seed")),
    Column("metric", "eval metric name (eval.json `tuned.metric`)",
           lambda r: r.scores[1].get("metric") or r.scores[0].get("metric")),
    Column("baseline_score", "eval.json `baseline.score` (no prompt)", _score(0, "score")),
    Column("tuned_score", "eval.json `tuned.score`", _score(1, "score")),
    Column("baseline_loss", "eval.json `baseline.loss`", _score(0, "loss")),
    Column("tuned_loss", "eval.json `tuned.loss`", _score(1, "loss")),
    Column("final_val_loss", "last logged `val_loss` in metrics.jsonl", lambda r: r.val[-1][1] if r.val else None),
    Column("best_val_loss", "lowest logged `val_loss`", lambda r: min(v for _, v in r.val) if r.val else None),
    Column("last_step", "last logged step",
           lambda r: max((s for s in (m.get("step") for m in r.run.metrics) if s is not None), default=None)),
    Column("steps_to_95", "first step with 95% of the final validation-loss improvement over the first logged val_loss",
           lambda r: M.steps_to_fraction([s for s, _ in r.val], [v for _, v in r.val], 0.95)),
]

BLOCK_COLUMNS = [
    Column("block", "prompt block: `soft`, `deep.<l>`, `prefix.<l>.key`, `prefix.<l>.value` (empty if the run has no "
           "tensors yet)", lambda b: b.block.name),
    Column("layer", "layer index of the block's space (0 = token embeddings, l = hidden state entering layer l)",
           lambda b: b.block.layer),
    Column("space", "`embedding`, `activation`, `key` or `value`", lambda b: b.block.space),
    Column("n_vectors", "vectors in the block (P)", lambda b: b.rows.shape[0]),
    Column("dim", "vector dimension", lambda b: b.rows.shape[1]),
    Column("disp_l2", "mean ‖posterior − prior‖ per vector", lambda b: b.displacement and b.displacement["l2"]),
    Column("disp_l2_rel", "mean ‖posterior − prior‖ / ‖prior‖", lambda b: b.displacement and b.displacement["l2_rel"]),
    Column("disp_cos", "mean cos(prior, posterior) per vector", lambda b: b.displacement and b.displacement["cos"]),
    Column("nn_kept_share", "share of vectors whose nearest vocabulary token is the same before and after training "
           "(layer 0)", _nn_kept_share),
    Column("collapse_threshold", "cosine above which a vector is collapsed: 99.9th percentile of cos between random "
           "distinct vocabulary rows", lambda b: b.threshold),
    Column("ref_kind", "reference for norms and PCA: `vocabulary`, `data` (captured activations; for a prefix's "
           "keys/values, the captured keys/values of its layer) or empty",
           lambda b: b.ref_kind),
    Column("ref_norm_p50", "median norm of the reference rows",
           lambda b: None if b.reference is None else torch.quantile(b.reference.float().norm(dim=1), 0.5).item()),
    Column("data_task", "task of the activation statistics used for the region metrics (empty when none matched)",
           lambda b: b.data_value(b.data_task)),
    Column("n_data", "captured data samples used for kNN, MMD and energy (at most --max-data; Mahalanobis uses all)",
           lambda b: b.data_value(0 if b.sample is None else b.sample.n)),
    Column("shrinkage", "Ledoit–Wolf intensity of the covariance shrinkage used for Mahalanobis distances (the same "
           "shrunk covariance as the region priors, eptk.stats)", lambda b: b.data_value(b.data and b.data.shrinkage)),
    Column("region_radius", "Mahalanobis radius of the data's 99% region (see region_radius_kind)",
           lambda b: b.region and b.region[0]),
    Column("region_radius_kind", "`empirical` (99th percentile of the data samples' own distances) or `chi2` "
           "(√χ²_d(0.99), no samples)", lambda b: b.region and b.region[1]),
]

VECTOR_COLUMNS = [
    Column("norm_mean", "mean vector norm", _norm_mean),
    Column("norm_pctile", "mean percentile rank (0–100) of the vector norms among the reference norms",
           _from("position", "norm_pctile")),
    Column("norm_outside_share", "share of vectors with norm outside the reference's [1st, 99th] percentile range",
           _from("position", "outside_share")),
    Column("max_cos", "mean cosine to the nearest vocabulary token (layer 0)", _from("neighbours", "max_cos_mean")),
    Column("collapsed_share", "share of vectors with nearest-token cosine above collapse_threshold (layer 0)",
           _from("neighbours", "collapsed_share")),
    Column("anisotropy", "mean pairwise cosine between the block's vectors", lambda v: M.mean_pairwise_cosine(v.x)),
    Column("eff_rank", "effective rank: exp(entropy of the normalized singular values)",
           lambda v: M.effective_rank(v.x)),
    Column("participation_ratio", "(Σλ)²/Σλ² of the centred covariance eigenvalues",
           lambda v: M.participation_ratio(v.x)),
    Column("maha_mean", "mean Mahalanobis distance to the data Gaussian (shrunk covariance)",
           _from("region", "maha_mean")),
    Column("maha_rel", "mean Mahalanobis distance / region_radius (≤ 1 inside the 99% region)",
           _from("region", "maha_rel")),
    Column("inside_share", "share of vectors inside the data's 99% region", _from("region", "inside_share")),
    Column("knn_precision", "share of vectors inside some data sample's k-NN ball (Kynkäänniemi 2019)",
           _from("knn", "precision")),
    Column("knn_recall", "share of data samples inside some vector's k-NN ball (NaN when P ≤ k)", _from("knn", "recall")),
    Column("knn_density", "expected number of data k-NN balls containing a vector, / k (Naeem 2020)",
           _from("knn", "density")),
    Column("knn_coverage", "share of data samples whose k-NN ball contains a vector (Naeem 2020)",
           _from("knn", "coverage")),
    Column("mmd2", "unbiased MMD² to the data samples, RBF kernel, median-heuristic bandwidth", _from("tests", "mmd2")),
    Column("mmd_p", "permutation p-value of the MMD (small = different from the data)", _from("tests", "mmd_p")),
    Column("energy", "energy distance to the data samples", _from("tests", "energy")),
    Column("energy_p", "permutation p-value of the energy distance", _from("tests", "energy_p")),
]
VECTOR_PREFIXES = {"prior": "prior sample", "post": "posterior (tuned)"}


def summary_columns() -> dict[str, str]:
    """name -> meaning of every summary.csv column, in file order."""
    out = {c.name: c.meaning for c in RUN_COLUMNS + BLOCK_COLUMNS}
    for which, what in VECTOR_PREFIXES.items():
        out.update({f"{which}_{c.name}": f"{what}: {c.meaning}" for c in VECTOR_COLUMNS})
    return out


def run_values(view: RunView) -> dict:
    return {c.name: c.compute(view) for c in RUN_COLUMNS}


def block_values(view: BlockView) -> dict:
    """The block and vector columns of one block (vector columns of a missing prior or posterior: None)."""
    out = {c.name: c.compute(view) for c in BLOCK_COLUMNS}
    for which, vectors in (("prior", view.prior), ("post", view.post)):
        if vectors is not None:
            out.update({f"{which}_{c.name}": c.compute(vectors) for c in VECTOR_COLUMNS})
    return out


SUMMARY_COLUMNS: dict[str, str] = summary_columns()
TASK_COLUMNS: dict[str, str] = {
    "model": "model of the activation statistics",
    "layer": "layer index (0 = token embeddings)",
    "space": "captured space: `activation`, or a layer's attention `key` / `value` (eptk capture --space)",
    "tasks": "tasks compared (`;`-separated)",
    "n_per_task": "data samples per task used",
    "silhouette": "mean silhouette of the task clusters (Euclidean; high = separated)",
    "nc1": "tr(within-task covariance) / tr(between-task covariance) (small = separated)",
}
FRECHET_COLUMNS: dict[str, str] = {
    "model": "model of the activation statistics",
    "layer": "layer index",
    "space": "captured space: `activation`, `key` or `value`",
    "task_a": "first task",
    "task_b": "second task",
    "frechet": "Fréchet distance² between the two tasks' Gaussians (captured mean and covariance)",
}


def markdown_table(columns: Mapping[str, str]) -> str:
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in columns.items()]
    return "\n".join(lines)


SUMMARY_COLUMNS_MARKDOWN = (
    "`summary.csv` / `summary.json` (one row per run × prompt block; `prior_*` columns describe the "
    "prior sample, `post_*` the tuned posterior with the same meaning; empty / null = not measurable)\n\n"
    + markdown_table({**{c.name: c.meaning for c in RUN_COLUMNS + BLOCK_COLUMNS},
                      **{f"prior_{c.name}`, `post_{c.name}": c.meaning for c in VECTOR_COLUMNS}})
    + "\n\n`tasks.csv` (one row per model × layer, with two or more `--stats` tasks)\n\n"
    + markdown_table(TASK_COLUMNS)
    + "\n\n`frechet.csv` (one row per model × layer × task pair)\n\n"
    + markdown_table(FRECHET_COLUMNS)
)
