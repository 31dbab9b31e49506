"""Tasks: seeded offline generators (generated.py) and record-backed ones (records.py), registered by name.

Importing the package registers every task module in it; `load_task(spec, seed)` builds one.
"""
from ..registry import import_modules
from .base import SPLITS, Example, GeneratedTask, Task, first_line, normalize_answer, token_f1
from .registry import TASKS, TaskFamily, load_task, register_task, task_choices

import_modules(__name__, __path__)

__all__ = ["SPLITS", "TASKS", "Example", "GeneratedTask", "Task", "TaskFamily", "first_line", "load_task",
           "normalize_answer", "register_task", "task_choices", "token_f1"]
