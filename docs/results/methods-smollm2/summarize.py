"""The table of README.md's "Methods on SmolLM2" from the runs in this folder (exact match on the 200 test
items with its 95% Wilson interval, statsmodels; validation loss at steps 25, 50 and 100; trainable parameters).

    python docs/results/methods-smollm2/summarize.py docs/results/methods-smollm2
"""
import json
import sys
from pathlib import Path

from statsmodels.stats.proportion import proportion_confint

METHODS = ["soft", "prefix", "ptuning", "prefix-mlp", "deep-lowrank"]


def row(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    tuned = json.loads((run / "eval.json").read_text())["tuned"]
    correct = round(tuned["score"] * tuned["n"] / 100)
    low, high = proportion_confint(correct, tuned["n"], alpha=0.05, method="wilson")
    val = {r["step"]: r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "val_loss" in r}
    return (f"| `{config['method']}` | {config['parameters']:,} | {tuned['score']:.1f} "
            f"[{100 * low:.1f}, {100 * high:.1f}] | " + " / ".join(f"{val[s]:.2f}" for s in (25, 50, 100)) + " |")


def main(folder: Path) -> None:
    print("| method | trainable parameters | exact match, % (95% Wilson) | validation loss at 25 / 50 / 100 |")
    print("|---|---|---|---|")
    for name in METHODS:
        print(row(folder / name))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
