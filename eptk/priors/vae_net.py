"""A small Gaussian VAE over reference vectors (vocabulary rows or captured activations), the network of the
`vae` prior (eptk/priors/vae.py).

Model. Rows are standardized per dimension (mean m, std s) to y. Encoder: y -> MLP -> (μ_q, log σ²_q) of a
`latent`-dim z; decoder: z -> MLP -> μ_p, with a learned per-dimension observation log-variance log σ²_p.
p(z) = N(0, I), p(y|z) = N(μ_p(z), diag σ²_p). Samples are x = m + s·(μ_p(z) + σ_p·ε): the full generative
model, whose second moments follow the data's (the decoder mean alone is a smoothed, lower-variance cloud).

log-density: the ELBO, log p(x) ≥ E_q[log p(y|z)] − KL(q(z|y) ‖ p(z)) − Σ log s, estimated with a fixed set
of noise draws (common random numbers): deterministic and differentiable in x, so a MAP term built on it
gives smooth, repeatable gradients.
"""
from __future__ import annotations

import math

import torch
from torch import nn

LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(±logvar) finite for rows far from the data


class VAE(nn.Module):
    def __init__(self, dim: int, latent: int = 16, hidden: int = 256):
        super().__init__()
        self.dim, self.latent, self.hidden = dim, latent, hidden
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, dim))
        self.obs_logvar = nn.Parameter(torch.zeros(dim))
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(y).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def log_likelihood(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log N(y; decoder(z), diag exp(obs_logvar)), summed over dimensions. y [..., d], z [..., k]."""
        logvar = self.obs_logvar.clamp(*LOGVAR_RANGE)
        r = y - self.decoder(z)
        return -0.5 * (r * r * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)

    def elbo(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-row ELBO of x [n,d] in the original space (the standardization's Jacobian included),
        averaged over the K noise draws eps [K,k]."""
        y = self.standardize(x)
        mu, logvar = self.encode(y)
        z = mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps.unsqueeze(1)   # [K,n,k]
        rec = self.log_likelihood(y.unsqueeze(0), z).mean(0)                            # [n]
        return rec - kl_standard_normal(mu, logvar) - self.scale.log().sum()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n rows [n,d] on the CPU; the noise comes from `generator` (a CPU generator) on any device."""
        device = self.shift.device
        z = torch.randn(n, self.latent, generator=generator).to(device)
        noise = torch.randn(n, self.dim, generator=generator).to(device)
        y = self.decoder(z) + torch.exp(0.5 * self.obs_logvar.clamp(*LOGVAR_RANGE)) * noise
        return (self.shift + self.scale * y).cpu()


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) ‖ N(0, I)) per row."""
    return 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar).sum(-1)


def train_vae(rows: torch.Tensor, *, latent: int = 16, hidden: int = 256, steps: int = 1500, batch: int = 256,
              lr: float = 2e-3, seed: int = 0, advance=None) -> tuple[VAE, dict]:
    """Fit a VAE to rows [n,d] on the CPU (float32, deterministic for a seed) by Adam on the negative ELBO: one
    reparameterized draw per row per step, the KL annealed in over the first 20% of steps, cosine decay to
    10% of `lr`. `advance()` is called once per step. Returns the model (eval mode, frozen) and a log."""
    x = rows.detach().float().cpu()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a VAE needs at least 2 reference rows (got {n})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is faster, and the result is the same on every machine
    try:
        return _train(x, latent, hidden, steps, batch, lr, seed, advance)
    finally:
        torch.set_num_threads(threads)


def _train(x, latent, hidden, steps, batch, lr, seed, advance):
    n, d = x.shape
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VAE(d, latent, hidden)
    std = x.std(0)
    vae.shift.copy_(x.mean(0))
    vae.scale.copy_(std.clamp_min(1e-6 * float(std.max().clamp_min(1e-12))))  # constant dimensions stay finite
    y_all = vae.standardize(x)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    warm = max(1, steps // 5)
    for step in range(steps):
        y = y_all[torch.randint(n, (min(batch, n),), generator=g)]
        mu, logvar = vae.encode(y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
        beta = min(1.0, (step + 1) / warm)
        loss = -(vae.log_likelihood(y, z) - beta * kl_standard_normal(mu, logvar)).mean() / d
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps)))
        if advance is not None:
            advance()
    vae.eval()
    vae.requires_grad_(False)
    eps = torch.randn(8, latent, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        probe = x[torch.randperm(n, generator=g)[:2048]]
        final = float(vae.elbo(probe, eps).mean())
    return vae, {"rows": n, "dim": d, "latent": latent, "hidden": hidden, "steps": steps, "seed": seed,
                 "train_elbo": final}
