"""The study's claims, one module each (docs/findings/RULES.md, version 2). Importing the package registers every
module in it, so a new claim is one new file here: a `Claim` with its text, its one-line rule, `measure(g)` (the
claim's statistics and verdict from what the study gathered, or "not measured") and `draw(result, folder)`."""
from __future__ import annotations

import importlib
import pkgutil

from .base import CLAIMS, FAILS, HOLDS, NOT_MEASURED, UNSURE, Claim, TunedRun, not_measured, register, result

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CLAIMS", "Claim", "FAILS", "HOLDS", "NOT_MEASURED", "TunedRun", "UNSURE", "not_measured", "register",
           "result", "measure_claims"]


def measure_claims(g, **options) -> list[dict]:
    """Every registered claim measured on what the study holds, in claim order."""
    results = []
    for key in sorted(CLAIMS, key=lambda k: (len(k), k)):
        r = CLAIMS[key].measure(g, **options)
        r.setdefault("missing", [])
        results.append(r)
    return results
