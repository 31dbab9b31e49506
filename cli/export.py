"""`eptk export RUN --format peft --out DIR` and `eptk import-peft DIR --out RUN` (eptk/peft_io.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the adapter (adapter_config.json + "
                                                           "adapter_model.safetensors).")],
    fmt: Annotated[str, typer.Option("--format", help="Adapter format: peft (soft -> PROMPT_TUNING, "
                                                      "deep/prefix -> PREFIX_TUNING).")] = "peft",
    device: Annotated[str, typer.Option(help="Device for the slot pass of deep runs (cpu, cuda, cuda:N).")] = "cpu",
) -> None:
    """Export a tuned prompt as an adapter that PeftModel.from_pretrained(base_model, DIR) loads."""
    from eptk.peft_io import describe, export as run_export

    folder = run_export(run, out, fmt, device=device)
    typer.echo(f"wrote {describe(folder)}")


@app.command("import-peft")
def import_peft(
    adapter: Annotated[Path, typer.Argument(help="A PEFT prompt-tuning or prefix-tuning adapter folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    model: Annotated[Optional[str], typer.Option(help="Base model (default: the one the adapter names).")] = None,
    task: Annotated[Optional[str], typer.Option(help="Task the prompt was tuned on (lets `eptk analyze` match "
                                                     "captured statistics).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run at --out.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a hub model's own code.")] = False,
    allow_pickle_weights: Annotated[bool, typer.Option(help="Load a base model whose weights exist only as pickle "
                                                            "files (unpickling can run code).")] = False,
) -> None:
    """Turn a PEFT prompt/prefix adapter into a run directory (prior = posterior = the adapter's tensors)."""
    from eptk.peft_io import import_peft as run_import

    folder = run_import(adapter, out, model=model, task=task, overwrite=overwrite,
                        trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
    typer.echo(f"wrote {folder}")
