"""What the reparameterized methods share: starting an encoder so that the prompt it produces is a prior's sample.

A prior samples the prompt (soft vectors, per-layer keys/values); a reparameterized method trains an encoder that
produces it. Its last layer is linear, so it can be started at the sample: its weight is the least-squares
(minimum-norm) solution of last(hidden) = sample over the P slot rows, exact when the hidden width is at least P
(and the hidden rows are independent), the nearest the encoder reaches otherwise.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def fit_output_layer(layer: nn.Linear, hidden: torch.Tensor, target: torch.Tensor) -> None:
    """Set `layer.weight` (bias kept) so that layer(hidden [P,h]) equals target [P,out] (least squares).

    An all-zero target (the `zero` prior) is reached exactly by weight 0 and bias 0: least squares would leave
    rounding in it. The weight still gets a gradient (Σ_p g_p h_pᵀ), so the encoder trains from the first step."""
    with torch.no_grad():
        if not bool(target.any()):
            layer.weight.zero_()
            layer.bias.zero_()
            return
        rhs = (target.double() - layer.bias.double()).to(hidden.device)
        solution = torch.linalg.lstsq(hidden.double(), rhs, driver="gelsd").solution  # [h, out]
        layer.weight.copy_(solution.T.to(layer.weight.dtype))


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generator seeded inside (an nn.Module's default initialization), restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
