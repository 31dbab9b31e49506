"""`deep-lowrank`: a deep prompt whose per-layer slot states are low-rank, deep.l = U_l · V with one basis V
[r,d] shared by every chosen layer and a factor U_l [P,r] per layer (the soft vectors, if any, stay full).

No peer method has it: it is here to show that a method whose parameters are not its prompt is one file. It
runs exactly as `deep` (its prompt tensors, hooks, priors, analysis and PEFT export are deep's); only the
parameters differ: `soft`, `factors` [n_layers,P,r] and `basis` [r,d]. They start at the best rank-r
approximation of the prior's sample of the deep states (truncated SVD over every layer's rows at once; the
singular values split evenly between factors and basis); ranks past the sample's own get zero factors and
small random basis rows, so that they still train (all of them for the zero prior: exactly zero states that train). PEFT: exported as PREFIX_TUNING like `deep`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..options import option
from .base import PromptParameters, register_method
from .deep import DeepOptions, DeepPrompt


@dataclass(frozen=True)
class LowRankOptions(DeepOptions):
    rank: int = option(4, "the rank r of the deep slot states: deep.l = U_l · V, V [r,d] shared by the layers",
                       low=1, high=4096, in_name=lambda r: f"r{r}")


class LowRankSlots(PromptParameters):
    """soft [P,d] (optional), factors [n,P,r], basis [r,d] -> soft and deep.<l> = factors[i] @ basis."""

    def __init__(self, layers: list[int], soft, factors: torch.Tensor, basis: torch.Tensor):
        super().__init__()
        self.layers = list(layers)
        self.soft = nn.Parameter(soft.detach().clone().float()) if soft is not None else None
        self.factors = nn.Parameter(factors.float())
        self.basis = nn.Parameter(basis.float())

    def tensor(self, name):
        if name == "soft":
            return self.soft
        return self.factors[self.layers.index(int(name.split(".")[1]))] @ self.basis

    def prompt(self):
        out = {"soft": self.soft} if self.soft is not None else {}
        states = self.factors @ self.basis
        out.update({f"deep.{l}": states[i] for i, l in enumerate(self.layers)})
        return out

    def lr_scales(self, prompt_scales):
        """The factors and the basis each take the square root of the deep states' mean rate (their product
        moves by both)."""
        deep = [prompt_scales[f"deep.{l}"] for l in self.layers]
        shared = (sum(deep) / len(deep)) ** 0.5
        return {name: (prompt_scales["soft"] if name == "soft" else shared) for name in self.named()}


@register_method
class LowRankDeepPrompt(DeepPrompt):
    name = "deep-lowrank"
    Options = LowRankOptions

    def build_parameters(self, init, seed=0):
        n, P, d, r = len(self.layers), self.tokens, self.dims["hidden_size"], self.options.rank
        rows = torch.stack([init[f"deep.{l}"].float() for l in self.layers]).reshape(n * P, d)
        u, s, vh = torch.linalg.svd(rows.double(), full_matrices=False)
        k = min(r, int((s > s.max() * 1e-12).sum()))  # the sample's own rank (0 for the zero prior)
        root = s[:k].sqrt()
        factors, basis = torch.zeros(n * P, r), torch.zeros(r, d)
        factors[:, :k], basis[:k] = (u[:, :k] * root).float(), (root[:, None] * vh[:k]).float()
        if k < r:  # ranks the sample does not use: zero factors, small basis rows (seeded), so both get gradients
            scale = float(rows.pow(2).mean().sqrt()) or 1.0
            basis[k:] = scale * torch.randn(r - k, d, generator=torch.Generator().manual_seed(seed)) / d ** 0.5
        return LowRankSlots(self.layers, init.get("soft") if self.soft else None, factors.reshape(n, P, r), basis)
