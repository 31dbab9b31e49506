"""Mutation testing of the modules whose bugs would be silent, each against the tests that cover it (mutmut).

    python benchmarks/mutation.py                       # every module below, one at a time
    python benchmarks/mutation.py eptk/linalg.py        # one module (make mutation MODULE=eptk/linalg.py)
    python benchmarks/mutation.py --report              # only rewrite the report from the last runs
    python benchmarks/mutation.py eptk/stats.py --collect-partial 2026-12-02T18:09   # a stopped run's results so far
    python benchmarks/mutation.py eptk/metrics.py --resume  # a stopped run continued: only its mutants not run

Each module runs in its own scratch copy of the package under .mutation/<module>/ (mutmut mutates a copy and
puts it first on sys.path; the copy lays kernels/ and cli/ out as eptk/kernels and eptk/cli, so the modules keep
the names the tests import them by). Results: benchmarks/results/mutation-<module>.json (every mutant's status,
each survivor's diff and triage) and benchmarks/results/mutation.md (the score per module). A survivor is
either killed by a new test (then it no longer survives) or listed in benchmarks/mutation_equivalents.toml as
an equivalent mutant with the reason; the score is killed / (mutants − equivalent ones).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.toml"
SCRATCH = ROOT / ".mutation"
GOAL = 0.85

PATCH_TEST = "tests/test_seed_power.py::test_the_frozen_checkouts_patch_carries_main_s_rule"
# module -> the narrowest test selection that covers it (pytest node ids, relative to the repository)
MODULES = {
    "eptk/linalg.py": ["tests/test_linalg.py"],
    "eptk/metrics.py": ["tests/test_metrics.py"],
    "eptk/priors/region.py": ["tests/test_region_priors.py", "-m", "not slow"],  # not the SmolLM2 case
    "eptk/stats.py": ["tests/test_stats.py", "tests/test_capture.py"],
    "eptk/spaces.py": ["tests/test_spaces.py"],
    "eptk/reproduce/inference.py": ["tests/test_inference.py"],
    # which claim-2 runs are continued, to what budget, and when an arm grows: a silent bug trains the wrong runs
    # (not the test that the frozen checkouts' patch carries these modules: any mutant differs from the patch)
    "eptk/reproduce/budget.py": ["tests/test_budget.py", "tests/test_seed_power.py", "--deselect", PATCH_TEST],
    "eptk/reproduce/seed_power.py": ["tests/test_seed_power.py", "--deselect", PATCH_TEST],
    # claim 2's verdict: which arms are compared, what each arm's summary reads, when it is not measured
    "eptk/reproduce/claims/new_region.py": ["tests/test_claims.py", "tests/test_claim2_measure.py"],
    "kernels/reference.py": ["tests/test_reference.py"],
}
# where each top-level source folder sits in the scratch copy (the package layout pyproject.toml maps)
LAYOUT = {"eptk": "eptk", "kernels": "eptk/kernels", "cli": "eptk/cli"}
KILLED = {"killed", "timeout", "segfault"}  # a mutant the tests detected (a hang or a crash is detected too)
NOT_CHECKED = "not checked"  # a mutant a stopped run never ran (a partial result)


def slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", "-")


def scratch_path(module: str) -> str:
    """The module's path inside the scratch copy (kernels/reference.py -> eptk/kernels/reference.py)."""
    top, rest = module.split("/", 1)
    return f"{LAYOUT[top]}/{rest}"


IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def copy_tests(folder: Path) -> None:
    """The repository's tests, as they are now, into a scratch folder (replacing any older copy)."""
    shutil.rmtree(folder / "tests", ignore_errors=True)
    shutil.copytree(ROOT / "tests", folder / "tests", ignore=IGNORE)


def lay_out(module: str, tests: list[str]) -> Path:
    """A fresh scratch copy of the package and the tests, with mutmut's settings for this module."""
    folder = SCRATCH / slug(module)
    shutil.rmtree(folder, ignore_errors=True)
    for top, where in LAYOUT.items():
        shutil.copytree(ROOT / top, folder / where, ignore=IGNORE)
    copy_tests(folder)
    settings = {
        "source_paths": ["eptk"],  # the whole package is copied; only the module is mutated
        "only_mutate": [scratch_path(module)],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        "use_git_change_detection": False,
        # the forked workers come from a process that imported torch but never ran a test: no live OpenMP pool
        "process_isolation": "forkserver",
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")
    return folder


def mutmut(folder: Path, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    return subprocess.run(command, cwd=folder, env=env, text=True, capture_output=capture)


def statuses(folder: Path, module: str) -> dict[str, int | None]:
    meta = folder / "mutants" / (scratch_path(module) + ".meta")
    return json.loads(meta.read_text())["exit_code_by_key"]


def status_name(code) -> str:
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[code]


def changed_lines(diff: str) -> tuple[str, str]:
    """The original and the mutated text of a mutant's diff (its - and + lines, joined)."""
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    take = lambda sign: " ".join(line[1:].strip() for line in body if line.startswith(sign))  # noqa: E731
    return take("-"), take("+")


def function_of(name: str) -> str:
    """eptk.linalg.x_shrink__mutmut_3 -> shrink; a method: xǁClassǁmethod__mutmut_1 -> Class.method."""
    last = name.rsplit(".", 1)[-1].split("__mutmut_")[0]
    return last.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")


def triaged(kind: str) -> list[dict]:
    """benchmarks/mutation_equivalents.toml's entries of one kind: `equivalent` (with the reason) or `killed` (by a
    test added after the module's last run, named, and watched failing with the mutant planted by hand)."""
    return tomllib.loads(EQUIVALENTS.read_text()).get(kind, []) if EQUIVALENTS.exists() else []


def _entry(kind: str, module: str, function: str, original: str, mutated: str) -> dict | None:
    for entry in triaged(kind):
        if (entry["module"], entry["function"], entry["from"], entry["to"]) == (module, function, original, mutated):
            return entry
    return None


def triage(module: str, function: str, original: str, mutated: str) -> str | None:
    """The reason a surviving mutant is equivalent, if benchmarks/mutation_equivalents.toml gives one."""
    entry = _entry("equivalent", module, function, original, mutated)
    return entry["reason"] if entry else None


def killed_later(module: str, function: str, original: str, mutated: str) -> str | None:
    """The test added after the run that kills this survivor, if the triage file names one."""
    entry = _entry("killed", module, function, original, mutated)
    return entry["test"] if entry else None


def run_module(module: str) -> dict:
    tests = MODULES[module]
    folder = lay_out(module, tests)
    print(f"== {module}: mutmut against {' '.join(tests)} (scratch {folder.relative_to(ROOT)})", flush=True)
    started = dt.datetime.now()
    run_mutants(folder, module)
    return collect(module, folder, started)


def run_mutants(folder: Path, module: str, *names: str) -> None:
    """mutmut over the module's mutants (or only `names`), one test process at a time."""
    proc = mutmut(folder, "run", "--max-children", "1", *names)
    if proc.returncode != 0:
        raise SystemExit(f"mutmut run failed for {module} (exit {proc.returncode}); see the output above")


def refuse(message: str) -> None:
    """Bad input: one line on stderr and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resume_module(module: str) -> dict:
    """A stopped run continued in its scratch folder: the results it has stand, the current tests are copied in
    (mutmut collects coverage for the new ones), and only the mutants without a result run."""
    folder = SCRATCH / slug(module)
    if not (folder / "mutants" / (scratch_path(module) + ".meta")).exists():
        refuse(f"no stopped run of {module} under {folder.relative_to(ROOT)}; run it without --resume")
    if (folder / scratch_path(module)).read_bytes() != (ROOT / module).read_bytes():
        refuse(f"{module} changed since its stopped run; its results would not be this code's: run it again "
               "without --resume")
    copy_tests(folder)
    left = sorted(name for name, code in statuses(folder, module).items() if code is None)
    earlier = RESULTS / f"mutation-{slug(module)}.json"
    minutes = json.loads(earlier.read_text())["minutes"] if earlier.exists() else 0.0
    print(f"== {module}: resuming, {len(left)} mutants not run yet", flush=True)
    started = dt.datetime.now()
    if left:
        run_mutants(folder, module, *left)
    left_now = any(code is None for code in statuses(folder, module).values())
    return collect(module, folder, started, partial=left_now, earlier_minutes=minutes)


def collect(module: str, folder: Path, started: dt.datetime, partial: bool = False,
            earlier_minutes: float = 0.0) -> dict:
    """The module's results from its scratch folder, written to its JSON. `partial`: a run stopped before the end
    (--collect-partial); the mutants it never ran count as `not checked` and the score leaves them out.
    `earlier_minutes`: what the stopped run took before a --resume."""
    tests = MODULES[module]
    codes = statuses(folder, module)
    survivors = []
    for name, code in sorted(codes.items()):
        status = status_name(code)
        if status in KILLED or status == NOT_CHECKED:
            continue
        diff = mutmut(folder, "show", name, capture=True).stdout
        original, mutated = changed_lines(diff)
        function = function_of(name)
        survivors.append({"mutant": name, "status": status, "function": function, "from": original,
                          "to": mutated, "equivalent": triage(module, function, original, mutated), "diff": diff})
    result = {"module": module, "tests": tests, "tool": f"mutmut {_version()}",
              "date": started.strftime("%Y-%m-%d"),
              "minutes": round(earlier_minutes + (dt.datetime.now() - started).seconds / 60, 1),
              "counts": _counts(codes), "survivors": survivors, **({"partial": True} if partial else {})}
    write_json(RESULTS / f"mutation-{slug(module)}.json", result)
    return result


def _counts(codes: dict) -> dict:
    counts: dict[str, int] = {}
    for code in codes.values():
        counts[status_name(code)] = counts.get(status_name(code), 0) + 1
    return counts


def _version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def score(result: dict) -> tuple[int, int, int, float]:
    """(mutants, equivalent, killed, killed share of the non-equivalent ones), triage re-read from the file; a
    survivor killed by a later test counts as killed."""
    total = sum(n for status, n in result["counts"].items() if status != NOT_CHECKED)
    killed = sum(n for status, n in result["counts"].items() if status in KILLED)
    killed += sum(1 for s in result["survivors"] if killed_later(result["module"], s["function"], s["from"], s["to"]))
    equivalent = sum(1 for s in result["survivors"]
                     if triage(result["module"], s["function"], s["from"], s["to"]) is not None)
    return total, equivalent, killed, killed / max(total - equivalent, 1)


def write_report() -> Path:
    lines = ["# Mutation testing", "",
             "`make mutation` (or `make mutation MODULE=eptk/linalg.py`): mutmut mutates one module at a time and "
             "runs the tests that cover it against each mutant (benchmarks/mutation.py). Score = killed / "
             "(mutants − equivalent mutants); a timeout counts as killed, and so does a survivor that a test "
             "added after the run kills (named below; watched failing with the mutant planted; the next run "
             f"counts it itself). Goal: ≥ {GOAL:.0%} per module. Every survivor is listed below: killed by a later "
             "test, equivalent (with the reason), or open (benchmarks/mutation_equivalents.toml holds the triage).",
             "",
             "| module | tests | mutants | killed | equivalent | surviving, not equivalent | score | run |",
             "|---|---|---|---|---|---|---|---|"]
    details = []
    for module in MODULES:
        path = RESULTS / f"mutation-{slug(module)}.json"
        if not path.exists():
            lines.append(f"| `{module}` | `{' '.join(MODULES[module])}` | not run | | | | | |")
            continue
        result = json.loads(path.read_text())
        total, equivalent, killed, share = score(result)
        open_ = [s for s in result["survivors"] if triage(module, s["function"], s["from"], s["to"]) is None
                 and not killed_later(module, s["function"], s["from"], s["to"])]
        unchecked = result["counts"].get(NOT_CHECKED, 0)
        partial = f" (partial: {unchecked} of {total + unchecked} mutants not run)" if result.get("partial") else ""
        lines.append(f"| `{module}` | `{' '.join(result['tests'])}` | {total}{partial} | {killed} | "
                     f"{equivalent} | {len(open_)} | {share:.1%}{'' if share >= GOAL else ' (below goal)'} | "
                     f"{result['date']}, {result['tool']}, {result['minutes']} min |")
        if result["survivors"]:
            details += ["", f"## `{module}`: survivors", "", "| mutant | function | change | triage |", "|---|---|---|---|"]
            for s in result["survivors"]:
                why = triage(module, s["function"], s["from"], s["to"])
                test = killed_later(module, s["function"], s["from"], s["to"])
                change = f"`{s['from']}` → `{s['to']}`".replace("|", "\\|")
                verdict = (f"equivalent: {why}" if why else f"killed by `{test}` (added or extended after the run; watched "
                           f"failing with the mutant planted)" if test else f"**open** ({s['status']})")
                details.append(f"| {s['mutant'].rsplit('.', 1)[-1]} | {s['function']} | {change} | {verdict} |")
    target = RESULTS / "mutation.md"
    target.write_text("\n".join(lines + details) + "\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default all): {', '.join(MODULES)}")
    parser.add_argument("--report", action="store_true", help="only rewrite benchmarks/results/mutation.md")
    parser.add_argument("--collect-partial", metavar="STARTED",
                        help="a run stopped before its end: write its modules' results so far from their scratch "
                             "folders (the mutants not run are listed as not checked); STARTED: when it began, "
                             "YYYY-MM-DDTHH:MM")
    parser.add_argument("--resume", action="store_true",
                        help="continue each module's stopped run in its scratch folder: only the mutants it has no "
                             "result for run, against the current tests")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        refuse(f"unknown module {unknown[0]!r}; valid: {', '.join(MODULES)}")
    if args.collect_partial:
        started = dt.datetime.fromisoformat(args.collect_partial)
        for module in args.modules:
            total, equivalent, killed, share = score(collect(module, SCRATCH / slug(module), started, partial=True))
            print(f"{module} (partial): {killed} of {total - equivalent} run non-equivalent mutants killed "
                  f"({share:.1%})", flush=True)
    elif not args.report:
        for module in args.modules or MODULES:
            result = resume_module(module) if args.resume else run_module(module)
            total, equivalent, killed, share = score(result)
            print(f"{module}: {killed} of {total - equivalent} non-equivalent mutants killed ({share:.1%})", flush=True)
    print(f"wrote {write_report().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
