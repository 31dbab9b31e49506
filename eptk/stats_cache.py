"""The on-disk cache of activation statistics that region priors use: captured once per model, task,
layers, reservoir size, seed and example count, then loaded.

Entries live under <cache>/stats/<hash> (EPTK_CACHE, default ~/.cache/eptk), each an `eptk capture`
folder (its files belong to eptk.stats).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from . import capture
from .errors import EptkUsageError
from .families import model_dims
from .io import cache_dir, cache_relative, file_sha256
from .models import LoadedModel
from .stats import FORMAT, ActivationStats, LayerActivations

log = logging.getLogger(__name__)

REFERENCE_SEED = 0  # the capture seed of statistics a prior reads independently of the run seed (vae)


def stats_key(model_name: str, model_id: str, task_spec: str, layers: list[int], samples: int,
              seed: int, n_examples: int) -> str:
    """The cache entry's name: a hash of what the capture depends on. The model enters by its identity (name and
    content hash, eptk.models.model_identity), never by a folder, so the key is the same under any EPTK_CACHE."""
    if task_spec.startswith("jsonl:") and Path(task_spec[6:]).is_file():   # a task file by its content too
        task_spec = f"jsonl sha256:{file_sha256(Path(task_spec[6:]))}"
    blob = json.dumps({"model": model_name, "model_id": model_id, "task": task_spec, "layers": sorted(layers),
                       "samples": samples, "seed": seed, "examples": n_examples, "format": FORMAT},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stats_folder(loaded: LoadedModel, model_name: str, task_spec: str, layers: list[int], samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else cache_dir() / "stats"
    return root / stats_key(model_name, loaded.identity, task_spec, layers, samples, seed, n_examples)


def ensure_stats(loaded: LoadedModel, model_name: str, task_spec: str, layers: list[int], samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, batch_size: int = 16, progress: bool = True,
                 root: Path | None = None) -> ActivationStats:
    """Cached statistics of the task at the layers: load them, or capture and store them atomically
    under <cache>/stats/<hash of model, model source, task, layers, samples, seed, examples>."""
    layers = capture.check_layers(loaded.model, layers)
    hidden = model_dims(loaded.model)["hidden_size"]
    folder = stats_folder(loaded, model_name, task_spec, layers, samples, seed, n_examples, root)
    if folder.is_dir():
        try:
            return ActivationStats.load(folder, model_name=model_name, hidden_size=hidden)
        except EptkUsageError as exc:
            log.warning("recapturing: cached statistics in %s are unreadable (%s)", folder, exc)
    stats = capture.capture_task(loaded, model_name, task_spec, layers, samples, seed, n_examples, batch_size, progress)
    # swapped in whole; another process (a DDP rank) storing the same key stores equal statistics
    stats.save(folder)
    log.info("activation statistics of %s on %s stored in %s", model_name, task_spec, folder)
    # What a prior reads is what was saved: the captured moments are float64 in memory and float32 on disk, so a
    # run that captured its statistics and a run that found them cached would otherwise sample different priors.
    return ActivationStats.load(folder, model_name=model_name, hidden_size=hidden)


class StatsCache:
    """`cache(task, layer) -> LayerActivations` for `PriorContext.stats`.

    On first use of a task it captures every layer 0..L in one pass over the task's train examples
    (one forward per batch covers all layers), caches that on disk (`ensure_stats`) and in memory.
    """

    def __init__(self, loaded: LoadedModel, model_name: str, default_task: str | None, samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, batch_size: int = 16, progress: bool = True,
                 root: Path | None = None):
        self.loaded, self.model_name, self.default_task = loaded, model_name, default_task
        self.samples, self.seed, self.n_examples = samples, seed, n_examples
        self.batch_size, self.progress, self.root = batch_size, progress, root
        self.num_layers = model_dims(loaded.model)["num_layers"]
        self.folders: dict[str, str] = {}  # task -> the statistics folder used, as config.json records it
        self._stats: dict[str, ActivationStats] = {}

    def stats(self, task: str | None = None) -> ActivationStats:
        task = task or self.default_task
        if not task:
            raise EptkUsageError("activation statistics need a task: give --task or name one in the prior, "
                                 "e.g. region:data:arith")
        if task not in self._stats:
            layers = list(range(self.num_layers + 1))
            self._stats[task] = ensure_stats(self.loaded, self.model_name, task, layers,
                                             samples=self.samples, seed=self.seed, n_examples=self.n_examples,
                                             batch_size=self.batch_size, progress=self.progress, root=self.root)
            self.folders[task] = cache_relative(stats_folder(self.loaded, self.model_name, task, layers,
                                                             self.samples, self.seed, self.n_examples, self.root))
        return self._stats[task]

    def __call__(self, task: str | None = None, layer: int = 0) -> LayerActivations:
        if not 0 <= int(layer) <= self.num_layers:
            raise EptkUsageError(f"layer {layer} is outside 0..{self.num_layers} for model {self.model_name!r}")
        return self.stats(task).layer(int(layer))
