"""`python -m eptk.reproduce.continuations MODEL STUDY_FOLDER`: the continuations the round under way asks of a study
folder's claim-2 runs (RULES.md amendment 1), one `FROM TO STEPS` line each, in the study's seed-major order;
docs/findings/background/extend.sh trains them. Apart from budget.py, which the stage's seed rule reads (budget ->
stages -> seed_power -> budget would be a circle)."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EptkUsageError
from ..models import check_model_name
from .budget import to_continue
from .stages import Study


def main(argv: list[str]) -> int:
    """Print `FROM TO STEPS` for each continuation the round asks of a study folder's claim-2 runs."""
    if len(argv) != 2:
        print("usage: python -m eptk.reproduce.continuations MODEL STUDY_FOLDER", file=sys.stderr)
        return 2
    model, out = argv[0], Path(argv[1])
    try:  # a wrong name or folder would otherwise list nothing, as if the round were done
        check_model_name(model)
        if not out.is_dir():
            raise EptkUsageError(f"study folder {out} does not exist (the --out of `eptk reproduce`)")
    except EptkUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    study = Study.build(model, out)
    budget, todo = to_continue(out, [r.name for r in study.stage_runs["converged"]], study.scale.converged["steps"])
    print(f"# round budget {budget}: {len(todo)} run(s) to continue", file=sys.stderr)
    for source, dest, steps in todo:
        print(f"{source} {dest} {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
