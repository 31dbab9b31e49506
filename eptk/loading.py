"""`eptk.load_run`: a run directory back to a tuned, callable model."""
from __future__ import annotations

from pathlib import Path

from .errors import EptkUsageError
from .io import load_tensors
from .models import load_model
from .prompts import PromptedModel
from .runs import CONFIG, POSTERIOR, is_run, RunDir


def load_run(path, *, device: str = "cpu", backend: str = "auto", tensors: str = POSTERIOR) -> PromptedModel:
    """The frozen model plus the run's posterior (or `tensors="prior.safetensors"`)."""
    path = Path(path)
    if not is_run(path):
        raise EptkUsageError(f"{path} is not a run directory (no {CONFIG})")
    config = RunDir(path).config()
    loaded = load_model(config["model"], device=device,
                        trust_remote_code=bool(config.get("trust_remote_code", False)))
    values = load_tensors(path / tensors, "prompt tensors")
    hidden = loaded.model.config.hidden_size
    if config.get("hidden_size") not in (None, hidden):
        raise EptkUsageError(f"run {path} was tuned with width {config.get('hidden_size')}, model has {hidden}")
    prompted = PromptedModel(loaded.model, loaded.tokenizer, config["method"], int(config["tokens"]),
                             config.get("layers") or [], bool(config.get("soft", True)), values, backend)
    prompted.config = config
    return prompted
