"""eptk.kernels: Triton kernels with one PyTorch reference each.

`backend="auto"` runs Triton on CUDA tensors and the reference elsewhere; `backend="triton"` also
runs on the CPU under TRITON_INTERPRET=1; `backend="torch"` always runs the reference.
"""
from __future__ import annotations

import os

from ._interpreter import kernel_module
from .reference import CaptureStats, capture_stats_reference, prefix_attention_reference

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(backend: str, tensor) -> bool:
    """Whether a kernel call with this backend on this tensor goes to Triton."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package")
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1")
        return True
    return tensor.is_cuda and triton_available()


def prefix_attention(q, k, v, prefix_k, prefix_v, *, key_padding_mask=None, scale=None,
                     return_prefix_mass=False, backend="auto", window=None, softcap=None):
    """Attention over [shared prefix ; sequence], optionally with a sliding window and a logit
    soft-cap; see kernels/reference.py for the exact function."""
    fn = prefix_attention_reference
    if use_triton(backend, q):
        fn = kernel_module("prefix_attention_triton").prefix_attention_triton
    return fn(q, k, v, prefix_k, prefix_v, key_padding_mask=key_padding_mask, scale=scale,
              return_prefix_mass=return_prefix_mass, window=window, softcap=softcap)


def capture_stats(hidden, mask, *, backend="auto") -> CaptureStats:
    """pooled [B,d], count, sum [d], gram [d,d] over the real tokens of hidden [B,T,d], in float32."""
    if use_triton(backend, hidden):
        return kernel_module("capture_stats_triton").capture_stats_triton(hidden, mask)
    return capture_stats_reference(hidden, mask)


__all__ = ["prefix_attention", "capture_stats", "CaptureStats", "prefix_attention_reference",
           "capture_stats_reference", "use_triton", "triton_available", "kernel_module", "BACKENDS"]
