"""Reading what `eptk analyze` measures: run directories (through eptk.runs), activation statistics
(through eptk.stats) and model vocabularies. Runs still in progress are read as far as they go.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import metrics as M
from ..errors import EptkUsageError
from ..io import in_cache
from ..methods import PromptMethod, locate
from ..runs import CONFIG, RunDir, find_runs
from ..spaces import RESIDUAL, SPACES
from ..stats import META_FILE, STATS_FILE, ActivationStats, is_stats_folder


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


def load_vocabulary(model_name: str, device: str = "auto") -> Vocabulary:
    """The token embeddings (in the soft prompt's space, `inputs_embeds`) and token strings of `model_name`,
    loaded on `device` (auto: CUDA when present)."""
    from ..families import family_of
    from ..models import load_frozen

    loaded = load_frozen(model_name, device)
    weight = family_of(loaded.model).token_embeddings(loaded.model)
    return Vocabulary(weight, _DecodedTokens(loaded.tokenizer, weight.shape[0]))


VocabSource = Callable[[str], "Vocabulary | tuple | None"] | Mapping[str, "Vocabulary | tuple"] | str | None


class VocabCache:
    """Resolves a model name to a Vocabulary once, recording why when it cannot."""

    def __init__(self, source: VocabSource, device: str = "auto"):
        self.source, self.device = source, device
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
                vocab = load_vocabulary(model, self.device)
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


class TaskActivations:
    """One task's captured activations (an `eptk capture` folder, read by `ActivationStats.load`) with the
    analysis' per-layer caches (the data Gaussian and the comparison sample are built once for all runs)."""

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
    def space(self) -> str:
        """What was captured: `activation`, or the attention `key` / `value` (statistics of a prefix's space)."""
        return str(self.meta.get("space") or "activation")

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

    def pooled(self, layer: int) -> torch.Tensor:
        """Per-sequence mean activations [N, d] (empty in statistics captured before they were kept)."""
        return self.stats.pooled(layer)

    def gaussian(self, layer: int) -> M.DataGaussian:
        """The layer's data Gaussian with the covariance shrunk by the δ eptk.stats shrinks it by for the
        region priors (Ledoit–Wolf from the reservoir and the token count), so `inside_share` and a
        `region:new` prior agree on where the data ends."""
        if layer not in self._gaussians:
            ls = self.stats.layer(layer)
            self._gaussians[layer] = M.DataGaussian(ls.mean, self.covariance(layer), ls.samples,
                                                    shrinkage=min(max(ls.shrinkage, 0.0), 1.0))
        return self._gaussians[layer]

    def sample(self, layer: int, max_n: int, seed: int) -> M.DataSample | None:
        """The layer's captured samples (subsampled to max_n) for kNN / MMD / energy, built once."""
        key = (layer, max_n, seed)
        if key not in self._samples:
            samples = self.samples(layer)
            self._samples[key] = M.DataSample(samples, max_n=max_n, seed=seed) if samples.shape[0] >= 2 else None
        return self._samples[key]


def load_stats(path) -> TaskActivations:
    """Read an activation-statistics folder (what `eptk capture` writes)."""
    path = Path(path)
    if not is_stats_folder(path):
        raise EptkUsageError(f"--stats {path}: not an `eptk capture` folder (it must hold {STATS_FILE} and {META_FILE})")
    return TaskActivations(path, ActivationStats.load(path))


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
        """The prompt blocks present in the prior or the posterior, residual-stream blocks first, in layer
        order. Where each lives is what the method that names it says; unknown names become a note."""
        blocks = []
        for name in sorted(set(self.prior) | set(self.posterior)):
            place = locate(name)
            if place is None:
                self.notes.append(f"tensor {name!r} belongs to no known method: not measured")
                continue
            layer, space = place
            blocks.append(Block(name, layer, space, _vectors(self.prior.get(name)), _vectors(self.posterior.get(name))))
        return sorted(blocks, key=lambda b: (b.space not in RESIDUAL, b.layer, SPACES.index(b.space)))


def _vectors(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else PromptMethod.vectors(t)




def read_run(path: Path) -> RunData:
    """Everything a run directory holds so far; missing or unreadable parts become notes."""
    run = RunDir(path)
    config = run.config()
    if not isinstance(config, dict):
        raise EptkUsageError(f"run config {run.path / CONFIG} is not a JSON object")
    notes = []
    tensors = {}
    for which in ("prior", "posterior"):
        tensors[which] = {}
        if run.has_tensors(which):
            try:
                tensors[which] = run.tensors(which)
            except EptkUsageError as exc:
                notes.append(str(exc))
    evaluation = None
    try:
        evaluation = run.eval()
    except EptkUsageError as exc:
        notes.append(str(exc))
    if not isinstance(evaluation, dict):
        evaluation = None
    name = str(config.get("name") or run.path.name)
    try:
        logged = [r for r in run.metrics() if isinstance(r, dict)]
    except EptkUsageError as exc:  # a damaged log costs the curves, not the run
        logged = []
        notes.append(str(exc))
    return RunData(run.path, name, config, tensors["prior"], tensors["posterior"], logged, evaluation, notes)


def stats_named_by_runs(paths, given) -> list[Path]:
    """Statistics folders that runs recorded in config.json ("stats": {task: folder}) and that exist,
    so the data-region metrics of region-prior runs need no --stats."""
    known = {str(Path(g).resolve()) for g in given if not isinstance(g, TaskActivations)}
    found = []
    for run in find_runs(paths):
        try:
            config = RunDir(run).config()
        except EptkUsageError:
            continue
        for recorded in (config.get("stats") or {}).values() if isinstance(config, dict) else ():
            folder = in_cache(recorded)
            key = str(folder.resolve())
            if key not in known and is_stats_folder(folder):
                known.add(key)
                found.append(folder)
    return found
