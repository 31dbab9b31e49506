"""The run directory: config.json, prior/posterior safetensors, metrics.jsonl, eval.json, checkpoint/.

This module alone knows the layout: everything else reads and writes a run through `RunDir`. Every
file is written atomically (temporary file + rename), a lock keeps a second `tune` out, and the newest
complete checkpoint is always loadable.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import torch

from .errors import EptkUsageError
from .io import append_jsonl, load_tensors, read_json, read_jsonl, save_tensors_atomic, write_json_atomic, \
    write_text_atomic

CONFIG, PRIOR, POSTERIOR, METRICS, EVAL, CHECKPOINTS = ("config.json", "prior.safetensors", "posterior.safetensors",
                                                        "metrics.jsonl", "eval.json", "checkpoint")
LOCK, STATE, STATE_TENSORS, LATEST = ".lock", "state.json", "state.safetensors", "latest"
TENSORS = {"prior": PRIOR, "posterior": POSTERIOR}
IMPORTED = "imported"  # the config "prior" of a run made from a PEFT adapter (no training state)


def is_run(path) -> bool:
    return (Path(path) / CONFIG).is_file()


def find_runs(paths) -> list[Path]:
    """Run directories under each path, sorted, without nesting (a run's checkpoint/ is not a run)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise EptkUsageError(f"no runs found under {path}: the path does not exist")
        if is_run(path):
            runs = [path]
        else:
            runs = []
            for cfg in sorted(path.rglob(CONFIG), key=lambda p: (len(p.parts), p)):  # outermost first
                run = cfg.parent
                if not any(parent in runs for parent in run.parents):
                    runs.append(run)
            runs.sort()
        if not runs:
            raise EptkUsageError(f"no runs found under {path}: a run directory holds {CONFIG}")
        found += [r for r in runs if r not in found]
    return found


class RunDir:
    """A run directory: read it freely; `acquire` it (an exclusive lock) to write it."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def acquire(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise EptkUsageError(f"another `eptk tune` is writing {self.path} (lock held)") from None
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle
        return self

    def release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def reset(self) -> None:
        """Remove what an earlier run left (only the run's own files)."""
        for name in (CONFIG, PRIOR, POSTERIOR, METRICS, EVAL):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / CHECKPOINTS, ignore_errors=True)

    # ---- files ---------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic(self.path / CONFIG, config)

    def config(self) -> dict:
        return read_json(self.path / CONFIG, "run config")

    def tensors_file(self, which: str) -> Path:
        """The file of the prior or posterior prompt tensors (`which` may also be that file's name)."""
        name = TENSORS.get(which, which)
        if name not in TENSORS.values():
            raise EptkUsageError(f"unknown prompt tensors {which!r}; valid: {', '.join(TENSORS)}")
        return self.path / name

    def tensors(self, which: str = "posterior", what: str | None = None) -> dict[str, torch.Tensor]:
        """The prior or posterior prompt tensors."""
        return load_tensors(self.tensors_file(which), what or f"{which} tensors")

    def has_tensors(self, which: str) -> bool:
        return (self.path / TENSORS[which]).is_file()

    def metrics(self) -> list[dict]:
        """The logged rows so far (a partial last line of a run still writing is skipped)."""
        return read_jsonl(self.path / METRICS)

    def eval(self) -> dict | None:
        """eval.json, or None before the run finished."""
        return read_json(self.path / EVAL, "eval") if self.is_complete() else None

    def is_complete(self) -> bool:
        return (self.path / EVAL).is_file()

    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists to resume from."""
        return any(self._complete(step) for step in self._steps())

    def resume_config(self) -> dict:
        """The config of a run to continue, refused when it has no training state."""
        if not is_run(self.path):
            raise EptkUsageError(f"--resume {self.path}: not a run directory (no {CONFIG})")
        config = self.config()
        if config.get("prior") == IMPORTED:
            raise EptkUsageError(f"--resume {self.path}: this run was imported from a PEFT adapter and has no "
                                 f"training state")
        return config

    def write_prior(self, tensors) -> None:
        save_tensors_atomic(self.path / PRIOR, tensors)

    def write_posterior(self, tensors) -> None:
        save_tensors_atomic(self.path / POSTERIOR, tensors)

    def log(self, row: dict) -> None:
        append_jsonl(self.path / METRICS, row)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after a checkpoint, so a resumed run does not repeat them."""
        rows = [r for r in read_jsonl(self.path / METRICS) if r.get("step", 0) <= after_step]
        write_text_atomic(self.path / METRICS, "".join(_jsonl(r) for r in rows))

    def write_eval(self, result: dict) -> None:
        write_json_atomic(self.path / EVAL, result)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict, keep: int = 2) -> None:
        """Write checkpoint/step-<N>/ through a temporary folder renamed into place, then point `latest` at it."""
        root = self.path / CHECKPOINTS
        root.mkdir(exist_ok=True)
        final = root / f"step-{step:08d}"
        tmp = root / f".tmp-step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_tensors_atomic(tmp / STATE_TENSORS, tensors)
        write_json_atomic(tmp / STATE, dict(state, step=step))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / LATEST, final.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self):
        """(tensors, state) of the newest complete checkpoint, or None."""
        for folder in reversed(self._steps()):
            if self._complete(folder):
                try:
                    return load_tensors(folder / STATE_TENSORS, "checkpoint"), read_json(folder / STATE, "checkpoint state")
                except EptkUsageError:
                    continue  # a damaged checkpoint: fall back to the one before
        return None

    def _steps(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        return sorted(root.glob("step-*")) if root.is_dir() else []

    @staticmethod
    def _complete(folder: Path) -> bool:
        return (folder / STATE).is_file() and (folder / STATE_TENSORS).is_file()


def _jsonl(row) -> str:
    import json
    return json.dumps(row, default=str) + "\n"


def prepare_out_dir(out: Path, config: dict, overwrite: bool, resume: bool) -> RunDir:
    """Refuse to clobber a different existing run unless --overwrite; lock the directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EptkUsageError(f"--out {out} exists and is not a directory")
    if resume:
        if not is_run(out):
            raise EptkUsageError(f"--resume {out}: not a run directory (no {CONFIG})")
        return RunDir(out).acquire()
    if is_run(out) and not overwrite:
        raise EptkUsageError(f"--out {out} already holds a run; pass --overwrite to replace it, "
                             f"or --resume {out} to continue it")
    if out.is_dir() and any(p for p in out.iterdir() if p.name != LOCK) and not is_run(out) and not overwrite:
        raise EptkUsageError(f"--out {out} is a non-empty directory that is not a run; choose another --out")
    run = RunDir(out).acquire()
    if overwrite:
        run.reset()
    return run
