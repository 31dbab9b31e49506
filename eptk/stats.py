"""Activation statistics: streaming Gaussians, seeded token reservoirs, and their file format.

A `RunningGaussian` merges per-batch sums (count, Σx, Σxxᵀ — what `eptk.kernels.capture_stats`
returns) in float64 with the Chan–Golub–LeVeque update, so statistics of any number of batches can
be merged, saved and loaded (the idea of baukit's runningstats). A `Reservoir` keeps a uniform
sample of n token activations (Algorithm R, seeded). `ActivationStats` holds both per layer, plus each
sequence's mean activation, and reads and writes the `eptk capture` format:

stats.safetensors (float32 unless noted)
  layer<l>.mean     [d]     mean activation over the real tokens
  layer<l>.cov      [d,d]   unbiased covariance (not shrunk; `LayerActivations.shrunk_cov` shrinks it)
  layer<l>.count    [1]     float64, number of real tokens seen
  layer<l>.samples  [n,d]   a seeded uniform sample of token activations (n = min(samples, count))
  layer<l>.seen     [1]     int64, tokens offered to the reservoir (equals count)
  layer<l>.pooled   [N,d]   per-sequence mean activation, one row per sequence with a real token
  layer<l>.max_mahalanobis [1]  float64, the largest Mahalanobis distance (under the shrunk covariance)
                    of any captured token, from a second pass (eptk-stats/4; absent in older folders)
meta.json
  model, model_source, hidden_size, num_layers, task, layers, samples, seed, examples, sequences,
  tokens (per layer), excluded ("padding and BOS tokens are excluded"), eptk_version, format.

Layer l: 0 = token embeddings (the input of decoder layer 0), l = the hidden state entering
decoder layer l, L = the output of the last decoder layer before the final norm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import linalg
from .errors import EptkUsageError
from .version import __version__

FORMAT = "eptk-stats/4"
STATS_FILE, META_FILE = "stats.safetensors", "meta.json"  # an `eptk capture` folder holds these two
EXCLUDED = ("padding, BOS tokens, the first real token of each sequence (the attention sink) and, per "
            "layer, tokens whose norm exceeds 10x their batch's median (massive activations) are excluded")


# ---- streaming Gaussian ------------------------------------------------------------------------

class RunningGaussian:
    """Mean and covariance of a stream of d-vectors, merged batch by batch in float64.

    The state lives on the device of the first batch (a GPU capture merges on the GPU, with no host
    synchronization per batch); `cpu()` moves it. `count` reads the token count as a float.
    """

    def __init__(self, dim: int, device=None):
        self.dim = dim
        device = torch.device("cpu") if device is None else torch.device(device)
        self._count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)   # Σ (x - mean)(x - mean)ᵀ
        self._placed = device is not None and device.type != "cpu"

    @property
    def count(self) -> float:
        return float(self._count)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _place(self, device: torch.device) -> None:
        """Follow the first batch onto its device while still empty."""
        if device != self.device and not self._placed:
            self._count, self.mean, self.m2 = (t.to(device) for t in (self._count, self.mean, self.m2))
        self._placed = True

    def update(self, count, total, gram) -> "RunningGaussian":
        """Merge a batch given by its count, Σx [d] and Σxxᵀ [d,d] (any dtype or device; a count of 0 is a no-op).

        The batch's own scatter is gram - n·m·mᵀ in float64; with float32 sums that subtraction
        keeps float32's relative precision of Σxxᵀ, enough for covariances of activations.
        """
        self._place(total.device)
        dev = self.device
        n = torch.as_tensor(count).to(dev, torch.float64)
        mean = total.detach().to(dev, torch.float64) / n.clamp_min(1.0)
        m2 = torch.addr(gram.detach().to(dev, torch.float64), mean * -n, mean)   # gram − n·m·mᵀ
        return self._merge(n, mean, m2)

    def add(self, rows: torch.Tensor) -> "RunningGaussian":
        """Merge the rows [m,d] of a batch directly (float64)."""
        self._place(rows.device)
        x = rows.detach().to(self.device, torch.float64).reshape(-1, self.dim)
        if x.shape[0] == 0:
            return self
        mean = x.mean(0)
        xc = x - mean
        return self._merge(torch.tensor(float(x.shape[0]), dtype=torch.float64, device=self.device), mean, xc.T @ xc)

    def merge(self, other: "RunningGaussian") -> "RunningGaussian":
        """Merge another RunningGaussian into this one (Chan et al.'s pairwise update)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge Gaussians of width {other.dim} and {self.dim}")
        self._place(other.device)
        dev = self.device
        return self._merge(other._count.to(dev), other.mean.to(dev).clone(), other.m2.to(dev).clone())

    def _merge(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> "RunningGaussian":
        n_a = self._count
        n = n_a + n_b
        share = n_b / n.clamp_min(1.0)          # 0 when the batch is empty, no division by zero
        delta = mean_b - self.mean
        self.mean = self.mean + delta * share
        self.m2 = torch.addr(self.m2 + m2_b, delta * (n_a * share), delta)   # + δδᵀ·n_a·n_b/n
        self._count = n
        return self

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance [d,d], float64."""
        return self.m2 / (self._count - 1.0).clamp_min(1.0)

    def cpu(self) -> "RunningGaussian":
        self._count, self.mean, self.m2 = self._count.cpu(), self.mean.cpu(), self.m2.cpu()
        return self

    @classmethod
    def from_moments(cls, count: float, mean: torch.Tensor, cov: torch.Tensor) -> "RunningGaussian":
        g = cls(mean.shape[0])
        g._count = torch.tensor(float(count), dtype=torch.float64)
        g.mean = mean.detach().to("cpu", torch.float64).clone()
        g.m2 = cov.detach().to("cpu", torch.float64) * max(float(count) - 1.0, 1.0) if count > 0 else g.m2
        return g


# ---- reservoir -----------------------------------------------------------------------------------

class Reservoir:
    """A uniform sample of at most `capacity` rows of a stream (Algorithm R), seeded.

    The slots are drawn on the CPU from a seeded generator (so a capture samples the same tokens
    on any device); the rows live on the device of the first rows offered.
    """

    def __init__(self, capacity: int, dim: int, seed: int = 0, device=None):
        self.capacity, self.dim = int(capacity), dim
        self.seen = 0
        self.rows = torch.zeros(self.capacity, dim, dtype=torch.float32, device=device)
        self.generator = torch.Generator().manual_seed(seed)
        self._placed = device is not None

    @property
    def samples(self) -> torch.Tensor:
        """The kept rows [min(seen, capacity), d], on the CPU."""
        return self.rows[:min(self.seen, self.capacity)].cpu()

    def add(self, rows: torch.Tensor) -> None:
        """Offer rows [m,d] in order."""
        rows = rows.reshape(-1, self.dim)
        self.add_indexed(rows.shape[0], lambda idx: rows[idx.to(rows.device)], rows.device)

    def add_from(self, hidden: torch.Tensor, mask: torch.Tensor | None = None,
                 index: torch.Tensor | None = None) -> None:
        """Offer the real-token rows of hidden [B,T,d] in order: those where mask [B,T] is nonzero,
        or the flat row positions `index` (precomputed once per batch: no host sync per call)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        if index is None:
            index = torch.nonzero(mask.reshape(-1).to(flat.device) != 0).squeeze(1)
        self.add_indexed(int(index.numel()), lambda idx: flat[index[idx.to(index.device, non_blocking=True)]],
                         flat.device)

    def add_indexed(self, m: int, fetch, device=None) -> None:
        """Offer m rows; `fetch(indices)` returns the rows [k,d] at those positions of the offer."""
        if not self._placed and device is not None:
            self.rows = self.rows.to(device)
            self._placed = True
        if m <= 0 or self.capacity <= 0:
            self.seen += max(m, 0)
            return
        pos = torch.arange(m, dtype=torch.int64)
        index = self.seen + pos                                   # 0-based position in the stream
        # Algorithm R: row i < n fills slot i; later rows take slot j ~ U{0..i} if j < n.
        u = torch.rand(m, generator=self.generator, dtype=torch.float64)
        slot = torch.where(index < self.capacity, index, (u * (index + 1).double()).floor().long())
        keep = slot < self.capacity
        if keep.any():
            # rows later in the stream overwrite earlier ones in the same slot
            last = torch.full((self.capacity,), -1, dtype=torch.int64)
            last.scatter_reduce_(0, slot[keep], pos[keep], reduce="amax")
            slots = torch.nonzero(last >= 0).squeeze(1)
            kept = fetch(last[slots]).detach().to(self.rows.device, torch.float32)
            self.rows[slots.to(self.rows.device, non_blocking=True)] = kept
        self.seen += m

    def merge(self, other: "Reservoir") -> "Reservoir":
        """A uniform sample of the union of both streams, from the two uniform samples.

        Slot by slot, the next row comes from this stream with probability (its rows not yet
        drawn) / (rows of both not yet drawn): sampling without replacement from the union.
        """
        if other.dim != self.dim:
            raise ValueError(f"cannot merge reservoirs of width {other.dim} and {self.dim}")
        mine = self.samples[torch.randperm(self.samples.shape[0], generator=self.generator)]
        theirs = other.samples[torch.randperm(other.samples.shape[0], generator=self.generator)]
        left_a, left_b = self.seen, other.seen
        take = min(self.capacity, left_a + left_b)
        u = torch.rand(take, generator=self.generator, dtype=torch.float64).tolist()
        picked, ia, ib = [], 0, 0
        for draw in u:
            if draw * (left_a + left_b) < left_a:
                picked.append(mine[ia]); ia += 1; left_a -= 1
            else:
                picked.append(theirs[ib]); ib += 1; left_b -= 1
        rows = torch.zeros(self.capacity, self.dim, dtype=torch.float32)
        if picked:
            rows[:len(picked)] = torch.stack(picked)
        self.rows, self.seen = rows.to(self.rows.device), self.seen + other.seen
        return self


# ---- per-layer statistics ---------------------------------------------------------------------

@dataclass
class LayerActivations:
    """One layer's captured activations as priors and metrics read them: float32 moments and samples."""
    layer: int
    mean: torch.Tensor        # [d]
    cov: torch.Tensor         # [d,d] unbiased; shrunk (Ledoit–Wolf) when count <= d
    samples: torch.Tensor     # [n,d]
    count: float
    shrunk_cov: torch.Tensor  # [d,d] always Ledoit–Wolf shrunk: use for Mahalanobis distances
    shrinkage: float = float("nan")  # the δ of shrunk_cov = (1 − δ)·cov + δ·(tr cov / d)·I
    pooled: torch.Tensor | None = None
    max_mahalanobis: float | None = None  # over every captured token (None: statistics older than eptk-stats/4)
    _tril: torch.Tensor | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factor of the shrunk covariance, float32."""
        if self._tril is None:
            # psd_cholesky's default ridge (1e-6 of the mean variance): this factor is used in float32, whose
            # rounding a smaller ridge would not cover; metrics.DataGaussian stays in float64 and starts at 1e-10
            self._tril = linalg.psd_cholesky(self.shrunk_cov.double(), error=EptkUsageError).float()
        return self._tril

    def mahalanobis(self, x: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row of x [..., d] under N(mean, shrunk_cov), shape [...]."""
        return linalg.mahalanobis(x, self.scale_tril(), self.mean)


def layer_activations(layer: int, gaussian: RunningGaussian, reservoir: Reservoir,
                      pooled: torch.Tensor | None = None, max_mahalanobis: float | None = None) -> LayerActivations:
    samples = reservoir.samples.clone()
    raw = gaussian.covariance().cpu()
    delta = linalg.covariance_shrinkage(raw, gaussian.count, gaussian.mean.cpu(), samples)
    shrunk = linalg.shrink(raw, delta)
    cov = shrunk if gaussian.count <= gaussian.dim else raw
    return LayerActivations(layer=layer, mean=gaussian.mean.cpu().float(), cov=cov.float(), samples=samples,
                            count=gaussian.count, shrunk_cov=shrunk.float(), shrinkage=delta, pooled=pooled,
                            max_mahalanobis=max_mahalanobis)


class ActivationStats:
    """Activation statistics of one model on one text source, per layer (what `eptk capture` writes)."""

    def __init__(self, dim: int, layers: list[int], samples: int, seed: int = 0, meta: dict | None = None,
                 device=None):
        self.dim = dim
        self.gaussians = {l: RunningGaussian(dim, device) for l in layers}
        # each layer's reservoir has its own seeded stream, independent of which other layers ran
        self.reservoirs = {l: Reservoir(samples, dim, seed=seed * 1_000_003 + l, device=device) for l in layers}
        self.pooled_parts: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
        self.max_mahalanobis: dict[int, float] = {}  # layer -> over every token (set by a capture's second pass)
        self.meta = dict(meta or {})
        self._layer_cache: dict[int, LayerActivations] = {}

    @property
    def layers(self) -> list[int]:
        return sorted(self.gaussians)

    def pooled(self, layer: int) -> torch.Tensor:
        parts = self.pooled_parts[layer]
        if len(parts) != 1 or parts[0].device.type != "cpu":
            self.pooled_parts[layer] = [torch.cat([p.cpu() for p in parts]) if parts else torch.zeros(0, self.dim)]
        return self.pooled_parts[layer][0]

    def layer(self, layer: int) -> LayerActivations:
        if layer not in self.gaussians:
            raise EptkUsageError(f"no statistics for layer {layer}; captured layers: "
                                 f"{', '.join(map(str, self.layers))}")
        if layer not in self._layer_cache:
            self._layer_cache[layer] = layer_activations(layer, self.gaussians[layer], self.reservoirs[layer],
                                                         self.pooled(layer), self.max_mahalanobis.get(layer))
        return self._layer_cache[layer]

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Merge another capture of the same layers: Gaussians exactly, reservoirs as a uniform sample of both."""
        if other.dim != self.dim or other.layers != self.layers:
            raise ValueError("cannot merge statistics of different widths or layers")
        for l in self.layers:
            self.gaussians[l].merge(other.gaussians[l])
            self.reservoirs[l].merge(other.reservoirs[l])
            self.pooled_parts[l].append(other.pooled(l))
        self.max_mahalanobis.clear()  # a distance under the merged Gaussian needs another pass over the data
        self._layer_cache.clear()
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for l in self.layers:
            g, r = self.gaussians[l], self.reservoirs[l]
            out[f"layer{l}.mean"] = g.mean.cpu().float()
            out[f"layer{l}.cov"] = g.covariance().cpu().float()
            out[f"layer{l}.count"] = torch.tensor([g.count], dtype=torch.float64)
            out[f"layer{l}.samples"] = r.samples.float().contiguous()
            out[f"layer{l}.seen"] = torch.tensor([r.seen], dtype=torch.int64)
            out[f"layer{l}.pooled"] = self.pooled(l).float().contiguous()
            if l in self.max_mahalanobis:
                out[f"layer{l}.max_mahalanobis"] = torch.tensor([self.max_mahalanobis[l]], dtype=torch.float64)
        return out

    def save(self, folder) -> Path:
        """Write STATS_FILE and META_FILE as the folder `folder`, swapped in whole (`io.replace_folder`):
        a reader never sees the statistics of one capture with the metadata of another."""
        from .io import replace_folder, save_tensors_atomic, write_json_atomic

        meta = dict(self.meta)
        meta.setdefault("format", FORMAT)
        meta.setdefault("hidden_size", self.dim)
        meta["layers"] = self.layers
        meta.setdefault("excluded", EXCLUDED)
        meta.setdefault("eptk_version", __version__)
        meta["tokens"] = {str(l): self.gaussians[l].count for l in self.layers}
        self.meta = meta
        tensors = self.tensors()

        def fill(tmp):
            save_tensors_atomic(tmp / STATS_FILE, tensors, metadata={"format": FORMAT})
            write_json_atomic(tmp / META_FILE, meta)
        return replace_folder(folder, fill)

    @classmethod
    def load(cls, folder, model_name: str | None = None, hidden_size: int | None = None) -> "ActivationStats":
        """Read a folder written by `save`; refuses stats of another model when model_name is given."""
        from .io import load_tensors, read_json

        folder = Path(folder)
        meta = read_json(folder / META_FILE, "activation statistics metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list):
            raise EptkUsageError(f"{folder / META_FILE} is not eptk activation-statistics metadata "
                                 f"(no 'layers' list)")
        if model_name is not None or hidden_size is not None:
            check_model(meta, model_name, hidden_size)
        tensors = load_tensors(folder / STATS_FILE, "activation statistics")
        layers = [int(l) for l in meta["layers"]]
        required = ("mean", "cov", "count", "samples")
        missing = [f"layer{l}.{k}" for l in layers for k in required if f"layer{l}.{k}" not in tensors]
        if missing:
            raise EptkUsageError(f"{folder / STATS_FILE} lacks {', '.join(missing[:4])}"
                                 f"{' ...' if len(missing) > 4 else ''}; recapture with `eptk capture`")
        dim = int(tensors[f"layer{layers[0]}.mean"].shape[0]) if layers else int(meta.get("hidden_size", 0))
        samples = int(meta.get("samples", 0))
        stats = cls(dim, layers, samples, seed=int(meta.get("seed", 0)), meta=meta)
        for l in layers:
            mean, cov = tensors[f"layer{l}.mean"], tensors[f"layer{l}.cov"]
            if tuple(mean.shape) != (dim,) or tuple(cov.shape) != (dim, dim):
                raise EptkUsageError(f"{folder / STATS_FILE}: layer{l} has mean {tuple(mean.shape)} "
                                     f"and cov {tuple(cov.shape)}, expected ({dim},) and ({dim}, {dim})")
            count = float(tensors[f"layer{l}.count"].reshape(-1)[0])
            stats.gaussians[l] = RunningGaussian.from_moments(count, mean, cov)
            rows = tensors[f"layer{l}.samples"].float()
            res = Reservoir(max(samples, rows.shape[0]), dim, seed=int(meta.get("seed", 0)) * 1_000_003 + l)
            res.rows[:rows.shape[0]] = rows
            seen = tensors.get(f"layer{l}.seen")
            res.seen = int(seen.reshape(-1)[0]) if seen is not None else rows.shape[0]
            stats.reservoirs[l] = res
            pooled = tensors.get(f"layer{l}.pooled")
            stats.pooled_parts[l] = [pooled.float() if pooled is not None else torch.zeros(0, dim)]
            if f"layer{l}.max_mahalanobis" in tensors:
                stats.max_mahalanobis[l] = float(tensors[f"layer{l}.max_mahalanobis"].reshape(-1)[0])
        return stats


def is_stats_folder(path) -> bool:
    """Whether `path` holds activation statistics (both files of an `eptk capture` folder)."""
    return (Path(path) / STATS_FILE).is_file() and (Path(path) / META_FILE).is_file()


def check_model(meta: dict, model_name: str | None, hidden_size: int | None = None) -> None:
    """Refuse statistics captured from another model (or one of another width)."""
    theirs = meta.get("model")
    if model_name is not None and theirs is not None and theirs != model_name:
        raise EptkUsageError(f"activation statistics were captured from model {theirs!r}, not {model_name!r}; "
                             f"capture them for {model_name!r} with `eptk capture --model {model_name}`")
    width = meta.get("hidden_size")
    if hidden_size is not None and width is not None and int(width) != int(hidden_size):
        raise EptkUsageError(f"activation statistics have width {width} (model {theirs!r}) but model "
                             f"{model_name!r} has hidden size {hidden_size}")
