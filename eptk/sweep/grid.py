"""The sweep file and its grid: parsing and checking the TOML, expanding the grid into runs, and naming them.

A sweep file (TOML) names grid keys — `priors`, `methods`, `tokens`, `seeds`, `tasks`, and any method's own
option by its name (`layers`, `rank`, ...), each a value or a list — and fixed settings under `[fixed]` (any
`eptk tune` setting: model, steps, batch_size, lr, ..., or a method option). An optional top-level `out` is
the default sweep directory. A method option's grid values apply to the runs of the methods that declare it
(the others get one run).

Every run lives in <out>/<name>, its name built from its grid values only (stable when the grid
grows): `<task>-<method>[-<the method's named options>]-<prior>-t<tokens>-s<seed>`, the named options those
the method declares `in_name` (deep: its layers).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EXECUTION_ONLY, TuneConfig, check_settings, check_value, setting_types
from ..errors import EptkUsageError, choices
from ..options import as_arguments
from ..runs import RunDir, is_run

# grid key in the sweep file -> the TuneConfig field it sets (expansion order: these, with the method options'
# grid keys right after `methods`; seeds innermost)
GRID_KEYS = {"tasks": "task", "methods": "method", "priors": "prior", "tokens": "tokens", "seeds": "seed"}
NOT_FIXED = ("out", "extensions", "options")  # TuneConfig fields a sweep does not set


def method_options() -> dict[str, str]:
    """Every registered method's option -> its type (bool, int, float, str): a grid key and a [fixed] setting."""
    from ..methods import METHODS
    from ..options import fields_of, kind_of

    return {name: kind_of(f) for cls in METHODS.values() for name, f in fields_of(cls.Options).items()}


def declared_options(method: str) -> set[str]:
    """The options `method` declares (none for an unknown method, which validation reports)."""
    from ..methods import METHODS
    from ..options import fields_of

    return set(fields_of(METHODS[method].Options)) if method in METHODS else set()


@dataclass
class SweepRun:
    index: int
    name: str
    settings: dict  # TuneConfig fields and method options the sweep sets (grid values + [fixed]); else defaults

    def config(self) -> TuneConfig:
        return TuneConfig.from_dict(self.settings)

    def tune_args(self) -> list[str]:
        """The `eptk tune` options that reproduce these settings."""
        return as_arguments(self.settings)


@dataclass
class Sweep:
    path: Path
    grid: dict  # grid key -> list of values
    fixed: dict
    out: str | None
    runs: list[SweepRun] = field(default_factory=list)

    def default_out(self) -> Path:
        return Path(self.out) if self.out else Path("sweeps") / self.path.stem


# ---- the sweep file ---------------------------------------------------------------------------------

def load_sweep(path) -> Sweep:
    """Read and check a sweep file, expand its grid. Every error is one line (EptkUsageError)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise EptkUsageError(f"sweep file {path} not found" if not path.exists() else f"sweep file {path} is not a file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EptkUsageError(f"sweep file {path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    options = method_options()
    top_keys = (*GRID_KEYS, *options, "fixed", "out")
    unknown = [k for k in data if k not in top_keys]
    if unknown:
        raise EptkUsageError(f"{path}: unknown key {unknown[0]!r}; valid: {choices(top_keys)} "
                             f"(fixed settings go under [fixed])")
    types = {**method_options(), **setting_types()}
    settable = [k for k in types if k not in NOT_FIXED]

    grid: dict[str, list] = {}
    order = ["tasks", "methods", *[k for k in data if k in options], "priors", "tokens", "seeds"]
    for key in order:
        if key not in data:
            continue
        raw = data[key]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise EptkUsageError(f"{path}: empty grid: {key!r} has no values")
        kind = types[GRID_KEYS.get(key, key)]
        checked = []
        for v in values:
            v = check_value(f"{path}: every value of {key!r}", v, kind)
            if v not in checked:
                checked.append(v)
        grid[key] = checked

    fixed = data.get("fixed", {})
    if not isinstance(fixed, dict):
        raise EptkUsageError(f"{path}: 'fixed' must be a table ([fixed] with key = value lines)")
    for key in fixed:
        if key not in settable and _grid_key_of(key):
            raise EptkUsageError(f"{path}: [fixed] {key!r} is a grid key: set {_grid_key_of(key)!r} at the top level")
    fixed_checked = check_settings({k: v for k, v in fixed.items() if k not in options}, f"{path}: [fixed]",
                                   names=[k for k in settable if k not in options])
    fixed_checked.update({k: check_value(f"{path}: [fixed] {k}", v, options[k])
                          for k, v in fixed.items() if k in options})
    for key in grid:
        target = GRID_KEYS.get(key, key)
        if target in fixed_checked:
            raise EptkUsageError(f"{path}: {target!r} is set both by the grid key {key!r} and by [fixed]; keep one")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise EptkUsageError(f"{path}: 'out' must be a string (got {out!r})")
    if not grid:
        raise EptkUsageError(f"{path}: empty grid: give at least one of {choices([*GRID_KEYS, *options])}")

    sweep = Sweep(path=path, grid=grid, fixed=fixed_checked, out=out)
    sweep.runs = expand(grid, fixed_checked, str(path))
    return sweep


def _grid_key_of(name: str) -> str | None:
    for key, target in GRID_KEYS.items():
        if name in (key, target):
            return key
    return None


def expand(grid: dict, fixed: dict, where: str = "grid") -> list[SweepRun]:
    """The runs of a grid (grid key -> values) with fixed settings, named and validated (errors name `where`).
    `eptk sweep` and `eptk reproduce` both build their runs here, so one grid gives one set of names."""
    defaults = TuneConfig()
    keys = list(grid)
    runs, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = {GRID_KEYS.get(k, k): v for k, v in zip(keys, combo)}
        settings = dict(values, **fixed)
        method = settings.get("method", defaults.method)
        for name in set(values) - set(GRID_KEYS.values()) - declared_options(method):
            del settings[name]  # a method option's grid values make runs of the methods that have it only
        key = json.dumps(settings, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        runs.append(SweepRun(index=len(runs), name=_run_name(settings, defaults), settings=settings))
    _unique_names(runs)
    for run in runs:
        try:
            run.config().validate()
        except EptkUsageError as exc:
            raise EptkUsageError(f"{where}: run {run.name}: {exc}") from None
    return runs


def check_runs(runs: list[SweepRun], where: str) -> None:
    """Every run checked as `eptk tune` checks it before a model loads (eptk.preflight.check_inputs: its model
    name, device placement, task and splits, prior and what it names), so a sweep with a bad run starts none and
    --dry-run says why."""
    from ..preflight import check_inputs

    for run in runs:
        try:
            check_inputs(run.config())
        except EptkUsageError as exc:
            raise EptkUsageError(f"{where}: run {run.name}: {exc}") from None


def _safe(text) -> str:
    table = {":": "-", ",": "+", "/": "_", "\\": "_", " ": "_"}
    out = "".join(c if c.isalnum() or c in "-_.+" else table.get(c, "-") for c in str(text))
    return out.strip("-_.") or "x"


def _run_name(settings: dict, defaults: TuneConfig) -> str:
    from ..options import name_parts

    effective = lambda name: settings.get(name, getattr(defaults, name))  # noqa: E731
    parts = [_safe(effective("task")), _safe(effective("method"))]
    try:
        parts += [_safe(part) for part in name_parts(TuneConfig.from_dict(settings).method_options())]
    except EptkUsageError:
        pass  # an unknown method or a bad option: validation names it below
    parts += [_safe(effective("prior")), f"t{effective('tokens')}", f"s{effective('seed')}"]
    name = "-".join(parts)
    if len(name) > 120:  # long specs (a posterior's path): keep a readable head and a stable hash
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def _unique_names(runs: list[SweepRun]) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:  # two specs that read the same once made safe for a path
            digest = hashlib.sha1(json.dumps(run.settings, sort_keys=True).encode()).hexdigest()[:8]
            run.name = f"{run.name}-{digest}"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' (0 <= I < N) -> (I, N); None -> None."""
    if text is None:
        return None
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise EptkUsageError(f"bad --shard {text!r}; valid: I/N with 0 <= I < N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise EptkUsageError(f"bad --shard {text!r}; valid: I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def select_shard(runs: list[SweepRun], shard: tuple[int, int] | None) -> list[SweepRun]:
    """Every N-th run starting at I (by position in the expanded grid)."""
    if shard is None:
        return list(runs)
    i, n = shard
    return runs[i::n]


# ---- the state of a run directory ----------------------------------------------------------------

def run_state(run_dir: Path) -> str:
    """complete (evaluated), checkpoint (resumable), partial (exists, nothing to resume), new."""
    run = RunDir(run_dir)
    if run.is_complete():
        return "complete"
    if is_run(run.path) and run.has_checkpoint():
        return "checkpoint"
    return "partial" if run.path.exists() else "new"


def settings_conflict(run: SweepRun, run_dir: Path) -> str | None:
    """Why an existing run directory is not this sweep run (other settings), or None."""
    try:
        config = RunDir(run_dir).config()
    except EptkUsageError:
        return f"{run_dir}: its config is missing or unreadable"
    recorded = TuneConfig.from_dict(config).options  # the method's options as its config.json records them
    for key, want in run.settings.items():
        if key in EXECUTION_ONLY:
            continue
        method = run.settings.get("method", TuneConfig().method)
        have = recorded.get(key) if key in declared_options(method) else config.get(key)
        if have != want:
            return (f"{run_dir} holds a run with other settings ({key}: {have!r} there, {want!r} in the sweep); "
                    f"delete it or choose another --out")
    return None


def plan(runs: list[SweepRun], out: Path) -> list[dict]:
    """What a sweep would do with each run: skip, resume, overwrite, fresh (or conflict)."""
    rows = []
    for run in runs:
        run_dir = out / run.name
        state = run_state(run_dir)
        action = {"complete": "skip", "checkpoint": "resume", "partial": "overwrite", "new": "fresh"}[state]
        problem = settings_conflict(run, run_dir) if state in ("complete", "checkpoint") else None
        rows.append({"run": run, "dir": run_dir, "state": state, "action": "conflict" if problem else action,
                     "problem": problem})
    return rows
