"""Measuring runs: one summary row per run × prompt block (the columns are eptk/analysis/columns.py),
per-slot vocabulary neighbours, PCA panels, and the task-cluster metrics of several tasks' statistics.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import metrics as M
from ..config import check_setting
from ..errors import check_range
from ..metrics import subsample_rows
from ..spaces import RESIDUAL, capture_space
from .columns import SUMMARY_COLUMNS, BlockView, RunView, block_values, run_values
from .read import Block, RunData, TaskActivations, VocabCache
from .trajectories import TRAJECTORY_TOKENS


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
    trajectories: int = 0      # test prompts per run whose generated trajectories are measured (0: none)
    trajectory_tokens: int = TRAJECTORY_TOKENS  # tokens generated per trajectory (EOS does not stop them)

    def validate(self) -> None:
        """Each option inside its range (the CLI's names), before anything is read or written."""
        for name, value, lowest, highest in (("--top-k", self.top_k, 1, 1000), ("--knn-k", self.knn_k, 1, 1000),
                                             ("--permutations", self.n_perm, 1, 10**6),
                                             ("--max-data", self.max_data, 2, 10**7)):
            check_range(name, value, lowest, highest)
        for name in ("seed", "trajectories", "trajectory_tokens"):
            check_setting(name, getattr(self, name))


def _match_stats(run: RunData, stats: Sequence[TaskActivations]) -> dict[str, TaskActivations]:
    """The statistics of the run's task and model, by captured space (activation, key, value): the first of each."""
    task, model = run.config.get("task"), run.config.get("model")
    matched: dict[str, TaskActivations] = {}
    for s in stats:
        if s.task == task and (s.model is None or model is None or s.model == model):
            matched.setdefault(s.space, s)
    if not matched and any(s.task == task for s in stats):
        run.notes.append(f"activation statistics for task {task!r} were captured on another model; region metrics skipped")
    return matched


def analyze_run(run: RunData, *, vocabs: VocabCache, stats: Sequence[TaskActivations], opts: AnalysisOptions,
                pca_cache: dict | None = None):
    """Rows (one per block), per-slot neighbour details and PCA panels for one run."""
    pca_cache = {} if pca_cache is None else pca_cache
    base = run_values(RunView(run))
    matched = _match_stats(run, stats)
    blocks = run.blocks()
    if blocks and not run.posterior:
        run.notes.append("no posterior.safetensors yet: prior metrics only")
    rows, details, panels = [], {}, []
    for block in blocks:
        view = _block_view(run, block, vocabs, matched, opts)
        rows.append({**dict.fromkeys(SUMMARY_COLUMNS), **base, **block_values(view)})
        block_details = {name: _neighbour_details(vectors.neighbours)
                         for name, vectors in (("prior", view.prior), ("posterior", view.post))
                         if vectors is not None and vectors.neighbours is not None}
        if block_details:
            details[block.name] = block_details
        panels.append(_pca_panel(block, view.reference, view.ref_kind, opts, pca_cache))
    if not blocks:
        run.notes.append("no prior.safetensors or posterior.safetensors yet")
        rows.append({**dict.fromkeys(SUMMARY_COLUMNS), **base})
    return rows, details, panels


def _block_view(run: RunData, block: Block, vocabs: VocabCache, matched: TaskActivations | None,
                opts: AnalysisOptions) -> BlockView:
    """What one block is measured against; why a reference is missing becomes a run note."""
    cfg = run.config
    dim = (block.prior if block.prior is not None else block.posterior).shape[1]
    found = {"opts": opts}
    if block.space == "embedding":
        vocab = vocabs.get(cfg.get("model"))
        if vocab is not None and vocab.embeddings.shape[1] != dim:
            run.notes.append(f"vocabulary of {cfg.get('model')!r} has dimension {vocab.embeddings.shape[1]}, "
                             f"the soft prompt {dim}: vocabulary metrics skipped")
            vocab = None
        if vocab is not None:
            found.update(vocab=vocab, threshold=vocabs.threshold(cfg.get("model"), vocab, opts.collapse_quantile, opts.seed),
                         reference=vocab.embeddings, ref_kind="vocabulary")
    space = capture_space(block.space)   # a prefix's keys (values) are measured against the task's captured keys (values)
    data = matched.get(space)
    if data is not None and block.layer in data.layers:
        if data.dim == dim:
            full = data.samples(block.layer)
            found.update(data_task=data.task, data=data.gaussian(block.layer),
                         sample=data.sample(block.layer, opts.max_data, opts.seed))
            if "reference" not in found and full.shape[0] > 0:
                found.update(reference=full, ref_kind="data")
        else:
            run.notes.append(f"{block.name}: statistics in {data.path} have dimension {data.dim}, "
                             f"the prompt {dim}: region metrics skipped")
    elif data is not None:
        run.notes.append(f"{block.name}: no captured statistics for layer {block.layer} in {data.path}")
    elif matched and space not in RESIDUAL:
        note = (f"{block.space} blocks: no captured {block.space} statistics of task {cfg.get('task')!r} (eptk capture "
                f"--space {block.space}): their region metrics skipped")
        if note not in run.notes:
            run.notes.append(note)
    return BlockView(block, **found)


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

    ref_pts = project(subsample_rows(reference, opts.max_reference, opts.seed)) if reference is not None else None
    return {"title": f"{block.name} (layer {block.layer})", "reference": ref_pts,
            "reference_label": {"vocabulary": "vocabulary", "data": "task activations" if block.space in RESIDUAL
                                else f"task {block.space}s"}.get(ref_kind, ""),
            "prior": project(block.prior), "posterior": project(block.posterior), "explained": pca["explained"],
            "fit_on": ref_kind or "prior + posterior"}


def task_cluster_metrics(stats: Sequence[TaskActivations], *, max_per_task: int = 500, seed: int = 0,
                         projection: str = "pca"):
    """Per model and layer shared by two or more tasks: silhouette and NC1 of the task clusters
    (on up to `max_per_task` captured samples each), Fréchet distance between each task pair's
    Gaussians, and 2-D PCA maps of the samples. Returns (task_rows, frechet_rows, map_panels)."""
    groups: dict[tuple, list[TaskActivations]] = {}
    for s in stats:  # tasks are compared within one model and one captured space (keys with keys)
        groups.setdefault((s.model, s.space), []).append(s)
    task_rows, frechet_rows, panels = [], [], []
    for (model, space), group in groups.items():
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
                    frechet_rows.append({"model": model, "layer": layer, "space": space, "task_a": a, "task_b": b,
                                         "frechet": M.frechet_distance(sa.mean(layer), sa.covariance(layer),
                                                                       sb.mean(layer), sb.covariance(layer))})
            samples = [by_task[t].samples(layer) for t in tasks]
            if any(x.shape[0] < 2 for x in samples):
                continue
            n = min(max_per_task, *(x.shape[0] for x in samples))
            xs = [subsample_rows(x, n, seed) for x in samples]
            x = torch.cat(xs)
            labels = [t for t, part in zip(tasks, xs) for _ in range(part.shape[0])]
            task_rows.append({"model": model, "layer": layer, "space": space, "tasks": ";".join(tasks), "n_per_task": n,
                              "silhouette": M.silhouette(x, labels), "nc1": M.nc1(x, labels)})
            title = f"layer {layer}" + ("" if space == "activation" else f" {space}s") + \
                (f" ({model})" if len({m for m, _ in groups}) > 1 else "")
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
