"""Other models' verdicts beside this study's: `eptk reproduce --stages report --beside DIR` reads the
claims.json that the report stage wrote for another model (its --report-to folder) and gives the findings
one verdict column per model, naming each claim on which the models disagree."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import EptkUsageError
from .claims import NOT_MEASURED

HINT = "give the --report-to folder of `eptk reproduce --model M --stages report`"


def load_beside(folders, model: str) -> list[dict]:
    """[{model, folder, claims: {key: claim}}] for each folder, in the order given; a folder without a readable
    claims.json that names its model, or a model given twice (this study's included), is a usage error."""
    seen, loaded = {model}, []
    for folder in folders or ():
        folder = Path(folder)
        path = folder / "claims.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EptkUsageError(f"--beside {folder}: no claims.json there; {HINT}") from None
        except (OSError, ValueError) as error:
            raise EptkUsageError(f"--beside {folder}: claims.json cannot be read ({type(error).__name__}); "
                                 f"write it again with `eptk reproduce --stages report`") from None
        other = data.get("model") if isinstance(data, dict) else None
        claims = data.get("claims") if isinstance(data, dict) else None
        if not isinstance(other, str) or not isinstance(claims, list) or not all(
                isinstance(c, dict) and isinstance(c.get("claim"), str) and isinstance(c.get("verdict"), str)
                for c in claims):
            raise EptkUsageError(f"--beside {folder}: its claims.json names no model or no claims (an older eptk "
                                 f"wrote it?); write it again with `eptk reproduce --stages report`")
        if other in seen:
            raise EptkUsageError(f"--beside {folder}: model {other} already has a column; give each model once "
                                 f"(this study's model is {model})")
        seen.add(other)
        claims = [dict(c, statistics=_nan_for_null(c.get("statistics") or {})) for c in claims]
        loaded.append({"model": other, "folder": folder, "claims": {c["claim"]: c for c in claims}})
    return loaded


def _nan_for_null(value):
    """claims.json writes a non-finite number as null; read back, it is NaN again (printed as n/a)."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    return value


def link(entry: dict, out: Path) -> str:
    """The other model's FINDINGS.md relative to the report folder (no folder of this machine in the report)."""
    return Path(os.path.relpath(Path(entry["folder"]).absolute() / "FINDINGS.md", Path(out).absolute())).as_posix()


def disagreements(model: str, results: list[dict], beside: list[dict]) -> list[str]:
    """One sentence per claim that two models both measured and judged differently."""
    lines = []
    for r in results:
        verdicts = {model: r["verdict"]} | {b["model"]: b["claims"][r["claim"]]["verdict"]
                                            for b in beside if r["claim"] in b["claims"]}
        measured = {m: v for m, v in verdicts.items() if v != NOT_MEASURED}
        if len(set(measured.values())) > 1:
            said = "; ".join(f"{v} on {m}" for m, v in measured.items())
            lines.append(f"Claim {r['claim']}: the models disagree: {said}.")
    return lines
