"""Named registries (methods, priors, tasks, model families) with one-line errors naming the valid entries.

Each registry fills itself when the modules of its package are imported: `import_modules` imports every
module of a package (in name order), so adding an entry is adding one file.
"""
from __future__ import annotations

import importlib
import pkgutil

from .errors import EptkUsageError, choices


class Registry(dict):
    """name -> entry, in registration order. `registry[name]` of an unknown name is a usage error that
    lists the valid ones, each as `usage(entry)`."""

    def __init__(self, kind: str, usage=lambda entry: entry.name):
        super().__init__()
        self.kind, self.usage = kind, usage

    def register(self, name: str, entry):
        self[name] = entry
        return entry

    def choices(self) -> str:
        return choices(self.usage(entry) for entry in self.values())

    def __missing__(self, name):
        raise EptkUsageError(f"unknown {self.kind} {name!r}; valid: {self.choices()}")

    def match(self, spec: str):
        """(entry, rest) for a spec `name[:rest]`: the longest registered name that is the spec or prefixes
        it before a colon (rest is None without a colon); None when no name matches."""
        for name in sorted(self, key=len, reverse=True):
            if spec == name or spec.startswith(name + ":"):
                return self[name], (spec[len(name) + 1:] if spec != name else None)
        return None


def import_modules(package: str, path) -> None:
    """Import every module of a package (its `__name__` and `__path__`), so each registers its entries."""
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        importlib.import_module(f"{package}.{module.name}")
