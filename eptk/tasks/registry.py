"""The task registry: a spec `family[:args]` names a task, the way priors are named.

A family registers `build(args, seed) -> Task` under its name; `load_task` picks the longest registered
name that prefixes the spec. `task_choices()` lists the families for help texts and errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import EptkUsageError
from ..registry import Registry


@dataclass
class TaskFamily:
    name: str
    args: str                                   # how its arguments read: "[:OPS[:DIGITS]]", ":<path>", ""
    build: Callable[[str | None, int], object]  # (the text after "name:", or None; seed) -> Task
    takes_args: bool = False                    # "name:..." is valid (otherwise only the bare name)
    needs_args: bool = False                    # the bare name is not valid


TASKS = Registry("task", usage=lambda family: f"{family.name}{family.args}")


def register_task(name: str, args: str = ""):
    """Decorator registering `build(args, seed) -> Task` under `name`. The args form tells whether the
    family takes arguments (`[:...]` optional, `:<...>` required)."""
    def wrap(build):
        TASKS.register(name, TaskFamily(name, args, build, takes_args=bool(args), needs_args=args.startswith(":")))
        return build
    return wrap


def task_choices() -> str:
    return TASKS.choices()


def load_task(spec: str, seed: int = 0):
    """The task a spec names, seeded; an unknown spec is a usage error that lists the valid ones."""
    spec = (spec or "").strip()
    found = TASKS.match(spec)
    if found is not None:
        family, rest = found
        if (rest is None and not family.needs_args) or (rest is not None and family.takes_args):
            return family.build(rest, seed)
    raise EptkUsageError(f"unknown task {spec!r}; valid: {task_choices()}")
