"""Issue 25's sensitivity measurement: how much a relative change of about 1e-7 in the prior (`--prior-jitter
1e-7`) moves a run, against the same run with `--prior-jitter 0`, seed by seed.

Reads <folder>/j0/<run>-s<seed>/ and <folder>/j1e-7/<run>-s<seed>/ (eval.json, predictions.jsonl,
posterior.safetensors, metrics.jsonl) and prints a Markdown table and summary:

    python docs/findings/sensitivity/summarize.py docs/findings/sensitivity > docs/findings/sensitivity/RESULTS.md

Per seed: each arm's exact match on the test items, their difference, the share of items whose correctness
differs between the arms and McNemar's exact test on them (are the two runs' scores different beyond which
items they happen to get right?), how far the posteriors moved apart, the final training losses. Over seeds:
a t interval (scipy) of the signed difference, the mean absolute difference, and the seed-to-seed spread of
the unjittered runs for scale.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy import stats

ARMS = ("j0", "j1e-7")


def runs_by_seed(arm: Path) -> dict[int, Path]:
    found = {}
    for run in sorted(arm.glob("*-s*")):
        match = re.search(r"-s(\d+)$", run.name)
        if match and (run / "eval.json").is_file():
            found[int(match.group(1))] = run
    return found


def correct(run: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return np.array([row["exact_match"] for row in sorted(rows, key=lambda r: r["index"])], dtype=float)


def gap(a: Path, b: Path, file: str) -> float:
    """The largest relative difference between two runs' prompts (prior or posterior), block by block (|a - b| / |a|)."""
    pa, pb = load_file(str(a / file)), load_file(str(b / file))
    return max(float(np.linalg.norm(pa[k] - pb[k]) / np.linalg.norm(pa[k])) for k in pa)


def final_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return float(rows[-1]["loss"])


def main(folder: Path) -> str:
    arms = {arm: runs_by_seed(folder / arm) for arm in ARMS}
    seeds = sorted(set(arms["j0"]) & set(arms["j1e-7"]))
    lines = ["| seed | exact match, jitter 0 | exact match, jitter 1e-7 | difference (points) | items that differ "
             "| McNemar p | prior gap | posterior gap | final train loss (0 / 1e-7) |", "|---|---|---|---|---|---|---|---|---|"]
    diffs, plain = [], []
    for seed in seeds:
        a, b = arms["j0"][seed], arms["j1e-7"][seed]
        ca, cb = correct(a), correct(b)
        assert len(ca) == len(cb), (a, b)
        only_a, only_b = int(((ca == 1) & (cb == 0)).sum()), int(((ca == 0) & (cb == 1)).sum())
        p = stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        diff = 100 * (cb.mean() - ca.mean())
        diffs.append(diff)
        plain.append(100 * ca.mean())
        lines.append(f"| {seed} | {100 * ca.mean():.1f} % | {100 * cb.mean():.1f} % | {diff:+.1f} | "
                     f"{only_a + only_b} of {len(ca)} ({only_a} lost, {only_b} gained) | {p:.3g} | "
                     f"{gap(a, b, 'prior.safetensors'):.2e} | {gap(a, b, 'posterior.safetensors'):.2e} | {final_loss(a):.4f} / {final_loss(b):.4f} |")
    out = [f"Seeds measured: {len(seeds)} (each arm's runs: {', '.join(f'{k} {len(v)}' for k, v in arms.items())}).",
           "", *lines, ""]
    if len(seeds) >= 2:
        d = np.array(diffs)
        sem = stats.sem(d)
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sem) if sem > 0 else (d.mean(), d.mean())
        out += [f"Difference (jitter 1e-7 minus jitter 0), mean over seeds: {d.mean():+.1f} points, 95% t interval "
                f"[{lo:+.1f}, {hi:+.1f}] ({len(d)} seeds); mean absolute difference {np.abs(d).mean():.1f} points "
                f"(largest {np.abs(d).max():.1f}).",
                f"For scale, the unjittered runs' exact match across seeds: {min(plain):.1f}-{max(plain):.1f} % "
                f"(standard deviation {np.std(plain, ddof=1):.1f} points)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)), end="")
