"""When the study's rules and runs were committed, from git: the commit that introduced the rules the report applies,
and whether each run it reads was committed after them ("unknown" outside a git repository)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from ..runs import EVAL

RULES_VERSION = 2
RULES_FILE = "docs/findings/RULES.md"
RULES_HEADER = f"^# Decision rules for `eptk reproduce`, version {RULES_VERSION}$"
# Amendments to this version: header (a regex on RULES.md) -> what they change
AMENDMENTS = {"^## Amendment 1 ": "amendment 1 (claim 2's training budget)"}


def _git(top: Path, *args) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(top), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def repository(folder: Path) -> Path | None:
    top = _git(Path(folder), "rev-parse", "--show-toplevel") if Path(folder).is_dir() else None
    return Path(top) if top else None


def rules_commit(top: Path, header: str = RULES_HEADER) -> str | None:
    """'<hash> <date>' of the first commit whose RULES.md carries `header` (this version's, or an amendment's)."""
    found = _git(top, "log", "--reverse", "--format=%H %cI", "-G", header, "--", RULES_FILE)
    return found.splitlines()[0] if found else None


def committed(top: Path, path: Path) -> str | None:
    """'<hash> <date>' of the commit that first added `path` (None when it is not committed)."""
    try:
        inside = Path(path).resolve().relative_to(Path(top).resolve())
    except ValueError:
        return None  # a run outside the repository (a study folder elsewhere) is not committed there
    found = _git(top, "log", "--diff-filter=A", "--format=%H %cI", "--", str(inside))
    return found.splitlines()[-1] if found else None


def record(folder: Path, runs_by_group: dict[str, list[Path]],
           amended: dict[str, dict[str, list[Path]]] | None = None) -> dict:
    """{"rules": hash + date or "unknown", "groups": {group: {"runs", "after_rules", "before_rules",
    "not_committed"}}, "amendments": {header: {"name", "rules", "groups"}}}, each run judged by the commit that added
    its eval.json; the runs of `amended` (amendment header -> {group: runs}) by that amendment's commit."""
    top = repository(folder)
    rules = rules_commit(top) if top else None
    if not rules:
        return {"rules": "unknown", "groups": {g: "unknown" for g in runs_by_group}}
    out = {"rules": rules, "groups": _judged(top, rules, runs_by_group)}
    for header, groups in (amended or {}).items():
        commit = rules_commit(top, header)
        out.setdefault("amendments", {})[header] = {
            "name": AMENDMENTS[header], "rules": commit or "not committed",
            "groups": _judged(top, commit, groups) if commit else {g: "unknown" for g in groups}}
    return out


def _judged(top: Path, rules: str, runs_by_group: dict[str, list[Path]]) -> dict:
    rules_hash = rules.split()[0]
    out = {}
    for group, runs in runs_by_group.items():
        counts = {"runs": len(runs), "after_rules": 0, "before_rules": 0, "not_committed": 0}
        for run in runs:
            added = committed(top, Path(run) / EVAL)
            if added is None:
                counts["not_committed"] += 1
                continue
            run_hash = added.split()[0]
            after = run_hash != rules_hash and _git(top, "merge-base", "--is-ancestor", rules_hash, run_hash) is not None
            counts["after_rules" if after else "before_rules"] += 1
        out[group] = counts
    return out


def _counts(groups: dict, what: str) -> str:
    parts = []
    for group, c in groups.items():
        if c == "unknown":
            continue
        parts.append(f"{group}: {c['after_rules']} of {c['runs']} runs committed after {what}"
                     + (f", {c['before_rules']} before" if c["before_rules"] else "")
                     + (f", {c['not_committed']} not committed" if c["not_committed"] else ""))
    return "; ".join(parts)


def describe(rec: dict) -> str:
    if rec["rules"] == "unknown":
        return "Rules commit: unknown (the study folder is not in a git repository that holds docs/findings/RULES.md)."
    rules_hash, date = rec["rules"].split()
    text = (f"Rules: version {RULES_VERSION} ({RULES_FILE}), introduced by commit {rules_hash[:10]} ({date}). "
            + _counts(rec["groups"], "the rules") + ".")
    for amendment in rec.get("amendments", {}).values():
        if amendment["rules"] == "not committed":
            text += f" Its {amendment['name']}: not in this repository's history."
            continue
        commit, when = amendment["rules"].split()
        text += (f" Its {amendment['name']} was introduced by commit {commit[:10]} ({when})"
                 + (": " + _counts(amendment["groups"], "it") if amendment["groups"] else "") + ".")
    return text
