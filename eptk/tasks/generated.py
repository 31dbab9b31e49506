"""Seeded offline task generators: arith (DeepMind-MATH-style), qa (extractive, SQuAD's template) and
fill (masked-word fill-in, the MLM-like task)."""
from __future__ import annotations

import re

from ..errors import EptkUsageError
from .base import Example, GeneratedTask
from .registry import register_task


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


# ---- registration --------------------------------------------------------------------------------

@register_task("arith", "[:OPS[:DIGITS]]")
def _arith(args, seed):
    spec = "arith" if args is None else f"arith:{args}"
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


@register_task("qa")
def _qa(args, seed):
    return QA(seed)


@register_task("fill")
def _fill(args, seed):
    return Fill(seed)
