"""Examples, tasks and their scores: exact match and SQuAD-normalized F1 (loss only on answer tokens).

Offline generators split by a hash of each example's content, so train/validation/test never share one.
"""
from __future__ import annotations

import hashlib
import random
import re
import string
from collections import Counter
from dataclasses import dataclass

from ..errors import EptkUsageError, choices

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    # (start, end) character spans of the prompt that are content, not template (the task's fixed words); empty
    # when a task does not say. The answer is content. Claim 4 of the study compares tasks on content tokens only.
    content: tuple = ()


class Task:
    """A named source of examples with a metric."""
    name = "task"
    metric = "exact_match"
    max_answer_tokens = 16

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        raise NotImplementedError

    def item_scores(self, predictions: list[str], answers: list[str]) -> list[dict]:
        """Each item's score: `exact_match` (0 or 1) and, for QA, `f1` (0..1)."""
        if not answers or len(predictions) != len(answers):
            raise ValueError(f"score needs one prediction per answer and at least one ({len(predictions)} "
                             f"predictions, {len(answers)} answers)")
        items = [{"exact_match": float(normalize_answer(p) == normalize_answer(a))} for p, a in zip(predictions, answers)]
        if self.metric == "f1":
            for item, p, a in zip(items, predictions, answers):
                item["f1"] = token_f1(p, a)
        return items

    def score(self, predictions: list[str], answers: list[str]) -> dict:
        """Mean exact match (and F1 for QA) in percent, over at least one answer (no made-up 0)."""
        return self.mean_score(self.item_scores(predictions, answers))

    def mean_score(self, items: list[dict]) -> dict:
        """The percent scores of a list of item scores (`item_scores`)."""
        out = {key: 100.0 * sum(i[key] for i in items) / len(items) for key in items[0]}
        out["score"] = out[self.metric]
        return out


def split_of(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


class GeneratedTask(Task):
    """Draws examples from `make(rng)` until the split has n of them; the split is a hash of the prompt."""
    default_sizes = {"train": 4000, "validation": 200, "test": 200}

    def __init__(self, seed: int = 0):
        self.seed = seed

    def make(self, rng: random.Random) -> Example:
        raise NotImplementedError

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise EptkUsageError(f"unknown split {split!r}; valid: {choices(SPLITS)}")
        n = self.default_sizes[split] if n is None else n
        rng = random.Random(f"{self.name}:{self.seed}:{split}")
        seen, out = set(), []
        for _ in range(200 * n + 1000):
            if len(out) >= n:
                break
            ex = self.make(rng)
            if ex.prompt in seen or split_of(ex.prompt) != split:
                continue
            seen.add(ex.prompt)
            out.append(ex)
        return out


# ---- scoring (SQuAD normalization) -----------------------------------------------------------------

def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) or ch == "-")
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if not pred or not gold:
        return float(pred == gold)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first newline."""
    return text.split("\n", 1)[0].strip()
