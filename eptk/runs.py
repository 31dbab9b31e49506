"""The run directory: config.json, prior/posterior safetensors, metrics.jsonl, eval.json, checkpoint/.

Every file is written atomically (temporary file + rename), a lock keeps a second `tune` out, and
the newest complete checkpoint is always loadable.
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


def is_run(path) -> bool:
    return (Path(path) / CONFIG).is_file()


class RunDir:
    """A run directory held for writing (with an exclusive lock)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def acquire(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "w")
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
        save_tensors_atomic(tmp / "state.safetensors", tensors)
        write_json_atomic(tmp / "state.json", dict(state, step=step))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", final.name + "\n")
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self):
        """(tensors, state) of the newest complete checkpoint, or None."""
        root = self.path / CHECKPOINTS
        candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
        for folder in candidates:
            if (folder / "state.json").is_file() and (folder / "state.safetensors").is_file():
                try:
                    return load_tensors(folder / "state.safetensors", "checkpoint"), \
                        read_json(folder / "state.json", "checkpoint state")
                except EptkUsageError:
                    continue  # a damaged checkpoint: fall back to the one before
        return None


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
    if out.is_dir() and any(p for p in out.iterdir() if p.name != ".lock") and not is_run(out) and not overwrite:
        raise EptkUsageError(f"--out {out} is a non-empty directory that is not a run; choose another --out")
    run = RunDir(out).acquire()
    if overwrite:
        run.reset()
    return run
