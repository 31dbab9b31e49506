"""`eptk analyze RUNS... --out DIR`: measure where the tuned prompts went (eptk/analysis.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import DEVICE_HELP, app


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Run directories, or folders searched for them (a run holds config.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for summary.csv/json, plots/ and report.html.")] = Path("analysis"),
    stats: Annotated[Optional[list[Path]], typer.Option("--stats", help="An `eptk capture` folder (repeatable): region metrics for runs "
                                                        "of its task; two or more tasks add task-cluster metrics.")] = None,
    no_vocab: Annotated[bool, typer.Option("--no-vocab", help="Skip loading models for the vocabulary-neighbour and collapse metrics.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write tables and report without figures.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Nearest vocabulary tokens listed per prompt vector.")] = 5,
    knn_k: Annotated[int, typer.Option("--knn-k", min=1, help="k of the kNN precision/recall/density/coverage.")] = 5,
    permutations: Annotated[int, typer.Option("--permutations", min=1, help="Permutations for the MMD and energy p-values.")] = 200,
    max_data: Annotated[int, typer.Option("--max-data", min=2, help="Captured samples per layer used for kNN, MMD and energy.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every subsample and permutation.")] = 0,
    tsne: Annotated[bool, typer.Option("--tsne", help="Task-cluster maps by t-SNE (scikit-learn) instead of PCA.")] = False,
    device: Annotated[str, typer.Option("--device", help=f"Where the runs' models load for the vocabulary metrics and trajectories: {DEVICE_HELP}.")] = "auto",
    trajectories: Annotated[int, typer.Option("--trajectories", min=0, help="Generate greedily with each complete run's prompt "
                                              "on N test prompts of its task and measure the trajectories at every prompted "
                                              "layer (trajectories.csv).")] = 0,
    trajectory_tokens: Annotated[int, typer.Option("--trajectory-tokens", min=2, help="Tokens generated per trajectory "
                                                   "(EOS does not stop them).")] = 16,
) -> None:
    """Analyze runs: displacement, vocabulary collapse, geometry, position against the data, task clusters."""
    from eptk.analysis import AnalysisOptions, analyze_runs

    options = AnalysisOptions(top_k=top_k, knn_k=knn_k, n_perm=permutations, max_data=max_data, seed=seed,
                              cluster_projection="tsne" if tsne else "pca", trajectories=trajectories,
                              trajectory_tokens=trajectory_tokens)
    analyze_runs(paths, out, stats=stats or (), vocab=None if no_vocab else "auto", plots=not no_plots, options=options,
                 device=device)
