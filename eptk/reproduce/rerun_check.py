"""`python -m eptk.reproduce.rerun_check RUN RERUN [--record FILE]`: how a committed study run trained again from its
config.json (`eptk tune --config RUN/config.json --out RERUN`) compares with it: both scores, the first validation
step at which the rerun departs from the run's curve, and whether the rerun's score lies within the 95% prediction
interval of the run's arm (its sibling folders of other seeds, each scored by its own evaluation: the noise the
study itself reports), and within their range. One JSON line; --record appends it to FILE (docs/findings/reruns.jsonl), with no path of this machine."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..errors import EptkUsageError
from ..runs import RunDir
from .claims.new_region import departs_at
from .gather import val_curve
from .inference import prediction_interval
from .seed_power import score_of

SEED = re.compile(r"-s\d+$")
MADE_BY = ("eptk", "eptk_commit", "torch", "cpu")   # what config.json's versions say of the code and machine


def tuned_score(run: Path) -> float | None:
    """The score of a run's own evaluation (eval.json, at its config's test size), None before it finished."""
    return score_of([], RunDir(run).eval())


def arm_scores(run: Path) -> list[float]:
    """The scores of the finished runs in RUN's folder that differ from it only in their seed (RUN among them)."""
    arm = SEED.sub("", run.name)
    siblings = [p for p in run.parent.iterdir() if SEED.search(p.name) and SEED.sub("", p.name) == arm]
    return sorted(s for s in map(tuned_score, siblings) if s is not None)


def check(run: Path, rerun: Path) -> dict:
    """The comparison of a run with its rerun (both finished)."""
    first, score = tuned_score(run), tuned_score(rerun)
    for path, value in ((run, first), (rerun, score)):
        if value is None:
            raise EptkUsageError(f"{path} is not a finished run with a score (no eval.json with a tuned score)")
    made, again = (RunDir(p).config().get("versions") or {} for p in (run, rerun))
    scores = arm_scores(run)
    # a rerun that is not bit for bit is one more draw of its arm: where 95% of them fall (its range of n seeds
    # holds one more only with probability (n - 1)/(n + 1))
    pi = prediction_interval(scores, bounds=(0.0, 100.0))
    return {"run": run.name, "score": first, "rerun_score": score,
            "departs_at": departs_at(val_curve(RunDir(run).metrics()), val_curve(RunDir(rerun).metrics())),
            "arm_runs": len(scores), "arm_range": [scores[0], scores[-1]],
            "within_range": scores[0] <= score <= scores[-1], "prediction_interval": [pi["lo"], pi["hi"]],
            "within_arm": pi["lo"] <= score <= pi["hi"],
            "made_by": {k: made.get(k) for k in MADE_BY}, "rerun_by": {k: again.get(k) for k in MADE_BY}}


RECORD = "reruns.jsonl"   # in a report's folder (rerun.sh: beside the study's runs folder)


def main(argv: list[str]) -> int:
    args = list(argv)
    record = None
    if "--record" in args:
        at = args.index("--record")
        record = Path(args[at + 1]) if at + 1 < len(args) else None   # FILE, named RECORD in a report's folder
        del args[at:at + 2]
        if record is None:
            args = []
    if len(args) != 2:
        print("usage: python -m eptk.reproduce.rerun_check RUN RERUN [--record FILE]", file=sys.stderr)
        return 2
    try:
        line = json.dumps(check(Path(args[0]), Path(args[1])))
    except EptkUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    if record is not None:
        with record.open("a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
