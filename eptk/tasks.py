"""Tasks: seeded offline generators (arith, qa, fill) and datasets-backed ones (squad, math, c4, hf:, jsonl:).

An example is a prompt and its answer; the loss covers the answer tokens (plus EOS) only.
Offline generators split by a hash of each example's content, so train/validation/test never share one.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EptkUsageError, choices

SPLITS = ("train", "validation", "test")
TASK_CHOICES = ("arith[:OPS[:DIGITS]]", "qa", "fill", "squad", "math", "c4", "hf:<name>", "jsonl:<path>")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


class Task:
    """A named source of examples with a metric."""
    name = "task"
    metric = "exact_match"
    max_answer_tokens = 16

    def examples(self, split: str, n: int | None = None) -> list[Example]:
        raise NotImplementedError

    def score(self, predictions: list[str], answers: list[str]) -> dict:
        """Mean exact match (and F1 for QA) in percent."""
        em = [float(normalize_answer(p) == normalize_answer(a)) for p, a in zip(predictions, answers)]
        out = {"exact_match": 100.0 * sum(em) / max(len(em), 1)}
        if self.metric == "f1":
            f1 = [token_f1(p, a) for p, a in zip(predictions, answers)]
            out["f1"] = 100.0 * sum(f1) / max(len(f1), 1)
        out["score"] = out[self.metric]
        return out


def _split_of(key: str) -> str:
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
            if ex.prompt in seen or _split_of(ex.prompt) != split:
                continue
            seen.add(ex.prompt)
            out.append(ex)
        return out


class Arith(GeneratedTask):
    """DeepMind-MATH-style arithmetic: 'a+b=' -> result, over the given operators and digit count."""
    OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

    def __init__(self, ops: str = "+", digits: int = 2, seed: int = 0):
        super().__init__(seed)
        self.ops, self.digits = ops, digits
        self.name = f"arith:{ops}:{digits}"
        self.max_answer_tokens = 2 * digits + 3

    def make(self, rng):
        lo, hi = 10 ** (self.digits - 1) if self.digits > 1 else 0, 10 ** self.digits - 1
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(self.ops)
        return Example(f"{a}{op}{b}=", str(self.OPS[op](a, b)))


_NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Liam",
          "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
_CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Berlin", "Madrid", "Dublin", "Nairobi", "Quito", "Seoul",
           "Vienna", "Lisbon", "Prague", "Delhi", "Sydney"]
_JOBS = ["baker", "doctor", "pilot", "teacher", "farmer", "lawyer", "painter", "nurse", "chef", "engineer"]
_PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "horse", "goldfish", "hamster"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]


class QA(GeneratedTask):
    """Extractive questions over generated contexts, SQuAD's template: '{context}\\nQuestion: ..\\nAnswer:'."""
    name = "qa"
    metric = "f1"
    max_answer_tokens = 8
    FACTS = [("lives in", _CITIES, "Where does {n} live?"), ("works as a", _JOBS, "What is {n}'s job?"),
             ("owns a", _PETS, "What pet does {n} own?"), ("likes the color", _COLORS, "What color does {n} like?")]

    def make(self, rng):
        people = rng.sample(_NAMES, 3)
        facts = []
        for person in people:
            verb, values, question = rng.choice(self.FACTS)
            facts.append((person, verb, rng.choice(values), question))
        context = " ".join(f"{p} {verb} {value}." for p, verb, value, _ in facts)
        person, _, value, question = rng.choice(facts)
        return Example(f"{context}\nQuestion: {question.format(n=person)}\nAnswer:", f" {value}")


class Fill(GeneratedTask):
    """Masked-word fill-in (the MLM-like task): a sentence with one word replaced by ___."""
    name = "fill"
    max_answer_tokens = 6
    TEMPLATES = ["The {pet} sleeps on the {color} mat.", "{name} flew from {city} to see a {job}.",
                 "A {color} {pet} sat next to {name}.", "In {city} the {job} painted the door {color}.",
                 "{name} asked the {job} about the {pet}.", "The {job} from {city} owns a {pet}."]

    def make(self, rng):
        fields = {"pet": rng.choice(_PETS), "color": rng.choice(_COLORS), "name": rng.choice(_NAMES),
                  "city": rng.choice(_CITIES), "job": rng.choice(_JOBS)}
        template = rng.choice(self.TEMPLATES)
        sentence = template.format(**fields)
        used = [k for k in fields if "{" + k + "}" in template]
        target = fields[rng.choice(used)]
        masked = re.sub(rf"\b{re.escape(target)}\b", "___", sentence, count=1)
        return Example(f"Fill in the blank: {masked}\nAnswer:", f" {target}")


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
    for number, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EptkUsageError(f"{path}:{number}: bad JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise EptkUsageError(f"{path}:{number}: each row needs string fields \"prompt\" and \"answer\"")
        split = row.get("split") or _split_of(row["prompt"])
        if split not in SPLITS:
            raise EptkUsageError(f"{path}:{number}: split {split!r} is not one of {choices(SPLITS)}")
        splits[split].append(Example(row["prompt"], row["answer"]))
    if not any(splits.values()):
        raise EptkUsageError(f"{path}: no rows")
    if not splits["train"]:
        raise EptkUsageError(f"{path}: no training rows (rows are split by a hash of the prompt, or by \"split\")")
    for split in ("validation", "test"):
        splits[split] = splits[split] or splits["train"][: max(1, len(splits["train"]) // 10)]
    return Records(f"jsonl:{path}", splits)


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


def load_task(spec: str, seed: int = 0) -> Task:
    spec = (spec or "").strip()
    if spec == "arith" or spec.startswith("arith:"):
        parts = spec.split(":")
        ops = parts[1] if len(parts) > 1 and parts[1] else "+"
        if any(op not in Arith.OPS for op in ops):
            raise EptkUsageError(f"task {spec!r}: operators must be from '+-*' (e.g. arith:+-*:2)")
        try:
            digits = int(parts[2]) if len(parts) > 2 else 2
        except ValueError:
            digits = 0
        if not 1 <= digits <= 6:
            raise EptkUsageError(f"task {spec!r}: digits must be 1..6 (e.g. arith:+:2)")
        return Arith(ops, digits, seed)
    if spec == "qa":
        return QA(seed)
    if spec == "fill":
        return Fill(seed)
    if spec.startswith("jsonl:"):
        return load_jsonl(spec[6:], seed)
    if spec == "squad":
        return load_hf("squad", lambda r: f"{r['context']}\nQuestion: {r['question']}\nAnswer:",
                       lambda r: " " + r["answers"]["text"][0], metric="f1")
    if spec == "math":
        return load_hf("deepmind/math_dataset", lambda r: r["question"].strip(), lambda r: r["answer"].strip(),
                       config="arithmetic__add_or_sub")
    if spec == "c4":
        return load_hf("allenai/c4", lambda r: r["text"][:400], lambda r: "", config="en")
    if spec.startswith("hf:"):
        return load_hf(spec[3:], lambda r: str(r.get("prompt", r.get("question", ""))),
                       lambda r: str(r.get("answer", "")))
    raise EptkUsageError(f"unknown task {spec!r}; valid: {choices(TASK_CHOICES)}")


# ---- tokenization -------------------------------------------------------------------------------

def encode_batch(tokenizer, examples: list[Example], with_answer: bool = True, eos: bool = True) -> dict:
    """Right-padded input_ids / attention_mask / labels; labels cover the answer tokens (+ EOS)."""
    rows, labels = [], []
    for ex in examples:
        prompt = tokenizer(ex.prompt)["input_ids"]
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] if with_answer else []
        if with_answer and eos and tokenizer.eos_token_id is not None:
            answer = answer + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    return _pad(rows, labels, tokenizer.pad_token_id, left=False)


def take_rows(batch: dict, rows: list[int]) -> dict:
    """The given rows of a right-padded batch, trimmed to their own longest row: equal to encoding
    just those examples."""
    index = torch.tensor(rows, dtype=torch.long)
    width = int(batch["attention_mask"][index].sum(1).max())
    return {k: v[index, :width] for k, v in batch.items()}


def encode_prompts(tokenizer, prompts: list[str]) -> dict:
    """Left-padded prompts for generation."""
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    return _pad(rows, [[-100] * len(r) for r in rows], tokenizer.pad_token_id, left=True)


def _pad(rows, labels, pad_id, left: bool) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
        lab[i, sl] = torch.tensor(l)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


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
