"""`eptk.load_run`: a run directory back to a tuned, callable model."""
from __future__ import annotations

from pathlib import Path

from .errors import EptkUsageError
from .families import model_dims
from .methods import method_from_config
from .models import load_model
from .prompts import PromptedModel
from .runs import CONFIG, RunDir, is_run


def load_run(path, *, device: str = "cpu", backend: str = "auto", tensors: str = "posterior") -> PromptedModel:
    """The frozen model plus the run's posterior (or `tensors="prior"`)."""
    path = Path(path)
    if not is_run(path):
        raise EptkUsageError(f"{path} is not a run directory (no {CONFIG})")
    run = RunDir(path)
    config = run.config()
    loaded = load_model(config["model"], device=device,
                        trust_remote_code=bool(config.get("trust_remote_code", False)))
    values = run.tensors(tensors, "prompt tensors")
    dims = model_dims(loaded.model)
    if config.get("hidden_size") not in (None, dims["hidden_size"]):
        raise EptkUsageError(f"run {path} was tuned with width {config.get('hidden_size')}, model has "
                             f"{dims['hidden_size']}")
    prompted = PromptedModel(loaded.model, loaded.tokenizer, method_from_config(config, dims), values, backend)
    if config.get("sink_token_id") not in (None, prompted.sink_token_id):
        raise EptkUsageError(f"run {path} kept token {config['sink_token_id']} in its sink slot; this tokenizer's "
                             f"is {prompted.sink_token_id}")
    prompted.config = config
    return prompted
