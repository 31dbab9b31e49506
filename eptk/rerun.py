"""What a rerun (`eptk tune --config RUN/config.json`) can tell about repeating RUN before it trains: whether the
prompt it starts from equals RUN's prior.safetensors. On a machine that computes as RUN's did it does, and the
rerun repeats RUN bit for bit; elsewhere float rounding (region statistics captured again differ in their last
digits) changes the start, and training amplifies the change (docs/findings/HOW.md measured a 150-step run
going from 68% to 78%), so the user is told before the run, not after its score."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import EXECUTION_ONLY
from .errors import EptkUsageError
from .runs import PRIOR, RunDir

# options that may be given with --config without changing the prompt a run starts from
KEEPS_START = {"out", "steps", *EXECUTION_ONLY}


def reference_run(config: Path, given) -> Path | None:
    """RUN, the folder of the config.json being rerun, when the options given with it keep its start and RUN kept
    its prior; else None (nothing to compare)."""
    folder = Path(config).parent
    if set(given) - KEEPS_START or not (folder / PRIOR).is_file():
        return None
    return folder


def start_note(start: dict[str, torch.Tensor], reference: Path, versions: dict) -> str | None:
    """One line comparing the rerun's starting prompt with RUN's prior (None when they cannot be compared: other
    tensors, other shapes); `versions` is the rerun's own config.json entry, set against RUN's."""
    try:
        before = RunDir(reference).tensors("prior")
    except EptkUsageError as exc:  # an unreadable prior is the run's problem, not the rerun's: say so and go on
        return f"rerun of {reference}: nothing to compare its start with ({exc})"
    if before.keys() != start.keys() or any(before[k].shape != start[k].shape for k in start):
        return None
    if all(torch.equal(before[k].cpu(), start[k].cpu()) for k in start):
        return f"rerun of {reference}: it starts from the run's prior exactly"
    gap = max(float((before[k].cpu().double() - start[k].cpu().double()).abs().max()) for k in start)
    scale = max(float(before[k].double().abs().max()) for k in before)
    return (f"rerun of {reference}: it starts from a prior that differs from the run's by up to {gap:.3g} "
            f"({gap / scale:.2g} of its largest entry; {_why(versions, RunDir(reference).config().get('versions'))}): "
            f"training amplifies such differences, so expect a score within the run's seed-to-seed spread, "
            f"not the same one")


def _why(now: dict, then) -> str:
    """What differs between the code and machine that made the run and the rerun's, as far as the run recorded."""
    then = then if isinstance(then, dict) else {}
    differ = [f"{what} {then[key]}, now {now[key]}" for key, what in
              (("eptk_commit", "the run's eptk"), ("torch", "its torch"), ("cpu", "its CPU"))
              if then.get(key) and now.get(key) and then[key] != now[key]]
    if differ:
        return "; ".join(differ)
    if not (then.get("eptk_commit") and then.get("cpu")):  # runs made before 027d96f record neither
        return "the run records no eptk commit or CPU to compare: other code or other float rounding"
    return "the same eptk commit, torch and CPU: other float rounding (another thread count, say)"
