"""Running a sweep: its runs as `eptk tune` subprocesses, at most `jobs` at a time, one GPU each.

Rerunning a sweep skips complete runs, resumes those with a checkpoint, and restarts (--overwrite) the
ones that died before their first checkpoint. A run that fails is reported in <out>/sweep.json (exit
code and the tail of its stderr) and does not stop the others. Logs: <out>/logs/<name>.out|.err.

Children die with the sweep: a sweep stopped by SIGTERM or Ctrl-C asks them to checkpoint and stop; one
that dies any other way (kill -9 included) takes them with it (the kernel kills them), so a rerun never
meets a run still locked by an orphan.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import EptkUsageError
from ..io import crash_point, write_json_atomic
from ..progress import Bar
from ..runs import EVAL, RunDir, is_run
from ..signals import on_stop_signals, restore_handlers
from .grid import Sweep, plan, select_shard

SUMMARY = "sweep.json"
TAIL_LINES = 25


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
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        crash_point("job-started")

    def close(self) -> None:
        self.out_file.close()
        self.err_file.close()


def die_with_parent() -> None:
    """In a child before exec: ask Linux to SIGKILL it when the sweep dies (PR_SET_PDEATHSIG), so a sweep
    killed with SIGKILL leaves no orphan holding a run's lock (the run resumes from its last checkpoint);
    elsewhere a no-op."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_sweep(sweep: Sweep, out=None, *, jobs: int | None = None, shard: tuple[int, int] | None = None,
              analyze: bool = True, progress: bool = True, console=None, summary: str = SUMMARY) -> dict:
    """Run (or resume) the sweep's runs of this shard, at most `jobs` at a time; write <out>/sweep.json (or
    the `summary` file name: several grids may share one directory)."""
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

    base = summary
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

    bar = Bar(progress, "[bold]sweep", len(rows), "{task.fields[status]}", console=console, status="")
    bar.advance(len(rows) - len(todo))
    for row in rows:
        if row["action"] == "conflict":
            console.print(f"[red]✗[/] {row['run'].name}: {row['problem']}")
    running: list[_Job] = []
    free_slots = list(range(jobs))
    interrupted = None
    previous = on_stop_signals(_raise_stop, (signal.SIGTERM,))  # Ctrl-C arrives as KeyboardInterrupt
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
                bar.advance(0, status=_status(running, results))
            time.sleep(0.2)
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    continue
                running.remove(job)
                free_slots.append(job.slot)
                free_slots.sort()
                _finish(job, code, results, console)
                bar.advance(1, status=_status(running, results))
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
        restore_handlers(previous)
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
    write_json_atomic(out / summary_name(shard, base), summary)
    if interrupted is not None:
        console.print(f"sweep interrupted; rerun the same command to continue (summary: {out / summary_name(shard, base)})")
        raise KeyboardInterrupt from None
    return summary


def check_sweep_out(out: Path, sweep: Sweep) -> None:
    """Refuse an --out that holds someone else's files (a run directory, say): a sweep folder holds sweep
    summaries (sweep*.json), logs/, analysis/ and its runs' folders; a new or empty one is fine too."""
    from ..io import check_folder_is_ours

    own = {run.name for run in sweep.runs} | {"logs", "analysis"}
    check_folder_is_ours(out, "--out", "a sweep", lambda folder: not is_run(folder) and any(
        p.name in own or (p.name.startswith(SUMMARY.removesuffix(".json")) and p.suffix == ".json")
        for p in folder.iterdir()), hint="choose a new or empty folder, or the folder of an earlier run of this sweep")


def summary_name(shard, base: str = SUMMARY) -> str:
    """sweep.json (or `base`); a shard writes its own (shards may run at once on a shared directory)."""
    stem = base.removesuffix(".json")
    return base if shard is None or shard[1] == 1 else f"{stem}.shard{shard[0]}of{shard[1]}.json"


def _finish(job: _Job, code: int, results: dict, console, interrupted: bool = False) -> None:
    job.close()
    name = job.row["run"].name
    entry = results[name]
    entry.update(exit_code=code, seconds=round(time.time() - job.t0, 1), log=str(job.err_path))
    complete = RunDir(job.row["dir"]).is_complete()
    if code == 0 and complete:
        entry["status"] = "resumed" if job.row["action"] == "resume" else "done"
        console.print(f"[green]✓[/] {name} ({entry['status']}, {entry['seconds']:.0f} s)")
        return
    entry["status"] = "interrupted" if interrupted else "failed"
    entry["stderr_tail"] = _tail(job.err_path, job.err_start)
    if code == 0:
        entry["error"] = f"exited 0 without writing {EVAL}"
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
            code = subprocess.run(cmd, stdout=o, stderr=e, env=env, stdin=subprocess.DEVNULL,
                                  preexec_fn=die_with_parent).returncode
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


def _raise_stop(name: str):
    raise _StopSweep(name)


def _status(running, results) -> str:
    """What the bar shows beside the count: the runs running now (two named) and the failures so far."""
    failed = sum(1 for r in results.values() if r["status"] == "failed")
    names = ", ".join(j.row["run"].name for j in running[:2]) + (" …" if len(running) > 2 else "")
    return f"{len(running)} running" + (f" ({names})" if names else "") + (f", {failed} failed" if failed else "")
