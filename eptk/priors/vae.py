"""`vae[:latent]`: the paper's VAE prior. A small VAE (vae_net.py) is trained on first use on the reference
vectors of each prompted layer — the vocabulary rows (as layer-0 states) for the soft prompt, the task's
captured token activations (the statistics' reservoir) for a deep layer — and cached; the prior samples
through its decoder and its log-density is the VAE's ELBO (fixed noise draws: deterministic for MAP).

The VAE belongs to the prior, not to the run: it is trained with one fixed seed on the statistics of one
fixed capture seed (`PriorContext.reference_stats`), so every run seed draws from the same distribution.
Cache: <cache>/vae/<key>.safetensors (EPTK_CACHE), keyed by model, layer, a hash of the reference rows, the
latent size and the training recipe; written atomically; an unreadable entry is retrained.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math

import torch

from ..errors import EptkUsageError
from ..io import cache_dir, load_tensors, save_tensors_atomic
from ..progress import progress_bar
from .region import layer_stats_for
from .registry import KEY_VALUE_PRIORS, Distribution, check_width, register_prior, rows
from .vae_net import VAE, train_vae

log = logging.getLogger(__name__)

EPOCHS = 50               # passes over the reference rows, within STEPS_RANGE optimizer steps: 1500 for a
STEPS_RANGE = (300, 1500)  # vocabulary of 49k rows, 400 for a 2,048-row activation reservoir (which 1500
BATCH = 256                # steps overfit: sample variance 58% of the data's on SmolLM2 layer 29, 90% at 400)
HIDDEN_RANGE = (32, 256)  # hidden width: twice the data width, within this range (256 for SmolLM2's 576)
VAE_SEED = 0          # the VAE is part of the prior: the same for every run seed
ELBO_DRAWS = 8        # noise draws of the ELBO estimate (fixed at construction)
LATENT_RANGE = (1, 1024)
FORMAT = "eptk-vae/1"


class VAEPrior(Distribution):
    """Rows sampled through a trained VAE's decoder; log-density = the VAE's ELBO (see vae_net.py)."""

    def __init__(self, shape, vae: VAE):
        self.shape, self.vae = tuple(shape), vae
        self.eps = torch.randn(ELBO_DRAWS, vae.latent, generator=torch.Generator().manual_seed(VAE_SEED + 1))

    def sample(self, generator):
        return self.vae.sample(rows(self.shape), generator).reshape(self.shape)

    def log_prob(self, x):
        return self.vae.elbo(x.reshape(-1, self.vae.dim), self.eps).sum()

    def to(self, device):
        self.vae.to(device)
        self.eps = self.eps.to(device)
        return self


def _parse_latent(rest):
    if rest is None or rest == "":
        return {"latent": 16}
    try:
        latent = int(rest)
    except ValueError:
        latent = 0
    lo, hi = LATENT_RANGE
    if not lo <= latent <= hi:
        raise EptkUsageError(f"prior vae:{rest}: latent must be an integer in {lo}..{hi}, e.g. vae:16")
    return {"latent": latent}


def reference_rows(ctx, param) -> tuple[torch.Tensor, str]:
    """What the VAE of a prompt tensor learns: vocabulary rows for layer 0, the task's captured token
    activations (fixed capture seed) for a deep layer."""
    if not param.residual:
        raise EptkUsageError(f"prior 'vae' serves soft and deep prompts; prefix tensors are keys/values, which it "
                             f"has no reference vectors for (a prefix takes {', '.join(KEY_VALUE_PRIORS)})")
    if param.layer == 0:
        emb = ctx.need_embeddings("vae")
        check_width("vae", param, emb.shape[1])
        return emb, "vocabulary"
    stats = layer_stats_for("vae", ctx, param, None, reference=True)
    return stats.samples, f"activations of {ctx.task} at layer {param.layer}"


def training_steps(n_rows: int) -> int:
    lo, hi = STEPS_RANGE
    return int(min(hi, max(lo, math.ceil(EPOCHS * n_rows / min(BATCH, n_rows)))))


def hidden_width(dim: int) -> int:
    lo, hi = HIDDEN_RANGE
    return int(min(hi, max(lo, 2 * dim)))


def cache_key(model, layer: int, reference: str, rows_: torch.Tensor, latent: int) -> str:
    """The cache entry of a VAE: model, layer, the reference rows' content, latent size and recipe."""
    content = hashlib.sha256(rows_.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    blob = json.dumps({"model": model, "layer": layer, "reference": reference, "content": content,
                       "shape": list(rows_.shape), "latent": latent, "hidden": hidden_width(rows_.shape[1]),
                       "steps": training_steps(rows_.shape[0]), "batch": BATCH, "seed": VAE_SEED, "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_or_train(rows_: torch.Tensor, key: str, latent: int, what: str, progress: bool = False) -> VAE:
    """The cached VAE under `key`, or a newly trained one, stored atomically."""
    path = cache_dir() / "vae" / f"{key}.safetensors"
    if path.is_file():
        vae = VAE(int(rows_.shape[1]), latent, hidden_width(rows_.shape[1]))
        try:
            vae.load_state_dict(load_tensors(path, "cached VAE"))
            return vae.eval().requires_grad_(False)
        except (EptkUsageError, RuntimeError) as exc:
            log.warning("retraining: cached VAE %s is unreadable (%s)", path, str(exc).splitlines()[0])
    log.info("training the vae:%d prior on %d rows (%s)", latent, rows_.shape[0], what)
    steps = training_steps(rows_.shape[0])
    with progress_bar(progress, f"training the vae:{latent} prior on {what}", steps) as advance:
        vae, info = train_vae(rows_, latent=latent, hidden=hidden_width(rows_.shape[1]), steps=steps, batch=BATCH,
                              seed=VAE_SEED, advance=advance)
    save_tensors_atomic(path, dict(vae.state_dict()), metadata={"info": json.dumps(info), "reference": what,
                                                                "format": FORMAT})
    return vae


@register_prior("vae", "[:latent]", "samples through the decoder of a small VAE trained on the layer's reference "
                "vectors (vocabulary rows for soft, captured activations for deep layers; paper), cached; "
                "log-density: its ELBO; latent default 16", parse=_parse_latent, needs_stats=True)
def _vae(args, ctx, param):
    rows_, reference = reference_rows(ctx, param)
    key = cache_key(ctx.model, param.layer, reference, rows_, args["latent"])
    return VAEPrior(param.shape, load_or_train(rows_, key, args["latent"], reference, ctx.progress))
