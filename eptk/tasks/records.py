"""Tasks held as records: a local JSONL file, or a split of a `datasets` dataset (squad, math, c4, hf:<name>;
`datasets` is imported only here, when such a task loads)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EptkUsageError, choices
from .base import SPLITS, Example, Task, split_of
from .registry import register_task


class Records(Task):
    """Examples held in memory (from JSONL or a datasets split)."""
    def __init__(self, name: str, splits: dict[str, list[Example]], metric: str = "exact_match"):
        self.name, self.splits, self.metric = name, splits, metric
        longest = max((len(e.answer) for rows in splits.values() for e in rows), default=16)
        self.max_answer_tokens = min(64, max(8, longest // 2 + 4))

    def examples(self, split, n=None):
        if split not in SPLITS:
            raise EptkUsageError(f"unknown split {split!r}; valid: {choices(SPLITS)}")
        rows = self.splits.get(split) or []
        return rows if n is None else rows[:n]


def load_jsonl(path: str, seed: int = 0) -> Records:
    """A JSONL file of {"prompt", "answer"} rows (optional "split"); unsplit rows are split by hash."""
    p = Path(path)
    if not p.is_file():
        raise EptkUsageError(f"jsonl task file not found: {path}")
    splits = {s: [] for s in SPLITS}
    for number, line in enumerate(text_lines(p), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EptkUsageError(f"{path}:{number}: bad JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise EptkUsageError(f"{path}:{number}: each row needs string fields \"prompt\" and \"answer\"")
        split = row.get("split") or split_of(row["prompt"])
        if split not in SPLITS:
            raise EptkUsageError(f"{path}:{number}: split {split!r} is not one of {choices(SPLITS)}")
        splits[split].append(Example(row["prompt"], row["answer"]))
    if not any(splits.values()):
        raise EptkUsageError(f"{path}: no rows")
    if not splits["train"]:
        raise EptkUsageError(f"{path}: no training rows (rows are split by a hash of the prompt, or by \"split\")")
    # An empty validation or test split stays empty (training rows scored as test rows would be a made-up
    # score): tune refuses it unless --eval-size / --test-size is 0.
    return Records(f"jsonl:{path}", splits)


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark allowed). Bytes that are not UTF-8 are refused, naming
    the line: replacement characters would silently change prompts and answers. Lines end at newlines only
    (U+2028 inside a JSON string is text, not a line break)."""
    lines = path.read_bytes().split(b"\n")
    text = []
    for number, raw in enumerate(lines, 1):
        try:
            text.append(raw.decode("utf-8-sig" if number == 1 else "utf-8").removesuffix("\r"))
        except UnicodeDecodeError as exc:
            raise EptkUsageError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
                                 f"{exc.start + 1} of the line); a task file must be UTF-8: save it as UTF-8") from None
    return text


def load_hf(name: str, prompt_of, answer_of, metric="exact_match", config=None, sizes=(4000, 200, 200)) -> Records:
    try:
        import datasets
    except ImportError:
        raise EptkUsageError(f"task {name!r} needs the 'datasets' package (pip install datasets)") from None
    try:
        data = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as exc:  # datasets raises many types for offline / missing data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EptkUsageError(f"cannot load dataset {name!r} ({first}); offline? use jsonl:<path>") from None
    train = data["train"]
    held = data.get("validation") or data.get("test") or train
    rows = lambda ds, lo, n: [Example(prompt_of(r), answer_of(r)) for r in ds.select(range(lo, min(len(ds), lo + n)))]
    n_train, n_val, n_test = sizes
    return Records(name, {"train": rows(train, 0, n_train), "validation": rows(held, 0, n_val),
                          "test": rows(held, n_val, n_test) or rows(held, 0, n_test)}, metric)


# ---- registration --------------------------------------------------------------------------------

@register_task("squad")
def _squad(args, seed):
    return load_hf("squad", lambda r: f"{r['context']}\nQuestion: {r['question']}\nAnswer:",
                   lambda r: " " + r["answers"]["text"][0], metric="f1")


@register_task("math")
def _math(args, seed):
    return load_hf("deepmind/math_dataset", lambda r: r["question"].strip(), lambda r: r["answer"].strip(),
                   config="arithmetic__add_or_sub")


@register_task("c4")
def _c4(args, seed):
    return load_hf("allenai/c4", lambda r: r["text"][:400], lambda r: "", config="en")


@register_task("hf", ":<name>")
def _hf(args, seed):
    return load_hf(args, lambda r: str(r.get("prompt", r.get("question", ""))), lambda r: str(r.get("answer", "")))


@register_task("jsonl", ":<path>")
def _jsonl(args, seed):
    return load_jsonl(args, seed)
