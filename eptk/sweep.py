"""`eptk sweep SWEEP.toml`: expand a grid of tuning runs into one directory and run them as subprocesses.

A sweep file (TOML) names grid keys — `priors`, `methods`, `layers`, `tokens`, `seeds`, `tasks`, each a
value or a list — and fixed settings under `[fixed]` (any `eptk tune` setting: model, steps,
batch_size, lr, ...). An optional top-level `out` is the default sweep directory.

Every run lives in <out>/<name>, its name built from its grid values only (stable when the grid
grows): `<task>-<method>[-<layers>]-<prior>-t<tokens>-s<seed>`. Rerunning a sweep skips complete runs
(eval.json present), resumes those with a checkpoint, and restarts (--overwrite) the ones that died
before their first checkpoint. A run that fails is reported in <out>/sweep.json (exit code and the
tail of its stderr) and does not stop the others. Logs: <out>/logs/<name>.out|.err.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import EptkUsageError, choices

# grid key in the sweep file -> the TuneConfig field it sets (file order = expansion order, seeds innermost)
GRID_KEYS = {"tasks": "task", "methods": "method", "layers": "layers", "priors": "prior", "tokens": "tokens",
             "seeds": "seed"}
TOP_KEYS = (*GRID_KEYS, "fixed", "out")
NOT_FIXED = ("out", "extra")  # TuneConfig fields a sweep does not set
EXECUTION_ONLY = ("device", "backend")  # settings that do not change what a run computes
SUMMARY = "sweep.json"
STATES = ("complete", "checkpoint", "partial", "new")
TAIL_LINES = 25


@dataclass
class SweepRun:
    index: int
    name: str
    settings: dict  # TuneConfig fields the sweep sets (grid values + [fixed]); everything else: tune's defaults

    def config(self):
        from .train import TuneConfig
        return TuneConfig(**self.settings)

    def tune_args(self) -> list[str]:
        """The `eptk tune` options that reproduce these settings."""
        args = []
        for key, value in self.settings.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + key.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args


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

def _field_types() -> dict[str, str]:
    from .train import TuneConfig
    return {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in dataclasses.fields(TuneConfig)}


def _check_type(where: str, value, kind: str):
    """A TOML value for a TuneConfig field of type `kind` (int, float, str, bool), or a one-line error."""
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
          "bool": isinstance(value, bool)}.get(kind, False)
    if not ok:
        wanted = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(kind, kind)
        raise EptkUsageError(f"{where} must be {wanted} (got {value!r})")
    if kind == "str":
        return str(value)
    if kind == "float":
        return float(value)
    return value


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
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise EptkUsageError(f"{path}: unknown key {unknown[0]!r}; valid: {choices(TOP_KEYS)} "
                             f"(fixed settings go under [fixed])")
    types = _field_types()
    settable = [k for k in types if k not in NOT_FIXED]

    grid: dict[str, list] = {}
    for key in GRID_KEYS:
        if key not in data:
            continue
        raw = data[key]
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise EptkUsageError(f"{path}: empty grid: {key!r} has no values")
        kind = types[GRID_KEYS[key]]
        checked = []
        for v in values:
            v = _check_type(f"{path}: every value of {key!r}", v, kind)
            if v not in checked:
                checked.append(v)
        grid[key] = checked

    fixed = data.get("fixed", {})
    if not isinstance(fixed, dict):
        raise EptkUsageError(f"{path}: 'fixed' must be a table ([fixed] with key = value lines)")
    fixed_checked = {}
    for key, value in fixed.items():
        if key not in settable:
            hint = f" (it is a grid key: set {_grid_key_of(key)!r} at the top level)" if _grid_key_of(key) else ""
            raise EptkUsageError(f"{path}: unknown [fixed] setting {key!r}{hint}; valid: {choices(settable)}")
        fixed_checked[key] = _check_type(f"{path}: [fixed] {key}", value, types[key])
    for key, target in GRID_KEYS.items():
        if key in grid and target in fixed_checked:
            raise EptkUsageError(f"{path}: {target!r} is set both by the grid key {key!r} and by [fixed]; keep one")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise EptkUsageError(f"{path}: 'out' must be a string (got {out!r})")
    if not grid:
        raise EptkUsageError(f"{path}: empty grid: give at least one of {choices(GRID_KEYS)}")

    sweep = Sweep(path=path, grid=grid, fixed=fixed_checked, out=out)
    sweep.runs = _expand(sweep)
    return sweep


def _grid_key_of(name: str) -> str | None:
    for key, target in GRID_KEYS.items():
        if name in (key, target):
            return key
    return None


def _expand(sweep: Sweep) -> list[SweepRun]:
    from .train import TuneConfig

    defaults = TuneConfig()
    keys = list(sweep.grid)
    runs, seen = [], set()
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        values = {GRID_KEYS[k]: v for k, v in zip(keys, combo)}
        settings = dict(values, **sweep.fixed)
        effective = lambda name: settings.get(name, getattr(defaults, name))  # noqa: E731
        if effective("method") != "deep" and "layers" in values:
            del settings["layers"]  # only deep prompts have layers: one run, not one per layers value
            if "layers" in sweep.fixed:
                settings["layers"] = sweep.fixed["layers"]
        key = json.dumps(settings, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        runs.append(SweepRun(index=len(runs), name=_run_name(effective), settings=settings))
    _unique_names(runs)
    for run in runs:
        try:
            run.config().validate()
        except EptkUsageError as exc:
            raise EptkUsageError(f"{sweep.path}: run {run.name}: {exc}") from None
    return runs


def _safe(text) -> str:
    table = {":": "-", ",": "+", "/": "_", "\\": "_", " ": "_"}
    out = "".join(c if c.isalnum() or c in "-_.+" else table.get(c, "-") for c in str(text))
    return out.strip("-_.") or "x"


def _run_name(effective) -> str:
    method = effective("method")
    parts = [_safe(effective("task")), _safe(method)]
    if method == "deep":
        parts.append(_safe(str(effective("layers")).replace("last:", "last")))
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
    """complete (eval.json), checkpoint (resumable), partial (exists, nothing to resume), new."""
    from .runs import CHECKPOINTS, EVAL, is_run

    run_dir = Path(run_dir)
    if (run_dir / EVAL).is_file():
        return "complete"
    root = run_dir / CHECKPOINTS
    if is_run(run_dir) and root.is_dir() and any(
            (s / "state.json").is_file() and (s / "state.safetensors").is_file() for s in root.glob("step-*")):
        return "checkpoint"
    return "partial" if run_dir.exists() else "new"


def settings_conflict(run: SweepRun, run_dir: Path) -> str | None:
    """Why an existing run directory is not this sweep run (other settings), or None."""
    from .runs import CONFIG
    try:
        config = json.loads((Path(run_dir) / CONFIG).read_text())
    except (OSError, ValueError):
        return f"{run_dir}/{CONFIG} is missing or unreadable"
    for key, want in run.settings.items():
        if key in EXECUTION_ONLY:
            continue
        have = config.get("layers_spec", config.get("layers")) if key == "layers" else config.get(key)
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


# ---- running ------------------------------------------------------------------------------------

def gpu_ids(fixed: dict) -> list[str]:
    """The GPUs jobs are spread over (CUDA_VISIBLE_DEVICES when set), none for a CPU sweep."""
    if str(fixed.get("device", "auto")).startswith("cpu"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:
        return []


def tune_command(row: dict) -> list[str]:
    run, run_dir = row["run"], row["dir"]
    base = [sys.executable, "-m", "eptk.cli", "tune"]
    if row["action"] == "resume":
        return base + ["--resume", str(run_dir), "--quiet"]
    cmd = base + run.tune_args() + ["--out", str(run_dir), "--quiet"]
    return cmd + (["--overwrite"] if row["action"] == "overwrite" else [])


def _tail(path: Path, start: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [l for l in text.splitlines() if l.strip()]
    return "\n".join(lines[-TAIL_LINES:])[-4000:]


class _Job:
    def __init__(self, row: dict, logs: Path, env: dict, gpu: str | None, slot: int):
        self.row, self.gpu, self.slot = row, gpu, slot
        name = row["run"].name
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        self.command = tune_command(row)
        header = f"=== {_now()} {' '.join(self.command)}\n"
        self.out_file = open(self.out_path, "a", encoding="utf-8")
        self.err_file = open(self.err_path, "a", encoding="utf-8")
        self.out_file.write(header)
        self.err_file.write(header)
        self.out_file.flush()
        self.err_file.flush()
        self.err_start = self.err_file.tell()
        self.t0 = time.time()
        self.proc = subprocess.Popen(self.command, stdout=self.out_file, stderr=self.err_file, env=env,
                                     stdin=subprocess.DEVNULL)

    def close(self) -> None:
        self.out_file.close()
        self.err_file.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_sweep(sweep: Sweep, out=None, *, jobs: int | None = None, shard: tuple[int, int] | None = None,
              analyze: bool = True, progress: bool = True, console=None) -> dict:
    """Run (or resume) the sweep's runs of this shard, at most `jobs` at a time; write <out>/sweep.json."""
    from rich.console import Console

    console = console or Console()
    out = Path(out) if out is not None else sweep.default_out()
    if out.exists() and not out.is_dir():
        raise EptkUsageError(f"--out {out} exists and is not a directory")
    gpus = gpu_ids(sweep.fixed)
    if jobs is None:
        jobs = max(1, len(gpus))
    if jobs < 1:
        raise EptkUsageError(f"--jobs must be at least 1 (got {jobs})")
    selected = select_shard(sweep.runs, shard)
    rows = plan(selected, out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    if not gpus and "OMP_NUM_THREADS" not in env:  # CPU jobs share the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // min(jobs, max(1, len(rows)))))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    summary = {"file": str(sweep.path), "out": str(out), "shard": f"{shard[0]}/{shard[1]}" if shard else None,
               "jobs": jobs, "gpus": gpus, "started": _now(), "finished": None, "grid": sweep.grid,
               "fixed": sweep.fixed, "runs": [], "analysis": None}
    results: dict[str, dict] = {}
    for row in rows:
        run = row["run"]
        results[run.name] = {"name": run.name, "index": run.index, "dir": str(row["dir"]), "settings": run.settings,
                             "state_before": row["state"], "action": row["action"], "status": "pending"}
        if row["action"] == "skip":
            results[run.name]["status"] = "skipped"
        elif row["action"] == "conflict":
            results[run.name].update(status="failed", exit_code=None, error=row["problem"])
    todo = [row for row in rows if row["action"] not in ("skip", "conflict")]

    bar = _SweepBar(progress, console, total=len(rows))
    bar.advance(len(rows) - len(todo))
    for row in rows:
        if row["action"] == "conflict":
            console.print(f"[red]✗[/] {row['run'].name}: {row['problem']}")
    running: list[_Job] = []
    free_slots = list(range(jobs))
    interrupted = None
    previous = _install_stop_handler()
    try:
        queue = list(todo)
        while queue or running:
            while queue and free_slots:
                slot = free_slots.pop(0)
                row = queue.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                job_env = dict(env, CUDA_VISIBLE_DEVICES=gpu) if gpu is not None else env
                job = _Job(row, logs, job_env, gpu, slot)
                running.append(job)
                results[row["run"].name].update(status="running", command=job.command, gpu=gpu)
                bar.show(running, results)
            time.sleep(0.2)
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    continue
                running.remove(job)
                free_slots.append(job.slot)
                free_slots.sort()
                _finish(job, code, results, console)
                bar.advance(1)
                bar.show(running, results)
    except (KeyboardInterrupt, _StopSweep) as exc:
        interrupted = exc
        console.print(f"[yellow]stopping: {len(running)} running run(s) asked to checkpoint and stop[/]")
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 120
        for job in running:
            try:
                job.proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
            _finish(job, job.proc.returncode, results, console, interrupted=True)
        running = []
    finally:
        bar.close()
        _restore_stop_handler(previous)
        for job in running:
            job.close()

    summary["runs"] = [results[row["run"].name] for row in rows]
    counts = {}
    for r in summary["runs"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary["counts"] = counts
    if interrupted is None and analyze:
        summary["analysis"] = _analyze(out, shard, summary["runs"], logs, env, console)
    summary["finished"] = _now()
    from .io import write_json_atomic
    write_json_atomic(out / summary_name(shard), summary)
    if interrupted is not None:
        console.print(f"sweep interrupted; rerun the same command to continue (summary: {out / summary_name(shard)})")
        raise KeyboardInterrupt from None
    return summary


def summary_name(shard) -> str:
    """sweep.json; a shard writes its own (shards may run at once on a shared directory)."""
    return SUMMARY if shard is None or shard[1] == 1 else f"sweep.shard{shard[0]}of{shard[1]}.json"


def _finish(job: _Job, code: int, results: dict, console, interrupted: bool = False) -> None:
    from .runs import EVAL
    job.close()
    name = job.row["run"].name
    entry = results[name]
    entry.update(exit_code=code, seconds=round(time.time() - job.t0, 1), log=str(job.err_path))
    complete = (job.row["dir"] / EVAL).is_file()
    if code == 0 and complete:
        entry["status"] = "resumed" if job.row["action"] == "resume" else "done"
        console.print(f"[green]✓[/] {name} ({entry['status']}, {entry['seconds']:.0f} s)")
        return
    entry["status"] = "interrupted" if interrupted else "failed"
    entry["stderr_tail"] = _tail(job.err_path, job.err_start)
    if code == 0:
        entry["error"] = "exited 0 without writing eval.json"
    last = entry["stderr_tail"].splitlines()[-1] if entry["stderr_tail"] else entry.get("error", "")
    console.print(f"✗ {name} {entry['status']} (exit {code}): {last}", markup=False, highlight=False)


def _analyze(out: Path, shard, runs: list[dict], logs: Path, env: dict, console) -> dict:
    """`eptk analyze <out> --out <out>/analysis` when that command exists; a failure is only reported."""
    import importlib.util

    if shard is not None and shard[1] > 1:
        return {"status": "skipped", "reason": "a shard does not analyze; run `eptk sweep` without --shard "
                                                "(complete runs are skipped) or `eptk analyze` once all shards end"}
    if importlib.util.find_spec("eptk.cli.analyze") is None:
        return {"status": "skipped", "reason": "the analyze command is not installed"}
    if not any(r["status"] in ("done", "resumed", "skipped") for r in runs):
        return {"status": "skipped", "reason": "no complete run"}
    target = out / "analysis"
    cmd = [sys.executable, "-m", "eptk.cli", "analyze", str(out), "--out", str(target)]
    console.print(f"analyze: eptk {' '.join(cmd[3:])}")
    t0 = time.time()
    with open(logs / "analyze.out", "w", encoding="utf-8") as o, open(logs / "analyze.err", "w", encoding="utf-8") as e:
        try:
            code = subprocess.run(cmd, stdout=o, stderr=e, env=env, stdin=subprocess.DEVNULL).returncode
        except KeyboardInterrupt:
            code = 130
    result = {"status": "done" if code == 0 else "failed", "exit_code": code, "out": str(target),
              "command": cmd, "seconds": round(time.time() - t0, 1)}
    if code != 0:
        result["stderr_tail"] = _tail(logs / "analyze.err", 0)
        last = result["stderr_tail"].splitlines()[-1] if result["stderr_tail"] else ""
        console.print(f"analyze failed (exit {code}): {last}  (the sweep's runs are unaffected)", markup=False)
    return result


class _StopSweep(Exception):
    pass


def _install_stop_handler():
    def handler(signum, frame):
        raise _StopSweep(signal.Signals(signum).name)
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_stop_handler(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


class _SweepBar:
    """Overall progress: runs finished of this sweep (shard), what is running, failures so far."""

    def __init__(self, enabled: bool, console, total: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console)
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=total, status="")

    def advance(self, n: int) -> None:
        if self.enabled and n:
            self.progress.advance(self.task, n)

    def show(self, running, results) -> None:
        if not self.enabled:
            return
        failed = sum(1 for r in results.values() if r["status"] == "failed")
        names = ", ".join(j.row["run"].name for j in running[:2]) + (" …" if len(running) > 2 else "")
        status = f"{len(running)} running" + (f" ({names})" if names else "") + (f", {failed} failed" if failed else "")
        self.progress.update(self.task, status=status)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
