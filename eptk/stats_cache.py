"""The on-disk cache of activation statistics that region priors use: captured once per model, task,
layers, reservoir size, seed, example count and space (activations, or the attention keys or values), then
loaded.

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
              seed: int, n_examples: int, space: str = "activation") -> str:
    """The cache entry's name: a hash of what the capture depends on. The model enters by its identity (name and
    content hash, eptk.models.model_identity), never by a folder, so the key is the same under any EPTK_CACHE.
    The space enters only when it is not `activation`, so activation entries keep the names they had."""
    if task_spec.startswith("jsonl:") and Path(task_spec[6:]).is_file():   # a task file by its content too
        task_spec = f"jsonl sha256:{file_sha256(Path(task_spec[6:]))}"
    what = {"model": model_name, "model_id": model_id, "task": task_spec, "layers": sorted(layers),
            "samples": samples, "seed": seed, "examples": n_examples, "format": FORMAT}
    if space != "activation":
        what["space"] = space
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stats_folder(loaded: LoadedModel, model_name: str, task_spec: str, layers: list[int], samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, root: Path | None = None, space: str = "activation") -> Path:
    root = Path(root) if root is not None else cache_dir() / "stats"
    return root / stats_key(model_name, loaded.identity, task_spec, layers, samples, seed, n_examples, space)


def ensure_stats(loaded: LoadedModel, model_name: str, task_spec: str, layers: list[int], samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, batch_size: int = 16, progress: bool = True,
                 root: Path | None = None, space: str = "activation") -> ActivationStats:
    """Cached statistics of the task at the layers in `space`: load them, or capture and store them atomically
    under <cache>/stats/<hash of model, model source, task, layers, samples, seed, examples, space>."""
    layers = capture.check_layers(loaded.model, layers, space)
    hidden = model_dims(loaded.model)["hidden_size"]
    folder = stats_folder(loaded, model_name, task_spec, layers, samples, seed, n_examples, root, space)
    if folder.is_dir():
        try:
            return ActivationStats.load(folder, model_name=model_name, hidden_size=hidden)
        except EptkUsageError as exc:
            log.warning("recapturing: cached statistics in %s are unreadable (%s)", folder, exc)
    stats = capture.capture_task(loaded, model_name, task_spec, layers, samples, seed, n_examples, batch_size, progress,
                                 space=space)
    # swapped in whole; another process (a DDP rank) storing the same key stores equal statistics
    stats.save(folder)
    log.info("activation statistics of %s on %s stored in %s", model_name, task_spec, folder)
    # What a prior reads is what was saved: the captured moments are float64 in memory and float32 on disk, so a
    # run that captured its statistics and a run that found them cached would otherwise sample different priors.
    return ActivationStats.load(folder, model_name=model_name, hidden_size=hidden)


class StatsCache:
    """`cache(task, layer, space="activation") -> LayerActivations` for `PriorContext.stats`.

    On first use of a task (in a space) it captures every layer in one pass over the task's train examples
    (one forward per batch covers all layers: 0..L of the activations, or the keys or values of decoder layers
    0..L-1), caches that on disk (`ensure_stats`) and in memory.
    """

    def __init__(self, loaded: LoadedModel, model_name: str, default_task: str | None, samples: int = 2048,
                 seed: int = 0, n_examples: int = 512, batch_size: int = 16, progress: bool = True,
                 root: Path | None = None):
        self.loaded, self.model_name, self.default_task = loaded, model_name, default_task
        self.samples, self.seed, self.n_examples = samples, seed, n_examples
        self.batch_size, self.progress, self.root = batch_size, progress, root
        self.num_layers = model_dims(loaded.model)["num_layers"]
        # what config.json records as "stats": task -> the activation statistics folder used, and
        # "<space>:<task>" -> the key or value statistics folder
        self.folders: dict[str, str] = {}
        self._stats: dict[tuple, ActivationStats] = {}

    def stats(self, task: str | None = None, space: str = "activation") -> ActivationStats:
        task = task or self.default_task
        if not task:
            raise EptkUsageError("activation statistics need a task: give --task or name one in the prior, "
                                 "e.g. region:data:arith")
        if (task, space) not in self._stats:
            layers = list(range(self.num_layers + 1 if space == "activation" else self.num_layers))
            self._stats[task, space] = ensure_stats(self.loaded, self.model_name, task, layers,
                                                    samples=self.samples, seed=self.seed, n_examples=self.n_examples,
                                                    batch_size=self.batch_size, progress=self.progress,
                                                    root=self.root, space=space)
            label = task if space == "activation" else f"{space}:{task}"
            self.folders[label] = cache_relative(stats_folder(self.loaded, self.model_name, task, layers, self.samples,
                                                              self.seed, self.n_examples, self.root, space))
        return self._stats[task, space]

    def __call__(self, task: str | None = None, layer: int = 0, space: str = "activation") -> LayerActivations:
        highest = self.num_layers if space == "activation" else self.num_layers - 1
        if not 0 <= int(layer) <= highest:
            raise EptkUsageError(f"layer {layer} is outside 0..{highest} for model {self.model_name!r}")
        return self.stats(task, space).layer(int(layer))
