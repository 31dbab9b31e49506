"""The claims' inputs, built from what the study's stages left in its directory: run directories (through
eptk.analysis.read / eptk.runs), their per-item test predictions, captured statistics (eptk.analysis.read.load_stats)
and trajectory tables (eptk.analysis.write). What is missing is listed, never an error. Only claim 6's measures
load the model (`sink_measures`), once, and keep what they measured in <study>/measures/; claim 4's silhouettes
and each run's position against the data's region are kept there too, so that a report can be written again where
the statistics they came from (hundreds of MB, per machine) are not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..analysis.measure import subsample_rows
from ..analysis.read import load_stats, read_run
from ..analysis.write import has_trajectories, read_trajectories
from ..errors import EptkUsageError
from ..io import in_cache, read_json, write_json_atomic
from ..runs import RunDir, scores
from ..stats import is_stats_folder
from .budget import current_path
from .claims.base import TunedRun, slot_distance
from .seed_power import score_of, test_items
from .stages import TASKS, TOKEN_TASKS, Study

TRAINING_STAGES = ("main", "transfer", "sink", "converged", "ablation")
TOKENS_PER_TASK = 400            # claim 4: content tokens sampled per task, layer and seed
TOKEN_PAIRS = (("arith", "qa"), ("arith", "fill"), ("qa", "fill"), ("qa", "qa:b"), ("fill", "fill:b"))
SEQUENCE_PAIRS = (("arith", "qa"), ("arith", "fill"), ("qa", "fill"))


class Gathered:
    """Every input of the claims, read once; `missing_of(stage)` names what is not there yet."""

    def __init__(self, study: Study):
        self.study = study
        self.runs: dict[str, TunedRun] = {}  # name -> complete run
        self.paths: dict[str, Path] = {}     # name -> the folder it was read from
        self._stats: dict[str, object] = {}
        self._positions: dict[str, dict | None] = {}   # name -> position, measured or kept, once per report
        self._kept: dict | None = None                   # measures/positions.json, read when first needed
        for stage in TRAINING_STAGES:
            for run in study.stage_runs.get(stage, []):
                # claim 2's runs are read where they stand now: a finished continuation (RULES.md amendment 1)
                path = current_path(study.out, run.name) if stage == "converged" else study.run_dir(run)
                tuned = self._read(run, path)
                if tuned is not None:
                    self.runs[run.name], self.paths[run.name] = tuned, path

    # ---- runs ----------------------------------------------------------------------------------
    def _read(self, run, path: Path) -> TunedRun | None:
        if not RunDir(path).is_complete():
            return None
        data = read_run(path)
        ev = data.eval or {}
        blocks = data.blocks()
        baseline, _ = scores(ev)
        items, n_items = test_items(path)
        tuned = TunedRun(
            name=run.name, method=str(run.settings["method"]), prior=str(run.settings["prior"]),
            seed=int(run.settings["seed"]), layers=str(run.settings.get("layers", "")),
            task=str(run.settings["task"]), settings=dict(run.settings),
            prior_tensors={b.name: b.prior for b in blocks if b.prior is not None},
            posterior_tensors={b.name: b.posterior for b in blocks if b.posterior is not None},
            score=score_of(items, ev),
            baseline=baseline.get("score"), items=items,
            losses=[(r["step"], r["loss"]) for r in data.metrics if "loss" in r],
            val=val_curve(data.metrics),
            extra={"weight": float(run.settings.get("prior_weight", 0.0)), "eval": ev, "test_items": n_items,
                   "early_stop": ev.get("early_stop"), "budget": data.config.get("steps"),
                   "num_layers": data.config.get("num_layers"),
                   "stats": data.config.get("stats") or {},
                   "stats_samples": data.config.get("stats_samples")})
        tuned.extra["displacement"] = tuned.extra["source_displacement"] = displacement(tuned)
        return tuned

    def tuned(self, stage: str, **settings) -> list[TunedRun]:
        runs = [self.runs[r.name] for r in self.study.runs(stage, **settings) if r.name in self.runs]
        if stage == "converged":
            for run in runs:
                if "position" not in run.extra:
                    run.extra["position"] = self.position(run)
        return runs

    def missing_of(self, stage: str, **settings) -> list[str]:
        return [r.name for r in self.study.runs(stage, **settings) if r.name not in self.runs]

    # ---- the data region ------------------------------------------------------------------------
    def stats_folders(self, run: TunedRun) -> list[tuple[str, Path]]:
        """(label, folder) of the task activations a run is placed against, best first: the statistics it recorded
        (region priors, `stats/<key>` in eptk's cache), then the study's capture of its task family at seed 0
        (`captures/<name>`). Labels hold no folder of this machine."""
        folders = [(Path(f).as_posix() if not Path(f).is_absolute() else f"stats/{Path(f).name}", in_cache(f))
                   for f in run.extra["stats"].values()]
        base = run.task.split(":")[0]
        capture = next((c for c in self.study.captures() if c.task == base and c.seed == 0), None)
        if capture is not None:
            folders.append((f"captures/{capture.name}", self.study.capture_dir(capture)))
        return folders

    def _load(self, folder: Path):
        key = str(folder)
        if key not in self._stats:
            try:
                self._stats[key] = load_stats(key) if is_stats_folder(key) else None
            except EptkUsageError:
                self._stats[key] = None
        return self._stats[key]

    def position(self, run: TunedRun) -> dict | None:
        """Where the posterior's vectors sit against the data's 99% region at their layer (residual blocks):
        `inside_share` (share inside) and `distance` (median Mahalanobis distance over the region's radius).
        Measured with the best statistics on this machine and kept in measures/positions.json with their label and
        the posterior's digest; where none are here, or only worse ones, the kept position of the same posterior
        against better statistics is read back. None: neither."""
        if run.name in self._positions:
            return self._positions[run.name]
        folders = self.stats_folders(run)
        here = next(((i, label, stats) for i, (label, folder) in enumerate(folders)
                     if (stats := self._load(folder)) is not None), None)
        kept = self._kept_positions()["runs"].get(run.name)
        labels = [label for label, _ in folders]
        digest = posterior_digest(run)
        if kept and kept["posterior"] == digest and kept["statistics"] in labels \
                and (here is None or labels.index(kept["statistics"]) < here[0]):
            place = kept["position"]
        elif here is None:
            place = None
        else:
            place = measure_position(run, here[2])
            entry = {"statistics": here[1], "posterior": digest, "position": place}
            if kept != entry:
                self._kept_positions()["runs"][run.name] = entry
                write_json_atomic(self._positions_path(), self._kept_positions())
        self._positions[run.name] = place
        return place

    def _positions_path(self) -> Path:
        return self.study.out / "measures" / "positions.json"

    def _kept_positions(self) -> dict:
        if self._kept is None:
            path = self._positions_path()
            self._kept = read_json(path, "measures") if path.is_file() else {"runs": {}}
        return self._kept

    # ---- claim 4 ------------------------------------------------------------------------------------
    def _rows_per_seed(self, kind: str, captures, folder_of, tasks, rows_of, prefix: str):
        """(rows, missing): for each capture seed, `rows_of(seed, task -> statistics, their common layers)` where
        the seed has statistics of every one of `tasks`, kept in measures/<kind>.json; where its captures are not
        on disk (they are large, deterministic and not committed), the rows an earlier report kept for the same
        captures; otherwise its absent captures named as `prefix/<name>`."""
        path = self.study.out / "measures" / f"{kind}.json"
        kept = read_json(path, "measures") if path.is_file() else {}
        seeds = kept.setdefault("seeds", {})
        rows, missing, changed = [], [], False
        captures = list(captures)
        for seed in self.study.scale.seeds:
            mine = [c for c in captures if c.seed == seed]
            names = [c.name for c in mine]
            absent = [c for c in mine if not is_stats_folder(folder_of(c))]
            if not absent and {c.task for c in mine} == set(tasks):
                stats = {c.task: load_stats(folder_of(c)) for c in mine}
                layers = sorted(set.intersection(*(set(s.layers) for s in stats.values())))
                entry = {"captures": names, "rows": rows_of(seed, stats, layers)}
                changed |= seeds.get(str(seed)) != entry
                seeds[str(seed)] = entry
                rows += entry["rows"]
            elif seeds.get(str(seed), {}).get("captures") == names:
                rows += seeds[str(seed)]["rows"]
            else:
                missing += [f"{prefix}/{c.name}" for c in absent]
        if changed:
            write_json_atomic(path, kept)
        return rows, missing

    def token_rows(self) -> tuple[list[dict], list[str]]:
        """One row per (capture seed, layer, pair of TOKEN_PAIRS): the silhouette of the two tasks' content-token
        activations (TOKENS_PER_TASK sampled from each capture's reservoir); kept in measures/token-silhouettes.json."""
        def rows_of(seed, stats, layers):
            rows = []
            for layer in layers:
                sample = {t: subsample_rows(stats[t].samples(layer), TOKENS_PER_TASK, seed) for t in TOKEN_TASKS}
                rows += [{"seed": seed, "layer": int(layer), "pair": f"{a}-{b}",
                          "silhouette": silhouette(sample[a], sample[b])} for a, b in TOKEN_PAIRS]
            return rows
        return self._rows_per_seed("token-silhouettes", self.study.token_captures(), self.study.token_dir, TOKEN_TASKS,
                                   rows_of, "tokens")

    def cluster_rows(self, n_perm: int = 200) -> list[dict]:
        """Version 1's view: one row per (capture seed, layer, task pair): the silhouette of per-sequence mean
        activations and its permutation p; kept in measures/sequence-silhouettes.json."""
        cap = self.study.scale.max_sequences

        def rows_of(seed, stats, layers):
            rows = []
            for layer in layers:
                pooled = {t: subsample_rows(stats[t].pooled(layer), cap, seed) for t in TASKS}
                for a, b in SEQUENCE_PAIRS:
                    if min(pooled[a].shape[0], pooled[b].shape[0]) < 2:
                        continue
                    sil, p = silhouette_test(pooled[a], pooled[b], n_perm=n_perm, seed=seed)
                    rows.append({"seed": seed, "layer": int(layer), "pair": f"{a}-{b}", "silhouette": float(sil),
                                 "p": float(p)})
            return rows
        return self._rows_per_seed(f"sequence-silhouettes-{n_perm}", self.study.captures(), self.study.capture_dir,
                                   TASKS, rows_of, "captures")[0]

    # ---- claim 3 ------------------------------------------------------------------------------------
    def trajectory_rows(self) -> tuple[list[dict], list[str]]:
        """Every measured trajectory, with the seed of the run that generated it."""
        rows, missing = [], []
        for run in self.study.trajectory_runs():
            folder = self.study.trajectory_dir(run)
            if has_trajectories(folder):
                rows += [dict(r, seed=int(run.settings["seed"])) for r in read_trajectories(folder)]
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

    # ---- claim 6 --------------------------------------------------------------------------------
    def sink_measures(self, runs: list[TunedRun], n_prompts: int = 32) -> dict:
        """The unprompted model's attention mass on position 0 (mean over layers ≥ 1) and each run's replaced-state
        norm ratio (eptk.reproduce.sink_measures), measured once with the model and kept in measures/sink.json."""
        path = self.study.out / "measures" / "sink.json"
        kept = read_json(path, "measures") if path.is_file() else {"runs": {}}
        todo = [r for r in runs if r.name not in kept["runs"]]
        if "baseline_position0_mass" in kept and not todo:
            return kept
        from ..models import load_frozen
        from ..tasks import load_task
        from .sink_measures import position0_mass, replaced_norm_ratio

        loaded = load_frozen(self.study.model, "cpu")
        prompts = [e.prompt + e.answer for e in load_task("arith", 0).examples("test", n_prompts)]
        if "baseline_position0_mass" not in kept:
            masses = position0_mass(loaded.model, loaded.tokenizer, prompts)
            kept["position0_mass_by_layer"] = {str(k): v for k, v in masses.items()}
            kept["baseline_position0_mass"] = float(np.mean([v for k, v in masses.items() if k >= 1]))
        for run in todo:
            kept["runs"][run.name] = {"norm_ratio": replaced_norm_ratio(loaded.model, loaded.tokenizer, prompts,
                                                                        run.posterior_tensors)}
        write_json_atomic(path, kept)
        return kept


def val_curve(metrics: list[dict]) -> list[tuple[int, float]]:
    """(step, validation loss) in step order: the prior's row and the training rows, and the final row where no
    training row has its step (an early-stopped run's final row scores its best prompt, not the step it names)."""
    curve, final = {}, []
    for r in metrics:
        if r.get("val_loss") is None:
            continue
        if "loss" in r or r.get("step") == 0:
            curve[r["step"]] = r["val_loss"]
        else:
            final.append((r["step"], r["val_loss"]))
    for step, value in final:
        curve.setdefault(step, value)
    return sorted(curve.items())


def displacement(run: TunedRun) -> float | None:
    """Mean over the run's blocks of the mean slot distance between posterior and prior."""
    values = [slot_distance(run.posterior_tensors[b], run.prior_tensors[b])
              for b in run.posterior_tensors if b in run.prior_tensors]
    return float(np.mean(values)) if values else None


def measure_position(run: TunedRun, data) -> dict | None:
    """The posterior's vectors against `data`'s 99% region at their layer (Gathered.position); None: no block of
    the run is at a layer `data` holds."""
    from ..methods import locate

    inside, count, ratios = 0.0, 0, []
    for name, post in run.posterior_tensors.items():
        layer, _ = locate(name)
        if layer not in data.layers:
            continue
        gaussian = data.gaussian(layer)
        share = M.region_position(post, gaussian)["inside_share"]
        radius, _ = gaussian.radius(0.99)
        ratios += (gaussian.mahalanobis(post) / radius).tolist()
        inside += share * post.shape[0]
        count += post.shape[0]
    if not count:
        return None
    return {"inside_share": inside / count, "distance": float(np.median(ratios))}


def posterior_digest(run: TunedRun) -> str:
    """sha256 over the posterior's blocks (name, shape, float32 values) in name order: a kept position is read
    back only for the prompt it was measured on."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(run.posterior_tensors):
        t = run.posterior_tensors[name].detach().to(torch.float32).contiguous().cpu()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def silhouette(a: torch.Tensor, b: torch.Tensor) -> float:
    x = torch.cat([a, b]).double()
    return float(M.silhouette_from_distances(torch.cdist(x, x), np.array([0] * a.shape[0] + [1] * b.shape[0])))


def silhouette_test(a: torch.Tensor, b: torch.Tensor, *, n_perm: int = 200, seed: int = 0) -> tuple[float, float]:
    """Silhouette of two labelled point sets and its permutation p-value (labels shuffled)."""
    x = torch.cat([a, b]).double()
    dist = torch.cdist(x, x)  # once: each permutation only relabels
    labels = np.array([0] * a.shape[0] + [1] * b.shape[0])
    observed = M.silhouette_from_distances(dist, labels)
    rng = np.random.default_rng(seed)
    null = [M.silhouette_from_distances(dist, rng.permutation(labels)) for _ in range(n_perm)]
    return observed, (1 + sum(v >= observed - 1e-12 for v in null)) / (1 + n_perm)
