"""Claim 4: arithmetic is apart from the NLP tasks, and QA and fill-in share a cluster (RULES.md, claim 4): the
silhouettes of content-token activations (template tokens excluded) per layer, against a template null (a task
against itself under another template); version 1's per-sequence means kept as a second, labelled view."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .base import FAILS, HOLDS, UNSURE, Claim, not_measured, partial, register, result

HOLDS_SHARE, FAILS_SHARE = 0.75, 0.25


def layer_table(rows: list[dict]) -> list[dict]:
    """Per layer: each pair's silhouette (mean over capture seeds), and whether arith is apart and qa–fill within
    the template null there."""
    by_layer = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_layer[r["layer"]][r["pair"]].append(r["silhouette"])
    table = []
    for layer in sorted(by_layer):
        s = {pair: float(np.mean(v)) for pair, v in by_layer[layer].items()}
        needed = ("arith-qa", "arith-fill", "qa-fill", "qa-qa:b", "fill-fill:b")
        if not all(k in s for k in needed):
            continue
        null = max(s["qa-qa:b"], s["fill-fill:b"])
        table.append({"layer": layer, **{k: s[k] for k in needed}, "template_null": null,
                      "arith_apart": s["arith-qa"] > s["qa-fill"] and s["arith-fill"] > s["qa-fill"],
                      "qa_fill_within_null": s["qa-fill"] <= null})
    return table


def decide(table: list[dict]) -> tuple[str, str, dict]:
    if not table:
        return UNSURE, "no layer with every pair", {}
    apart = float(np.mean([r["arith_apart"] for r in table]))
    within = float(np.mean([r["qa_fill_within_null"] for r in table]))
    stats = {"arith_apart_share": apart, "qa_fill_within_null_share": within, "layers": len(table)}
    text = f"arith apart in {apart:.0%} of layers; qa–fill within the template null in {within:.0%}"
    if apart >= HOLDS_SHARE and within >= HOLDS_SHARE:
        return HOLDS, text, stats
    if apart < FAILS_SHARE or within < FAILS_SHARE:
        return FAILS, text, stats
    return UNSURE, text, stats


SEQUENCE_PERMUTATIONS = 200   # version 1's view, as version 1 computed it


def measure(g, **_) -> dict:
    rows, missing = g.token_rows()
    sequence = g.cluster_rows(n_perm=SEQUENCE_PERMUTATIONS)
    if not rows:
        return not_measured(CLAIM, missing)
    table = layer_table(rows)
    verdict, why, stats = decide(table)
    seq_table = []
    if sequence:
        by = defaultdict(list)
        for r in sequence:
            by[(r["layer"], r["pair"])].append(r["silhouette"])
        seq_table = [{"layer": layer, "pair": pair, "silhouette": float(np.mean(v))}
                     for (layer, pair), v in sorted(by.items())]
        stats["sequence_mean_view"] = {pair: float(np.mean([r["silhouette"] for r in seq_table if r["pair"] == pair]))
                                       for pair in dict.fromkeys(r["pair"] for r in seq_table)}
    return partial(result(CLAIM, stats, verdict, why, {"table": table, "sequence_table": seq_table}), missing)


def draw(res: dict, folder):
    from ..figures import silhouettes_plot

    fig = res.get("figure") or {}
    return [silhouettes_plot(fig["table"], folder / "claim4.png")] if fig.get("table") else []


CLAIM = register(Claim(
    key="4", text="Distant tasks (arithmetic vs NLP) form distinct activation clusters; NLP tasks (QA, fill-in) share "
                  "one.",
    rule="on content-token activations per layer: holds if arith is farther from both qa and fill than qa is from "
         "fill (silhouettes) in ≥ 75% of layers and qa–fill is within the template null (the larger silhouette of "
         "a task against itself under another template) in ≥ 75%; does not hold if either share is < 25%; "
         "else inconclusive",
    measure=measure, draw=draw))
