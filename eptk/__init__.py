"""eptk: prompt-tuning with controlled embedding priors, collapse metrics and Triton kernels."""
from .version import __version__


def load_run(path, **kwargs):
    """A tuned model from a run directory, callable like an HF causal LM (logits cover real tokens)."""
    from .loading import load_run as _load_run
    return _load_run(path, **kwargs)


__all__ = ["load_run", "__version__"]
