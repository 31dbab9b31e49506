"""What differs between the transformers releases eptk runs on (pyproject.toml gives the tested range), in one
place: callers pass and read the KV cache through these instead of spelling one release's names."""
from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def cache_parameter(function) -> str:
    """The name `function` (a model's forward, a mask builder) takes the KV cache under: `cache`
    (transformers 5.2x renamed it; `past_key_values` is deprecated there) or `past_key_values`."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """{name: cache} for calling `model` with a KV cache under the name its transformers release expects."""
    return {cache_parameter(type(model).forward): cache}


def returned_cache(output):
    """The KV cache a model output carries (`cache` in newer releases, `past_key_values` before)."""
    fields = getattr(output, "__dataclass_fields__", {})
    return getattr(output, "cache", None) if "cache" in fields else getattr(output, "past_key_values", None)
