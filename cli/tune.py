"""`eptk tune`, `eptk eval`, `eptk generate`: argument parsing over eptk.commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from eptk.config import TuneConfig
from eptk.tasks import task_choices

from .app import DEVICE_HELP, DEVICE_MAP_HELP, OFFLOAD_HELP, app

D = TuneConfig()  # defaults live in one place


class TuneCommand(TyperCommand):
    """`eptk tune`, whose help ends with every method and its own options, read from the methods' declarations
    (eptk/methods/) when the help is shown: the CLI itself may not import the methods (torch)."""

    @property
    def epilog(self) -> str:
        from rich.markup import escape

        from eptk.methods import METHODS
        from eptk.options import describe

        parts = ["Methods (--method) and their own options, given after the method:"]
        for name, cls in METHODS.items():
            options = describe(cls.Options)
            listed = "; ".join(f"{flag}: {text}" for flag, text in options) if options else "no options"
            parts.append(escape(f"{name}: {listed}"))
        return "\n\n".join(parts)

    @epilog.setter
    def epilog(self, value) -> None:
        pass  # computed when shown


@app.command(cls=TuneCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune(
    ctx: typer.Context,
    model: str = typer.Option(D.model, help="smollm2 (default), gemma3-270m, tiny, tiny:<family>, a local dir, a .gguf, a hub id"),
    task: str = typer.Option(D.task, help=task_choices()),
    method: str = typer.Option(D.method, help="the prompt method; each is listed below with its own options"),
    prior: str = typer.Option(D.prior, help="prior spec family[:args]; see `eptk priors`"),
    prior_weight: float = typer.Option(D.prior_weight, help="MAP term weight: loss += -λ·log p(θ)/n"),
    prior_jitter: float = typer.Option(D.prior_jitter, help="multiply the prior sample by 1 + R·N(0,1) (R relative, "
                                       "e.g. 1e-7): how much a run depends on its exact start"),
    tokens: int = typer.Option(D.tokens, help="prompt length P (slots)"),
    steps: int = typer.Option(D.steps, help="optimizer steps"),
    batch_size: int = typer.Option(D.batch_size, help="examples per micro-batch"),
    grad_accum: int = typer.Option(D.grad_accum, help="micro-batches per step"),
    lr: float = typer.Option(D.lr, help="peak learning rate (AdamW)"),
    weight_decay: float = typer.Option(D.weight_decay),
    schedule: str = typer.Option(D.schedule, help="cosine, linear or constant (after warm-up)"),
    warmup: int = typer.Option(D.warmup, help="warm-up steps"),
    clip: float = typer.Option(D.clip, help="gradient-norm clip (0: off)"),
    eval_every: int = typer.Option(D.eval_every, help="validation every N steps (0: only at the end)"),
    eval_size: int = typer.Option(D.eval_size, help="validation examples"),
    test_size: int = typer.Option(D.test_size, help="test examples for eval.json"),
    train_size: int = typer.Option(D.train_size, help="training examples drawn from the task"),
    checkpoint_every: int = typer.Option(D.checkpoint_every, help="checkpoint every N steps (0: only at the end)"),
    early_stop: int = typer.Option(D.early_stop, help="stop after N validations that do not improve the best "
                                   "validation loss, keeping the best prompt (0: off; needs --eval-every)"),
    early_stop_delta: float = typer.Option(D.early_stop_delta, help="an improvement is a drop of at least this "
                                           "share of the best validation loss"),
    seed: int = typer.Option(D.seed),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<model>-<task>-<method>-<prior>-s<seed>)"),
    backend: str = typer.Option(D.backend, help="prefix-attention kernel: auto (Triton on CUDA), triton, torch"),
    grad_checkpointing: bool = typer.Option(D.grad_checkpointing, help="recompute the frozen model's layers in "
                                            "backward: less memory for long sequences, about a third more time"),
    device: str = typer.Option(D.device, help=DEVICE_HELP),
    device_map: str = typer.Option(D.device_map, help=DEVICE_MAP_HELP),
    offload_dir: str = typer.Option(D.offload_dir, help=OFFLOAD_HELP),
    nan_policy: str = typer.Option(D.nan_policy, help="stop or skip on a non-finite loss/gradient"),
    lr_scale: str = typer.Option(D.lr_scale, help="prior: each tensor's lr × its prior sample's RMS / the soft "
                                 "prompt's (deep vectors move at their layer's scale); none: one lr"),
    stats_samples: int = typer.Option(D.stats_samples, help="reservoir size for region priors' captured stats"),
    trust_remote_code: bool = typer.Option(False, help="allow a hub model's own code (off unless asked)"),
    allow_pickle_weights: bool = typer.Option(False, help="load a model whose weights exist only as pickle files "
                                              "(pytorch_model.bin; unpickling can run code): off unless asked"),
    overwrite: bool = typer.Option(False, help="replace an existing run at --out"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory from its newest checkpoint "
                                          "with its own settings; --steps N extends (or shortens) it, the "
                                          "schedule decaying over N from there; other settings must match"),
    config: Optional[Path] = typer.Option(None, help="rerun from a run's config.json; options given with it "
                                          "override its settings"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Prompt-tune a frozen causal LM from a chosen prior and write a run directory. The method's own options
    (listed below) follow the others: eptk tune --method deep --layers all --no-soft"""
    from eptk import commands

    settings = dict(model=model, task=task, method=method, prior=prior, prior_weight=prior_weight,
                    prior_jitter=prior_jitter, tokens=tokens,
                    steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                    weight_decay=weight_decay, schedule=schedule, warmup=warmup, clip=clip, eval_every=eval_every,
                    eval_size=eval_size, test_size=test_size, train_size=train_size,
                    checkpoint_every=checkpoint_every, early_stop=early_stop, early_stop_delta=early_stop_delta,
                    seed=seed, out=str(out) if out else "", backend=backend,
                    grad_checkpointing=grad_checkpointing, device=device, nan_policy=nan_policy, lr_scale=lr_scale,
                    device_map=device_map, offload_dir=offload_dir,
                    trust_remote_code=trust_remote_code, stats_samples=stats_samples,
                    allow_pickle_weights=allow_pickle_weights)
    commands.tune(settings, given=given_options(ctx, settings), method_args=list(ctx.args), resume=resume,
                  config=config, overwrite=overwrite, progress=not quiet)


def given_options(ctx: typer.Context, names) -> list[str]:
    """The options the user gave (on the command line or through the environment), not left at defaults."""
    return [name for name in names if (source := ctx.get_parameter_source(name)) is not None
            and source.name not in ("DEFAULT", "DEFAULT_MAP")]


@app.command("eval")
def eval_command(
    run: Path = typer.Argument(..., help="run directory"),
    task: Optional[str] = typer.Option(None, help="task to score on (default: the run's task)"),
    split: str = typer.Option("test", help="train, validation or test"),
    size: int = typer.Option(200, help="examples"),
    backend: str = typer.Option("auto", help="prefix-attention kernel: auto (Triton on CUDA), triton, torch"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    device_map: str = typer.Option("", help=DEVICE_MAP_HELP),
    offload_dir: str = typer.Option("", help=OFFLOAD_HELP),
    save: bool = typer.Option(False, help="keep the scores and each item's prediction in the run "
                              "(eval-<split>-<size>.json, predictions-<split>-<size>.jsonl)"),
) -> None:
    """Score a tuned run (and the no-prompt baseline) on a task split."""
    from eptk import commands

    commands.evaluate(run, task, split, size, backend, device=device, device_map=device_map, offload_dir=offload_dir,
                      save=save)


@app.command()
def generate(
    run: Path = typer.Argument(..., help="run directory"),
    text: str = typer.Argument(..., help="the prompt text"),
    max_new_tokens: int = typer.Option(32),
    sample: bool = typer.Option(False, help="sample instead of greedy"),
    temperature: float = typer.Option(1.0),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    device_map: str = typer.Option("", help=DEVICE_MAP_HELP),
    offload_dir: str = typer.Option("", help=OFFLOAD_HELP),
) -> None:
    """Continue TEXT with the tuned prompt in front."""
    from eptk import commands

    commands.generate(run, text, max_new_tokens, sample, temperature, seed, device=device, device_map=device_map,
                      offload_dir=offload_dir)
