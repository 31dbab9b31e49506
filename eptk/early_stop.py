"""Early stopping on validation loss (`--early-stop N`): stop when N evaluations in a row have not improved on the
best validation loss by at least `--early-stop-delta` (a fraction of it); the run keeps the prompt of its best
evaluation. Its state travels in checkpoints, so a resumed run stops where an uninterrupted one would."""
from __future__ import annotations

import math

import torch


class EarlyStop:
    def __init__(self, patience: int, delta: float = 0.0):
        self.patience, self.delta = int(patience), float(delta)
        self.best_loss, self.best_step, self.bad = math.inf, 0, 0
        self.best: dict[str, torch.Tensor] | None = None   # the prompt's parameters at the best evaluation
        self.stopped_at: int | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, step: int, val_loss: float, tensors: dict[str, torch.Tensor]) -> bool:
        """Record an evaluation; True when the run should stop here."""
        if val_loss < self.best_loss * (1.0 - self.delta) or self.best is None:
            self.best_loss, self.best_step, self.bad = float(val_loss), int(step), 0
            self.best = {k: v.detach().clone() for k, v in tensors.items()}
        else:
            self.bad += 1
        if self.bad >= self.patience:
            self.stopped_at = int(step)
            return True
        return False

    def summary(self, last_step: int) -> dict:
        """What eval.json records: whether the run stopped before its budget, where, and its best evaluation."""
        return {"patience": self.patience, "delta": self.delta, "stopped": self.stopped_at is not None,
                "step": self.stopped_at if self.stopped_at is not None else last_step,
                "best_step": self.best_step, "best_val_loss": self.best_loss}

    # ---- checkpoints ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"early.state": torch.tensor([self.best_loss, self.best_step, self.bad], dtype=torch.float64)}
        out.update({f"early.best.{k}": v for k, v in (self.best or {}).items()})
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if "early.state" not in tensors:
            return
        loss, step, bad = tensors["early.state"].tolist()
        self.best_loss, self.best_step, self.bad = loss, int(step), int(bad)
        best = {k[len("early.best."):]: v for k, v in tensors.items() if k.startswith("early.best.")}
        self.best = best or None
