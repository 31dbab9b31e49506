"""`eptk analyze`: read run directories (and optional activation statistics), measure where the
prompt vectors went, and write summary.csv/json, tasks.csv/json, details.json, plots/ and
report.html.

One row per run × prompt block. A block is one set of P prompt vectors living in one space:
`soft` (slot inputs to layer 0, token-embedding space), `deep.<l>` (hidden states entering decoder
layer l), `prefix.<l>.key` / `prefix.<l>.value` (layer l's attention keys/values, each slot's
heads concatenated into one vector). Runs still in progress (no eval.json, no posterior, a partial
last metrics line) are read as far as they go.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import metrics as M
from .errors import EptkUsageError
from .io import load_tensors, read_json, read_jsonl, write_json_atomic, write_text_atomic

# ---------------------------------------------------------------------------------------------
# column documentation (the README pastes SUMMARY_COLUMNS_MARKDOWN)

_RUN_COLUMNS = {
    "run": "run name (config `name`, else the directory name; made unique)",
    "path": "run directory",
    "status": "`complete` (eval.json present), `imported` (from a PEFT adapter) or `in progress`",
    "model": "config `model`",
    "task": "config `task`",
    "method": "config `method` (soft, deep, prefix)",
    "prior": "config `prior` spec",
    "prior_weight": "config `prior_weight` (λ of the MAP prior term)",
    "tokens": "config `tokens` (P, prompt vectors per block)",
    "layers": "config `layers` (deep layers, `;`-separated)",
    "lr": "config `lr`",
    "steps": "config `steps` (planned)",
    "seed": "config `seed`",
    "metric": "eval metric name (eval.json `tuned.metric`)",
    "baseline_score": "eval.json `baseline.score` (no prompt)",
    "tuned_score": "eval.json `tuned.score`",
    "baseline_loss": "eval.json `baseline.loss`",
    "tuned_loss": "eval.json `tuned.loss`",
    "final_val_loss": "last logged `val_loss` in metrics.jsonl",
    "best_val_loss": "lowest logged `val_loss`",
    "last_step": "last logged step",
    "steps_to_95": "first step with 95% of the final validation-loss improvement over the first logged val_loss",
}
_BLOCK_COLUMNS = {
    "block": "prompt block: `soft`, `deep.<l>`, `prefix.<l>.key`, `prefix.<l>.value` (empty if the run has no tensors yet)",
    "layer": "layer index of the block's space (0 = token embeddings, l = hidden state entering layer l)",
    "space": "`embedding`, `activation`, `key` or `value`",
    "n_vectors": "vectors in the block (P)",
    "dim": "vector dimension",
    "disp_l2": "mean ‖posterior − prior‖ per vector",
    "disp_l2_rel": "mean ‖posterior − prior‖ / ‖prior‖",
    "disp_cos": "mean cos(prior, posterior) per vector",
    "nn_kept_share": "share of vectors whose nearest vocabulary token is the same before and after training (layer 0)",
    "collapse_threshold": "cosine above which a vector is collapsed: 99.9th percentile of cos between random distinct vocabulary rows",
    "ref_kind": "reference for norms and PCA: `vocabulary`, `data` (captured activations) or empty",
    "ref_norm_p50": "median norm of the reference rows",
    "data_task": "task of the activation statistics used for the region metrics (empty when none matched)",
    "n_data": "captured data samples used for kNN, MMD and energy (at most --max-data; Mahalanobis uses all)",
    "shrinkage": "Ledoit–Wolf intensity of the covariance shrinkage used for Mahalanobis distances (the same shrunk covariance as the region priors, eptk.stats)",
    "region_radius": "Mahalanobis radius of the data's 99% region (see region_radius_kind)",
    "region_radius_kind": "`empirical` (99th percentile of the data samples' own distances) or `chi2` (√χ²_d(0.99), no samples)",
}
_VECTOR_COLUMNS = {
    "norm_mean": "mean vector norm",
    "norm_pctile": "mean percentile rank (0–100) of the vector norms among the reference norms",
    "norm_outside_share": "share of vectors with norm outside the reference's [1st, 99th] percentile range",
    "max_cos": "mean cosine to the nearest vocabulary token (layer 0)",
    "collapsed_share": "share of vectors with nearest-token cosine above collapse_threshold (layer 0)",
    "anisotropy": "mean pairwise cosine between the block's vectors",
    "eff_rank": "effective rank: exp(entropy of the normalized singular values)",
    "participation_ratio": "(Σλ)²/Σλ² of the centred covariance eigenvalues",
    "maha_mean": "mean Mahalanobis distance to the data Gaussian (shrunk covariance)",
    "maha_rel": "mean Mahalanobis distance / region_radius (≤ 1 inside the 99% region)",
    "inside_share": "share of vectors inside the data's 99% region",
    "knn_precision": "share of vectors inside some data sample's k-NN ball (Kynkäänniemi 2019)",
    "knn_recall": "share of data samples inside some vector's k-NN ball (NaN when P ≤ k)",
    "knn_density": "expected number of data k-NN balls containing a vector, / k (Naeem 2020)",
    "knn_coverage": "share of data samples whose k-NN ball contains a vector (Naeem 2020)",
    "mmd2": "unbiased MMD² to the data samples, RBF kernel, median-heuristic bandwidth",
    "mmd_p": "permutation p-value of the MMD (small = different from the data)",
    "energy": "energy distance to the data samples",
    "energy_p": "permutation p-value of the energy distance",
}
SUMMARY_COLUMNS: dict[str, str] = {
    **_RUN_COLUMNS,
    **_BLOCK_COLUMNS,
    **{f"{which}_{name}": f"{'prior sample' if which == 'prior' else 'posterior (tuned)'}: {text}"
       for which in ("prior", "post") for name, text in _VECTOR_COLUMNS.items()},
}
TASK_COLUMNS: dict[str, str] = {
    "model": "model of the activation statistics",
    "layer": "layer index (0 = token embeddings)",
    "tasks": "tasks compared (`;`-separated)",
    "n_per_task": "data samples per task used",
    "silhouette": "mean silhouette of the task clusters (Euclidean; high = separated)",
    "nc1": "tr(within-task covariance) / tr(between-task covariance) (small = separated)",
}
FRECHET_COLUMNS: dict[str, str] = {
    "model": "model of the activation statistics",
    "layer": "layer index",
    "task_a": "first task",
    "task_b": "second task",
    "frechet": "Fréchet distance² between the two tasks' Gaussians (captured mean and covariance)",
}


def _markdown_table(columns: Mapping[str, str]) -> str:
    lines = ["| column | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in columns.items()]
    return "\n".join(lines)


SUMMARY_COLUMNS_MARKDOWN = (
    "`summary.csv` / `summary.json` (one row per run × prompt block; `prior_*` columns describe the "
    "prior sample, `post_*` the tuned posterior with the same meaning; empty / null = not measurable)\n\n"
    + _markdown_table({**_RUN_COLUMNS, **_BLOCK_COLUMNS, **{f"prior_{k}`, `post_{k}": v for k, v in _VECTOR_COLUMNS.items()}})
    + "\n\n`tasks.csv` (one row per model × layer, with two or more `--stats` tasks)\n\n"
    + _markdown_table(TASK_COLUMNS)
    + "\n\n`frechet.csv` (one row per model × layer × task pair)\n\n"
    + _markdown_table(FRECHET_COLUMNS)
)

# ---------------------------------------------------------------------------------------------
# inputs: vocabularies, activation statistics, runs


@dataclass
class Vocabulary:
    """A model's input-embedding matrix [V, d] and a token string per row."""
    embeddings: torch.Tensor
    tokens: Sequence[str]


class _DecodedTokens(Sequence):
    """Token strings decoded on demand (decoding a 50k vocabulary up front takes seconds)."""

    def __init__(self, tokenizer, size: int):
        self._tok, self._size, self._cache = tokenizer, size, {}

    def __len__(self):
        return self._size

    def __getitem__(self, i):
        if i not in self._cache:
            try:
                self._cache[i] = self._tok.decode([int(i)])
            except Exception:  # ids past the tokenizer (padded embedding rows)
                self._cache[i] = f"<id {int(i)}>"
        return self._cache[i]


def load_vocabulary(model_name: str) -> Vocabulary:
    """The input embeddings and token strings of `model_name`, through `eptk.models.load_model`."""
    from .models import load_model

    loaded = load_model(model_name)
    weight = loaded.model.get_input_embeddings().weight.detach().float().cpu()
    return Vocabulary(weight, _DecodedTokens(loaded.tokenizer, weight.shape[0]))


VocabSource = Callable[[str], "Vocabulary | tuple | None"] | Mapping[str, "Vocabulary | tuple"] | str | None


class _VocabCache:
    """Resolves a model name to a Vocabulary once, recording why when it cannot."""

    def __init__(self, source: VocabSource):
        self.source = source
        self.cache: dict[str, Vocabulary | None] = {}
        self.thresholds: dict[str, float] = {}
        self.notes: list[str] = []

    def get(self, model: str | None) -> Vocabulary | None:
        if model is None or self.source is None or self.source is False:
            return None
        if model in self.cache:
            return self.cache[model]
        vocab, why = None, None
        try:
            if self.source == "auto":
                vocab = load_vocabulary(model)
            elif isinstance(self.source, Mapping):
                vocab = self.source.get(model)
                why = None if vocab is not None else "not in the given vocabularies"
            else:
                vocab = self.source(model)
        except Exception as exc:  # any failure to load a model only costs the vocabulary metrics
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
        if isinstance(vocab, tuple):
            vocab = Vocabulary(torch.as_tensor(vocab[0]).float(), list(vocab[1]))
        if vocab is None:
            self.notes.append(f"vocabulary metrics skipped for model {model!r}: {why or 'no vocabulary'}")
        self.cache[model] = vocab
        return vocab

    def threshold(self, model: str, vocab: Vocabulary, quantile: float, seed: int) -> float:
        if model not in self.thresholds:
            self.thresholds[model] = M.collapse_threshold(vocab.embeddings, quantile=quantile, seed=seed)
        return self.thresholds[model]


class ActivationStats:
    """One `eptk capture` folder, read by `eptk.stats.Stats.load`, with the analysis' per-layer
    caches (the data Gaussian and the comparison sample are built once and shared by all runs)."""

    def __init__(self, path, stats):
        self.path, self.stats = Path(path), stats
        self._gaussians: dict[int, M.DataGaussian] = {}
        self._samples: dict[tuple, M.DataSample | None] = {}

    @property
    def meta(self) -> dict:
        return self.stats.meta

    @property
    def task(self) -> str:
        return str(self.meta.get("task") or self.path.name)

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    @property
    def layers(self) -> list[int]:
        return self.stats.layers

    @property
    def dim(self) -> int:
        return self.stats.dim

    def mean(self, layer: int) -> torch.Tensor:
        return self.stats.layer(layer).mean

    def covariance(self, layer: int) -> torch.Tensor:
        """The unbiased (unshrunk) covariance."""
        return self.stats.gaussians[layer].covariance()

    def samples(self, layer: int) -> torch.Tensor:
        return self.stats.layer(layer).samples

    def gaussian(self, layer: int) -> M.DataGaussian:
        """The layer's data Gaussian with the covariance shrunk exactly as eptk.stats shrinks it for
        the region priors (Ledoit–Wolf from the reservoir and the token count), so `inside_share`
        and a `region:new` prior agree on where the data ends."""
        if layer not in self._gaussians:
            ls = self.stats.layer(layer)
            raw = self.covariance(layer)
            target = raw.diagonal().mean() * torch.eye(raw.shape[0], dtype=raw.dtype)
            spread = (raw - target).norm()
            # shrunk − μI = (1 − δ)(S − μI): recover δ for the report
            delta = 1.0 if spread <= 0 else 1.0 - ((ls.shrunk_cov.double() - target).norm() / spread).item()
            self._gaussians[layer] = M.DataGaussian(ls.mean, raw, ls.samples, shrinkage=min(max(delta, 0.0), 1.0))
        return self._gaussians[layer]

    def sample(self, layer: int, max_n: int, seed: int) -> M.DataSample | None:
        """The layer's captured samples (subsampled to max_n) for kNN / MMD / energy, built once."""
        key = (layer, max_n, seed)
        if key not in self._samples:
            samples = self.samples(layer)
            self._samples[key] = M.DataSample(samples, max_n=max_n, seed=seed) if samples.shape[0] >= 2 else None
        return self._samples[key]


def load_stats(path) -> ActivationStats:
    """Read an activation-statistics folder (stats.safetensors + meta.json, see eptk.stats)."""
    from .stats import Stats

    path = Path(path)
    if not (path / "stats.safetensors").is_file() or not (path / "meta.json").is_file():
        raise EptkUsageError(f"--stats {path}: not an `eptk capture` folder (it must hold stats.safetensors and meta.json)")
    return ActivationStats(path, Stats.load(path))


@dataclass
class Block:
    name: str
    layer: int
    space: str
    prior: torch.Tensor | None
    posterior: torch.Tensor | None


@dataclass
class RunData:
    path: Path
    name: str
    config: dict
    prior: dict[str, torch.Tensor]
    posterior: dict[str, torch.Tensor]
    metrics: list[dict]
    eval: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.eval is not None

    def blocks(self) -> list[Block]:
        """The prompt blocks present in the prior or the posterior, in layer order."""
        names = set(self.prior) | set(self.posterior)
        blocks = []
        for name in names:
            if name == "soft":
                layer, space = 0, "embedding"
            elif m := re.fullmatch(r"deep\.(\d+)", name):
                layer, space = int(m.group(1)), "activation"
            elif m := re.fullmatch(r"prefix\.(\d+)\.(key|value)", name):
                layer, space = int(m.group(1)), m.group(2)
            else:
                continue
            blocks.append(Block(name, layer, space, _slot_rows(self.prior.get(name)), _slot_rows(self.posterior.get(name))))
        order = {"embedding": 0, "activation": 1, "key": 2, "value": 3}
        return sorted(blocks, key=lambda b: (order[b.space] >= 2, b.layer, order[b.space]))


def _slot_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """[P, d] as is; prefix keys/values [Hkv, P, D] as one row per slot, heads concatenated."""
    if t is None:
        return None
    t = t.float()
    return t.permute(1, 0, 2).reshape(t.shape[1], -1) if t.ndim == 3 else t


def find_runs(paths: Sequence) -> list[Path]:
    """Run directories (those holding config.json) under each path, sorted, without nesting."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EptkUsageError(f"no runs found under {path}: the path does not exist")
        if (path / "config.json").is_file():
            runs = [path]
        else:
            runs = []
            for cfg in sorted(path.rglob("config.json"), key=lambda p: (len(p.parts), p)):  # outermost first
                run = cfg.parent
                if not any(parent in runs for parent in run.parents):  # checkpoint/ of a run is not a run
                    runs.append(run)
            runs.sort()
        if not runs:
            raise EptkUsageError(f"no runs found under {path}: a run directory holds config.json")
        found += [r for r in runs if r not in found]
    return found


def read_run(path: Path) -> RunData:
    """Everything a run directory holds so far; missing or unreadable parts become notes."""
    path = Path(path)
    config = read_json(path / "config.json", "run config")
    if not isinstance(config, dict):
        raise EptkUsageError(f"run config {path / 'config.json'} is not a JSON object")
    notes = []
    tensors = {}
    for which in ("prior", "posterior"):
        file = path / f"{which}.safetensors"
        tensors[which] = {}
        if file.is_file():
            try:
                tensors[which] = load_tensors(file, f"{which} tensors")
            except EptkUsageError as exc:
                notes.append(str(exc))
    evaluation = None
    if (path / "eval.json").is_file():
        try:
            evaluation = read_json(path / "eval.json", "eval")
        except EptkUsageError as exc:
            notes.append(str(exc))
        if not isinstance(evaluation, dict):
            evaluation = None
    name = str(config.get("name") or path.name)
    logged = [r for r in read_jsonl(path / "metrics.jsonl") if isinstance(r, dict)]
    return RunData(path, name, config, tensors["prior"], tensors["posterior"], logged, evaluation, notes)


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class AnalysisOptions:
    top_k: int = 5
    knn_k: int = 5
    n_perm: int = 200
    seed: int = 0
    collapse_quantile: float = 0.999
    region_quantile: float = 0.99
    max_data: int = 1000       # data samples per layer used for kNN / MMD / energy
    max_reference: int = 3000  # reference points drawn in PCA plots
    cluster_projection: str = "pca"  # task-cluster maps: "pca" or "tsne" (scikit-learn)


@dataclass
class AnalysisResult:
    out: Path
    rows: list[dict]
    task_rows: list[dict]
    frechet_rows: list[dict]
    findings: list[dict]
    files: dict[str, Path]
    notes: list[str]
    details: dict


def _num(x):
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _outcome(run: RunData) -> dict:
    ev = run.eval or {}
    base, tuned = (ev.get(k) if isinstance(ev.get(k), dict) else {} for k in ("baseline", "tuned"))
    val = [(r.get("step"), r.get("val_loss")) for r in run.metrics if _num(r.get("val_loss")) is not None]
    steps = [r.get("step") for r in run.metrics if r.get("step") is not None]
    losses = [v for _, v in val]
    return {
        "metric": tuned.get("metric") or base.get("metric"),
        "baseline_score": _num(base.get("score")), "tuned_score": _num(tuned.get("score")),
        "baseline_loss": _num(base.get("loss")), "tuned_loss": _num(tuned.get("loss")),
        "final_val_loss": losses[-1] if losses else None, "best_val_loss": min(losses) if losses else None,
        "last_step": max(steps) if steps else None,
        "steps_to_95": M.steps_to_fraction([s for s, _ in val], losses, 0.95),
    }


def _match_stats(run: RunData, stats: Sequence[ActivationStats]) -> ActivationStats | None:
    task, model = run.config.get("task"), run.config.get("model")
    for s in stats:
        if s.task == task and (s.model is None or model is None or s.model == model):
            return s
    if any(s.task == task for s in stats):
        run.notes.append(f"activation statistics for task {task!r} were captured on another model; region metrics skipped")
    return None


def _vector_metrics(x: torch.Tensor, *, vocab: Vocabulary | None, threshold: float | None, reference: torch.Tensor | None,
                    data: M.DataGaussian | None, data_sample: M.DataSample | None, opts: AnalysisOptions,
                    prior: torch.Tensor | None = None) -> tuple[dict, dict | None]:
    out = {k: None for k in _VECTOR_COLUMNS}
    out["anisotropy"] = M.mean_pairwise_cosine(x)
    out["eff_rank"] = M.effective_rank(x)
    out["participation_ratio"] = M.participation_ratio(x)
    if reference is not None:
        pos = M.norm_position(x, reference)
        out.update(norm_mean=pos["norm_mean"], norm_pctile=pos["norm_pctile"], norm_outside_share=pos["outside_share"])
    else:
        out["norm_mean"] = x.norm(dim=1).mean().item()
    neighbours = None
    if vocab is not None:
        neighbours = M.vocab_neighbours(x, vocab.embeddings, vocab.tokens, k=opts.top_k, threshold=threshold, prior=prior)
        out.update(max_cos=neighbours["max_cos_mean"], collapsed_share=neighbours["collapsed_share"])
    if data is not None:
        region = M.region_position(x, data, quantile=opts.region_quantile)
        out.update(maha_mean=region["maha_mean"], maha_rel=region["maha_rel"], inside_share=region["inside_share"])
    if data_sample is not None:
        knn = data_sample.knn_precision_recall(x, k=opts.knn_k)
        out.update({f"knn_{k}": v for k, v in knn.items()})
        tests = data_sample.two_sample_tests(x, n_perm=opts.n_perm, seed=opts.seed)
        out.update({k: tests[k] for k in ("mmd2", "mmd_p", "energy", "energy_p")})
    return out, neighbours


def _neighbour_details(neigh: dict | None) -> list[dict] | None:
    if neigh is None:
        return None
    rows = []
    for i in range(len(neigh["max_cos"])):
        row = {"slot": i, "tokens": neigh["topk_tokens"][i] if neigh["topk_tokens"] else neigh["topk_ids"][i],
               "cos": [round(c, 4) for c in neigh["topk_cos"][i]], "max_cos": round(neigh["max_cos"][i], 4)}
        if "nn_kept" in neigh:
            row["nn_kept"] = bool(neigh["nn_kept"][i])
        rows.append(row)
    return rows


def _subsample_rows(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def analyze_run(run: RunData, *, vocabs: _VocabCache, stats: Sequence[ActivationStats], opts: AnalysisOptions,
                pca_cache: dict | None = None):
    """Rows (one per block), per-slot neighbour details and PCA panels for one run."""
    pca_cache = {} if pca_cache is None else pca_cache
    cfg = run.config
    base = {
        "run": run.name, "path": str(run.path), "status": _status(run),
        "model": cfg.get("model"), "task": cfg.get("task"), "method": cfg.get("method"), "prior": cfg.get("prior"),
        "prior_weight": cfg.get("prior_weight"), "tokens": cfg.get("tokens"),
        "layers": ";".join(str(l) for l in cfg.get("layers") or []), "lr": cfg.get("lr"), "steps": cfg.get("steps"),
        "seed": cfg.get("seed"), **_outcome(run),
    }
    matched = _match_stats(run, stats)
    blocks = run.blocks()
    if blocks and not run.posterior:
        run.notes.append("no posterior.safetensors yet: prior metrics only")
    rows, details, panels = [], {}, []
    for block in blocks:
        row = {**dict.fromkeys(SUMMARY_COLUMNS), **base}
        ref_rows = block.prior if block.prior is not None else block.posterior
        row.update(block=block.name, layer=block.layer, space=block.space, n_vectors=ref_rows.shape[0], dim=ref_rows.shape[1])
        vocab = threshold = reference = data = sample = None
        ref_kind = ""
        dim = ref_rows.shape[1]
        if block.space == "embedding":
            vocab = vocabs.get(cfg.get("model"))
            if vocab is not None and vocab.embeddings.shape[1] != dim:
                run.notes.append(f"vocabulary of {cfg.get('model')!r} has dimension {vocab.embeddings.shape[1]}, "
                                 f"the soft prompt {dim}: vocabulary metrics skipped")
                vocab = None
            if vocab is not None:
                threshold = vocabs.threshold(cfg.get("model"), vocab, opts.collapse_quantile, opts.seed)
                reference, ref_kind = vocab.embeddings, "vocabulary"
        if matched is not None and block.space in ("embedding", "activation") and block.layer in matched.layers:
            if matched.dim == dim:
                full = matched.samples(block.layer)
                data = matched.gaussian(block.layer)
                sample = matched.sample(block.layer, opts.max_data, opts.seed)
                region = data.radius(opts.region_quantile)
                row.update(data_task=matched.task, n_data=0 if sample is None else sample.n,
                           shrinkage=data.shrinkage, region_radius=region[0], region_radius_kind=region[1])
                if reference is None and full.shape[0] > 0:
                    reference, ref_kind = full, "data"
            else:
                run.notes.append(f"{block.name}: statistics in {matched.path} have dimension {matched.dim}, "
                                 f"the prompt {dim}: region metrics skipped")
        elif matched is not None and block.space in ("embedding", "activation"):
            run.notes.append(f"{block.name}: no captured statistics for layer {block.layer} in {matched.path}")
        row.update(collapse_threshold=threshold, ref_kind=ref_kind)
        if reference is not None:
            row["ref_norm_p50"] = torch.quantile(reference.float().norm(dim=1), 0.5).item()
        common = dict(vocab=vocab, threshold=threshold, reference=reference, data=data, data_sample=sample, opts=opts)
        block_details = {}
        for which, x in (("prior", block.prior), ("post", block.posterior)):
            if x is None:
                continue
            values, neigh = _vector_metrics(x, prior=block.prior if which == "post" else None, **common)
            row.update({f"{which}_{k}": v for k, v in values.items()})
            if neigh is not None:
                block_details["prior" if which == "prior" else "posterior"] = _neighbour_details(neigh)
                if which == "post" and "nn_kept_share" in neigh:
                    row["nn_kept_share"] = neigh["nn_kept_share"]
        if block.prior is not None and block.posterior is not None and block.prior.shape == block.posterior.shape:
            disp = M.displacement(block.prior, block.posterior)
            row.update(disp_l2=disp["l2"], disp_l2_rel=disp["l2_rel"], disp_cos=disp["cos"])
        if block_details:
            details[block.name] = block_details
        rows.append(row)
        panels.append(_pca_panel(block, reference, ref_kind, opts, pca_cache))
    if not blocks:
        run.notes.append("no prior.safetensors or posterior.safetensors yet")
        rows.append({**dict.fromkeys(SUMMARY_COLUMNS), **base})
    return rows, details, panels


def _pca_panel(block: Block, reference, ref_kind: str, opts: AnalysisOptions, cache: dict) -> dict:
    if reference is not None:  # one fit per vocabulary / data layer, shared by the runs using it
        key = (id(reference), tuple(reference.shape))
        if key not in cache:
            cache[key] = (reference, M.pca_2d(reference, max_n=5000, seed=opts.seed))  # holds `reference`: ids stay unique
        pca = cache[key][1]
    else:
        pca = M.pca_2d(torch.cat([x for x in (block.prior, block.posterior) if x is not None]), seed=opts.seed)

    def project(x):
        return None if x is None else ((x.double() - pca["mean"]) @ pca["components"].T).numpy()

    ref_pts = project(_subsample_rows(reference, opts.max_reference, opts.seed)) if reference is not None else None
    return {"title": f"{block.name} (layer {block.layer})", "reference": ref_pts,
            "reference_label": {"vocabulary": "vocabulary", "data": "task activations"}.get(ref_kind, ""),
            "prior": project(block.prior), "posterior": project(block.posterior), "explained": pca["explained"],
            "fit_on": ref_kind or "prior + posterior"}


def task_cluster_metrics(stats: Sequence[ActivationStats], *, max_per_task: int = 500, seed: int = 0,
                         projection: str = "pca"):
    """Per model and layer shared by two or more tasks: silhouette and NC1 of the task clusters
    (on up to `max_per_task` captured samples each), Fréchet distance between each task pair's
    Gaussians, and 2-D PCA maps of the samples. Returns (task_rows, frechet_rows, map_panels)."""
    groups: dict[str | None, list[ActivationStats]] = {}
    for s in stats:
        groups.setdefault(s.model, []).append(s)
    task_rows, frechet_rows, panels = [], [], []
    for model, group in groups.items():
        by_task = {}
        for s in group:
            by_task.setdefault(s.task, s)
        if len(by_task) < 2:
            continue
        tasks = sorted(by_task)
        common = sorted(set.intersection(*(set(by_task[t].layers) for t in tasks)))
        if len({by_task[t].dim for t in tasks}) != 1:
            continue
        for layer in common:
            for i, a in enumerate(tasks):
                for b in tasks[i + 1:]:
                    sa, sb = by_task[a], by_task[b]
                    frechet_rows.append({"model": model, "layer": layer, "task_a": a, "task_b": b,
                                         "frechet": M.frechet_distance(sa.mean(layer), sa.covariance(layer),
                                                                       sb.mean(layer), sb.covariance(layer))})
            samples = [by_task[t].samples(layer) for t in tasks]
            if any(x.shape[0] < 2 for x in samples):
                continue
            n = min(max_per_task, *(x.shape[0] for x in samples))
            xs = [_subsample_rows(x, n, seed) for x in samples]
            x = torch.cat(xs)
            labels = [t for t, part in zip(tasks, xs) for _ in range(part.shape[0])]
            task_rows.append({"model": model, "layer": layer, "tasks": ";".join(tasks), "n_per_task": n,
                              "silhouette": M.silhouette(x, labels), "nc1": M.nc1(x, labels)})
            title = f"layer {layer}" + (f" ({model})" if len(groups) > 1 else "")
            if projection == "tsne":
                flat = M.tsne_2d(x, seed=seed)
                parts = torch.split(flat, [part.shape[0] for part in xs])
                panels.append({"title": title, "explained": None,
                               "groups": {t: part.numpy() for t, part in zip(tasks, parts)}})
            else:
                pca = M.pca_2d(x, seed=seed)
                panels.append({"title": title, "explained": pca["explained"],
                               "groups": {t: ((part.double() - pca["mean"]) @ pca["components"].T).numpy()
                                          for t, part in zip(tasks, xs)}})
    return task_rows, frechet_rows, panels


# ---------------------------------------------------------------------------------------------
# findings (shared by the terminal table and the report)


def _fmt(x, digits: int = 3) -> str:
    x = _num(x)
    if x is None:
        return "–"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** -digits):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def _per_block(rows: list[dict], key: str, only_layer0: bool = False) -> str:
    vals = [(r["block"], r.get(key)) for r in rows if r.get("block") and (not only_layer0 or r["space"] == "embedding")]
    vals = [(b, v) for b, v in vals if _num(v) is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return _fmt(vals[0][1])
    return " ".join(f"{b.replace('prefix.', 'p').replace('deep.', 'd')}:{_fmt(v, 2)}" for b, v in vals)


def _layers_text(rows: list[dict]) -> str:
    """Prompted layers as compact ranges: '0,13-15'."""
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    if not layers:
        return "–"
    spans = [[layers[0], layers[0]]]
    for layer in layers[1:]:
        if layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


FINDINGS_COLUMNS = ("run", "status", "method", "prior", "layers", "tuned", "baseline", "displacement",
                    "collapsed", "inside region", "MMD p")


def findings(rows: list[dict]) -> list[dict]:
    """One display row per run: FINDINGS_COLUMNS, formatted. Per-block values read `block:value`
    (`d13` = deep.13, `p3.key` = prefix.3.key); displacement is the relative L2 of the posterior,
    collapsed / inside region / MMD p describe the posterior (the prior when there is none yet)."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    out = []
    for name, rs in by_run.items():
        first = rs[0]
        has_post = any(_num(r.get("post_norm_mean")) is not None for r in rs)
        which = "post" if has_post else "prior"
        out.append({
            "run": name, "status": first["status"], "method": str(first.get("method") or "–"),
            "prior": str(first.get("prior") or "–"), "layers": _layers_text(rs),
            "tuned": _fmt(first.get("tuned_score")),
            "baseline": _fmt(first.get("baseline_score")),
            "displacement": _per_block(rs, "disp_l2_rel"),
            "collapsed": _per_block(rs, f"{which}_collapsed_share", only_layer0=True),
            "inside region": _per_block(rs, f"{which}_inside_share"),
            "MMD p": _per_block(rs, f"{which}_mmd_p"),
        })
    return out


def print_findings(table_rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or wide_console()
    table = Table(title="eptk analyze: findings", header_style="bold")
    for col in FINDINGS_COLUMNS:
        table.add_column(col, overflow="fold", justify="right" if col in ("tuned", "baseline") else "left")
    for r in table_rows:
        table.add_row(*(r[c] for c in FINDINGS_COLUMNS))
    console.print(table)


# ---------------------------------------------------------------------------------------------
# writing


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: "" if _clean(r.get(c)) is None else r.get(c) for c in columns})
    write_text_atomic(path, buf.getvalue())


def _write_rows_json(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    write_json_atomic(path, [{c: _clean(r.get(c)) for c in columns} for r in rows])


def _safe_name(name: str, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    safe, i = base, 2
    while safe in used:
        safe, i = f"{base}_{i}", i + 1
    used.add(safe)
    return safe


def analyze_runs(paths: Sequence, out="analysis", *, stats: Sequence = (), vocab: VocabSource = "auto",
                 plots: bool = True, options: AnalysisOptions | None = None, console=None,
                 progress: bool = True) -> AnalysisResult:
    """Analyze every run under `paths` and write the results to `out`.

    stats: activation-statistics folders (`eptk capture` output) or loaded ActivationStats; a run
      uses the one whose task (and model, when both say) matches its config; two or more tasks
      also give the cross-task cluster metrics.
    vocab: where vocabulary embeddings come from, for the layer-0 neighbour and collapse metrics:
      "auto" (load config `model` through eptk.models.load_model), a mapping model name →
      Vocabulary or (embeddings [V, d], token strings), a callable name → the same or None, or
      None to skip them. A model that cannot be loaded only skips those metrics, with a note.
    Writes summary.csv, summary.json, details.json, report.html, plots/*.png and, with two or
    more tasks, tasks.csv/json and frechet.csv; prints the findings table to `console`.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    opts = options or AnalysisOptions()
    console = console or wide_console()
    out = Path(out)
    run_dirs = find_runs(paths)
    pca_cache: dict = {}
    stats = list(stats) + _stats_named_by_runs(paths, stats)
    loaded_stats = [s if isinstance(s, ActivationStats) else load_stats(s) for s in stats]
    vocabs = _VocabCache(vocab)
    notes: list[str] = []
    rows: list[dict] = []
    details: dict = {}
    run_panels: list[tuple[str, str, list[dict]]] = []
    curves, prefix_masses = [], []
    used_names: set = set()
    display_names: set = set()

    with Progress(TextColumn("[bold]analyze[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not progress) as bar:
        task = bar.add_task("", total=len(run_dirs))
        for run_dir in run_dirs:
            bar.update(task, description=str(run_dir))
            try:
                run = read_run(run_dir)
            except EptkUsageError as exc:
                notes.append(f"{run_dir}: skipped ({exc})")
                bar.advance(task)
                continue
            name = run.name
            i = 2
            while name in display_names:
                name, i = f"{run.name} ({i})", i + 1
            run.name = name
            display_names.add(name)
            run_rows, run_details, panels = analyze_run(run, vocabs=vocabs, stats=loaded_stats, opts=opts, pca_cache=pca_cache)
            rows += run_rows
            if run_details:
                details[run.name] = run_details
            safe = _safe_name(run.name, used_names)
            run_panels.append((run.name, safe, panels))
            val = [(r["step"], r["val_loss"]) for r in run.metrics if _num(r.get("val_loss")) is not None and r.get("step") is not None]
            if val:
                curves.append({"run": run.name, "prior": str(run.config.get("prior")), "steps": [s for s, _ in val],
                               "values": [v for _, v in val]})
            mass = (run.eval or {}).get("prefix_mass")
            if isinstance(mass, dict) and mass:
                prefix_masses.append((run.name, safe, mass))
            notes += [f"{run.name}: {n}" for n in run.notes]
            bar.advance(task)
    notes = vocabs.notes + notes
    if not rows:
        raise EptkUsageError(f"no readable runs under {', '.join(str(p) for p in paths)}: a run directory holds config.json")

    task_rows, frechet_rows, cluster_panels = task_cluster_metrics(loaded_stats, seed=opts.seed,
                                                                   projection=opts.cluster_projection)
    if loaded_stats and not task_rows and not frechet_rows:
        notes.append("task cluster metrics need statistics of two or more tasks of one model")

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    columns = list(SUMMARY_COLUMNS)
    _write_csv(out / "summary.csv", rows, columns)
    _write_rows_json(out / "summary.json", rows, columns)
    files["summary.csv"], files["summary.json"] = out / "summary.csv", out / "summary.json"
    write_json_atomic(out / "details.json", details)
    files["details.json"] = out / "details.json"
    if task_rows or frechet_rows:
        _write_csv(out / "tasks.csv", task_rows, list(TASK_COLUMNS))
        _write_csv(out / "frechet.csv", frechet_rows, list(FRECHET_COLUMNS))
        write_json_atomic(out / "tasks.json", {"clusters": [{c: _clean(r.get(c)) for c in TASK_COLUMNS} for r in task_rows],
                                               "frechet": [{c: _clean(r.get(c)) for c in FRECHET_COLUMNS} for r in frechet_rows]})
        files.update({"tasks.csv": out / "tasks.csv", "frechet.csv": out / "frechet.csv", "tasks.json": out / "tasks.json"})

    figures: list[dict] = []
    if plots:
        figures = _make_plots(out / "plots", rows, run_panels, curves, prefix_masses, cluster_panels, notes)
        for fig in figures:
            files[f"plots/{fig['path'].name}"] = fig["path"]

    table_rows = findings(rows)
    from .report import write_report

    write_report(out / "report.html", findings=table_rows, findings_columns=FINDINGS_COLUMNS, rows=rows,
                 columns=SUMMARY_COLUMNS, task_rows=task_rows, frechet_rows=frechet_rows, figures=figures,
                 notes=notes, details=details)
    files["report.html"] = out / "report.html"
    print_findings(table_rows, console)
    for note in notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    console.print(f"wrote {out}/ (summary.csv, summary.json, report.html, {len(figures)} plots)", highlight=False)
    return AnalysisResult(out, rows, task_rows, frechet_rows, table_rows, files, notes, details)


def _make_plots(folder: Path, rows, run_panels, curves, prefix_masses, cluster_panels, notes) -> list[dict]:
    from . import plots as P

    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, safe, panels in run_panels:
        if panels:
            path = folder / f"run_{safe}_pca.png"
            P.plot_run_pca(name, panels, path)
            figures.append({"path": path, "title": f"{name}: prior → posterior (PCA)",
                            "caption": "PCA fitted on the reference (grey); prior samples blue, posterior red, arrows prior→posterior."})
    if curves:
        path = folder / "val_curves.png"
        P.plot_val_curves(curves, path)
        figures.append({"path": path, "title": "Validation loss by prior", "caption": "One line per run, coloured by prior."})
    points = []
    for name in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == name]
        dist = [_num(r.get("post_maha_rel")) for r in rs if _num(r.get("post_maha_rel")) is not None]
        score = _num(rs[0].get("tuned_score"))
        if dist and score is not None:
            points.append({"run": name, "prior": str(rs[0].get("prior")), "distance": sum(dist) / len(dist), "score": score})
    if points:
        path = folder / "score_vs_distance.png"
        P.plot_score_vs_distance(points, path)
        figures.append({"path": path, "title": "Final score vs distance from the data",
                        "caption": "x: posterior Mahalanobis distance / data 99% radius (mean over blocks; ≤ 1 = inside)."})
    elif rows:
        notes.append("score-vs-distance plot needs finished runs and --stats for their task")
    if cluster_panels:
        path = folder / "task_clusters.png"
        P.plot_task_clusters(cluster_panels, path)
        figures.append({"path": path, "title": "Task clusters per layer (PCA)", "caption": "Captured activations, one colour per task."})
    for name, safe, mass in prefix_masses:
        path = folder / f"run_{safe}_prefix_mass.png"
        if P.plot_prefix_mass(name, mass, path):
            figures.append({"path": path, "title": f"{name}: attention mass on the prompt",
                            "caption": "Mean softmax probability on the prompt slots, layer × head."})
    return figures


def _status(run) -> str:
    if run.complete:
        return "complete"
    return "imported" if run.config.get("prior") == "imported" else "in progress"


def _stats_named_by_runs(paths, given) -> list[Path]:
    """Statistics folders that runs recorded in config.json ("stats": {task: folder}) and that exist,
    so the data-region metrics of region-prior runs need no --stats."""
    known = {str(Path(g).resolve()) for g in given if not isinstance(g, ActivationStats)}
    found = []
    for run in find_runs(paths):
        try:
            config = read_json(Path(run) / "config.json", "run config")
        except EptkUsageError:
            continue
        for folder in (config.get("stats") or {}).values() if isinstance(config, dict) else ():
            key = str(Path(folder).resolve())
            if key not in known and (Path(folder) / "stats.safetensors").is_file():
                known.add(key)
                found.append(Path(folder))
    return found


def wide_console():
    """A rich console at least 140 columns wide: the findings table has 11 columns."""
    from rich.console import Console
    return Console(width=max(Console().width, 140))
