"""The claims' inputs, built from what the study's stages left in its directory: run directories (through
eptk.analysis.read / eptk.runs), captured statistics (eptk.analysis.read.load_stats) and trajectory tables
(eptk.analysis.write). No model is loaded. What is missing is listed, never an error.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import metrics as M
from ..analysis.measure import subsample_rows
from ..analysis.read import load_stats, read_run
from ..analysis.write import has_trajectories, read_trajectories
from ..errors import EptkUsageError
from ..io import in_cache
from ..runs import RunDir
from ..stats import is_stats_folder
from .claims import PAIRS, TunedRun, silhouette_test, slot_distance
from .stages import TASKS, Study


class Gathered:
    """Every input of the claims, read once; `missing[stage]` names what is not there yet."""

    def __init__(self, study: Study):
        self.study = study
        self.missing: dict[str, list[str]] = {}
        self.runs: dict[str, TunedRun] = {}  # name -> complete run
        self._stats: dict[str, object] = {}
        for stage in ("main", "transfer", "sink"):
            for run in study.stage_runs[stage]:
                tuned = self._read(run)
                if tuned is None:
                    self.missing.setdefault(stage, []).append(run.name)
                else:
                    self.runs[run.name] = tuned

    # ---- runs ----------------------------------------------------------------------------------
    def _read(self, run) -> TunedRun | None:
        path = self.study.run_dir(run)
        if not RunDir(path).is_complete():
            return None
        data = read_run(path)
        ev = data.eval or {}
        blocks = data.blocks()
        logged = data.metrics
        tuned = TunedRun(
            name=run.name, method=str(run.settings["method"]), prior=str(run.settings["prior"]),
            seed=int(run.settings["seed"]), layers=str(run.settings.get("layers", "")),
            task=str(run.settings["task"]),
            prior_tensors={b.name: b.prior for b in blocks if b.prior is not None},
            posterior_tensors={b.name: b.posterior for b in blocks if b.posterior is not None},
            score=(ev.get("tuned") or {}).get("score"), baseline=(ev.get("baseline") or {}).get("score"),
            losses=[(r["step"], r["loss"]) for r in logged if "loss" in r],
            val=[(r["step"], r["val_loss"]) for r in logged if r.get("val_loss") is not None],
            extra={"weight": float(run.settings.get("prior_weight", 0.0)),
                   "keep_sink": bool(run.settings.get("keep_sink", False)), "steps": data.config.get("steps"),
                   "prompt_mass": _mean_mass(ev.get("prefix_mass_other_slots")),
                   "sink_mass": _mean_mass(ev.get("prefix_mass_first_slot")),
                   "total_mass": _mean_mass(ev.get("prefix_mass")), "stats": data.config.get("stats") or {}})
        tuned.extra["displacement"] = displacement(tuned)
        return tuned

    def tuned(self, stage: str, **settings) -> list[TunedRun]:
        return [self.runs[r.name] for r in self.study.runs(stage, **settings) if r.name in self.runs]

    def missing_of(self, stage: str, **settings) -> list[str]:
        return [r.name for r in self.study.runs(stage, **settings) if r.name not in self.runs]

    # ---- the data region ------------------------------------------------------------------------
    def data_stats(self, run: TunedRun):
        """The task activations a run is placed against: the statistics it recorded (region priors),
        else the study's capture of its task family at seed 0; None when neither exists."""
        folders = [str(in_cache(f)) for f in run.extra["stats"].values()]
        base = run.task.split(":")[0]
        capture = next((c for c in self.study.captures() if c.task == base and c.seed == 0), None)
        if capture is not None:
            folders.append(str(self.study.capture_dir(capture)))
        for folder in folders:
            if folder not in self._stats:
                try:
                    self._stats[folder] = load_stats(folder) if is_stats_folder(folder) else None
                except EptkUsageError:
                    self._stats[folder] = None
            if self._stats[folder] is not None:
                return self._stats[folder]
        return None

    def inside_share(self, run: TunedRun) -> float | None:
        """Share of the posterior's vectors inside the data's 99% region at their layer (residual blocks)."""
        from ..methods import locate

        data = self.data_stats(run)
        if data is None:
            return None
        inside, count = 0.0, 0
        for name, post in run.posterior_tensors.items():
            layer, _ = locate(name)
            if layer not in data.layers:
                continue
            share = M.region_position(post, data.gaussian(layer))["inside_share"]
            inside += share * post.shape[0]
            count += post.shape[0]
        return inside / count if count else None

    # ---- captures (claim 4) ------------------------------------------------------------------------
    def cluster_rows(self, n_perm: int = 200) -> list[dict]:
        """One row per (capture seed, layer, task pair): silhouette and its permutation p on per-sequence mean
        activations (at most `max_sequences` per task), NC1 on the same points, Fréchet distance of the
        tasks' captured Gaussians."""
        rows, cap = [], self.study.scale.max_sequences
        for seed in self.study.scale.seeds:
            stats = {}
            for c in self.study.captures():
                if c.seed == seed and is_stats_folder(self.study.capture_dir(c)):
                    stats[c.task] = load_stats(self.study.capture_dir(c))
            if set(stats) != set(TASKS):
                continue
            layers = sorted(set.intersection(*(set(s.layers) for s in stats.values())))
            for layer in layers:
                pooled = {t: subsample_rows(stats[t].pooled(layer), cap, seed) for t in TASKS}
                for a, b in PAIRS:
                    if min(pooled[a].shape[0], pooled[b].shape[0]) < 2:
                        continue
                    sil, p = silhouette_test(pooled[a], pooled[b], n_perm=n_perm, seed=seed)
                    x = torch.cat([pooled[a], pooled[b]])
                    labels = [0] * pooled[a].shape[0] + [1] * pooled[b].shape[0]
                    rows.append({"seed": seed, "layer": layer, "pair": (a, b), "silhouette": sil, "p": p,
                                 "nc1": M.nc1(x, labels),
                                 "frechet": M.frechet_distance(stats[a].mean(layer), stats[a].covariance(layer),
                                                               stats[b].mean(layer), stats[b].covariance(layer))})
        return rows

    def missing_captures(self) -> list[str]:
        return [f"captures/{c.name}" for c in self.study.captures() if not is_stats_folder(self.study.capture_dir(c))]

    # ---- trajectories (claim 3) --------------------------------------------------------------------
    def trajectory_rows(self) -> tuple[list[dict], list[str]]:
        rows, missing = [], []
        for run in self.study.trajectory_runs():
            folder = self.study.trajectory_dir(run)
            if has_trajectories(folder):
                rows += read_trajectories(folder)
            else:
                missing.append(f"trajectories/{run.name}")
        return rows, missing

    # ---- claim 5 --------------------------------------------------------------------------------
    def transfer(self) -> tuple[list[TunedRun], list[TunedRun]]:
        """(fresh starts, posterior starts) of the transfer stage, complete ones."""
        fresh = self.tuned("transfer", prior="normal")
        warm = [self.runs[r.name] for r in self.study.stage_runs["transfer"]
                if self.study.source_of(r) is not None and r.name in self.runs]
        return fresh, warm


def displacement(run: TunedRun) -> float | None:
    """Mean over the run's blocks of the mean slot distance between posterior and prior."""
    values = [slot_distance(run.posterior_tensors[b], run.prior_tensors[b])
              for b in run.posterior_tensors if b in run.prior_tensors]
    return float(np.mean(values)) if values else None


def _mean_mass(mass) -> float | None:
    """The mean over layers and heads of an eval.json prefix-mass table ({layer: [per head]}), or None."""
    if not isinstance(mass, dict) or not mass:
        return None
    values = [float(v) for heads in mass.values() for v in (heads if isinstance(heads, list) else [heads])]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else None

