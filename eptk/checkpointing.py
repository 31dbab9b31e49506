"""Gradient checkpointing of the frozen model's decoder layers (`eptk tune --grad-checkpointing`).

Inside `recompute_layers`, each decoder layer keeps only its inputs in the forward and runs again in
the backward (torch.utils.checkpoint, non-reentrant). The backward runs after the pass's context has
closed, so the rerun re-enters the pass state the layer first saw: without it the token pass would
recompute its attention without the prefix and deep's hooks would leave the slot states alone, and
the gradients would be wrong.

Hugging Face's `GradientCheckpointingLayer` calls the checkpoint function only in training mode. The
frozen model stays in eval mode (dropout off); only each decoder layer module's own flag flips while
a pass runs, and no supported family's layer forward reads it.
"""
from __future__ import annotations

import contextlib

from torch.utils.checkpoint import checkpoint

from .attention import active, current_pass
from .errors import EptkUsageError

_FLAGS = ("gradient_checkpointing", "_gradient_checkpointing_func", "training")


def check_checkpointable(layers) -> None:
    """Refuse decoder layers that Hugging Face cannot checkpoint (a model with its own layer code)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for layer in layers:
        if not isinstance(layer, GradientCheckpointingLayer):
            raise EptkUsageError(f"--grad-checkpointing: the decoder layers of this model "
                                 f"({type(layer).__name__}) do not support gradient checkpointing; "
                                 f"tune without it")


def checkpoint_in_pass(function, *args):
    """`function(*args)` under torch.utils.checkpoint, recomputed in the pass that is active now."""
    state = current_pass()
    calls = 0

    def run(*inner):
        nonlocal calls
        calls += 1
        replay = state if calls == 1 or state is None else state.for_recompute()
        with active(replay):
            return function(*inner)
    return checkpoint(run, *args, use_reentrant=False)


@contextlib.contextmanager
def recompute_layers(layers):
    """Every layer in `layers` (GradientCheckpointingLayer) is checkpointed inside; restored after."""
    saved = [{k: layer.__dict__[k] for k in _FLAGS if k in layer.__dict__} for layer in layers]
    try:
        for layer in layers:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = checkpoint_in_pass
            layer.training = True  # the layer module only (not .train(): dropout stays off)
        yield
    finally:
        for layer, before in zip(layers, saved):
            for key in _FLAGS:
                if key in before:
                    layer.__dict__[key] = before[key]
                else:
                    layer.__dict__.pop(key, None)
