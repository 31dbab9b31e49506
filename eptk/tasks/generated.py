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
        expression = f"{a}{op}{b}"
        return Example(f"{expression}=", str(self.OPS[op](a, b)), content=((0, len(expression)),))


_NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Liam",
          "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
_CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Berlin", "Madrid", "Dublin", "Nairobi", "Quito", "Seoul",
           "Vienna", "Lisbon", "Prague", "Delhi", "Sydney"]
_JOBS = ["baker", "doctor", "pilot", "teacher", "farmer", "lawyer", "painter", "nurse", "chef", "engineer"]
_PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "horse", "goldfish", "hamster"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]


def templated(template: str, **fields) -> tuple[str, tuple]:
    """`template` filled with `fields`, and the character spans the fields took (the content; the rest is template)."""
    import string as _string

    text, spans = "", []
    for literal, field, _, _ in _string.Formatter().parse(template):
        text += literal
        if field is not None:
            spans.append((len(text), len(text) + len(fields[field])))
            text += fields[field]
    return text, tuple(spans)


class TemplatedTask(GeneratedTask):
    """A task whose prompts come in two wordings of the same content: `<name>` (template a) and `<name>:b`
    (claim 4's null). `PROMPTS` maps each to its template; `prompt(**fields)` fills the chosen one."""
    PROMPTS: dict[str, str] = {}

    def __init__(self, seed: int = 0, template: str = "a"):
        super().__init__(seed)
        self.template = template
        self.name = type(self).name if template == "a" else f"{type(self).name}:{template}"

    def prompt(self, **fields) -> tuple[str, tuple]:
        return templated(self.PROMPTS[self.template], **fields)


class QA(TemplatedTask):
    """Extractive questions over generated contexts, SQuAD's template: '{context}\\nQuestion: ..\\nAnswer:'
    (`qa:b`: the same questions as 'Context: {context}\\nQ: ..\\nA:', a template variant for claim 4's null)."""
    name = "qa"
    metric = "f1"
    max_answer_tokens = 8
    PROMPTS = {"a": "{context}\nQuestion: {question}\nAnswer:", "b": "Context: {context}\nQ: {question}\nA:"}
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
        prompt, spans = self.prompt(context=context, question=question.format(n=person))
        return Example(prompt, f" {value}", content=spans)


class Fill(TemplatedTask):
    """Masked-word fill-in (the MLM-like task): a sentence with one word replaced by ___ (`fill:b`: the same
    sentences as 'Complete the sentence: ..\\nThe missing word is:', a template variant for claim 4's null)."""
    name = "fill"
    max_answer_tokens = 6
    PROMPTS = {"a": "Fill in the blank: {sentence}\nAnswer:", "b": "Complete the sentence: {sentence}\nThe missing word is:"}
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
        prompt, spans = self.prompt(sentence=masked)
        return Example(prompt, f" {target}", content=spans)


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


def _template(task: str, args) -> str:
    template = args or "a"
    if template not in ("a", "b"):
        raise EptkUsageError(f"task {task}:{args}: unknown template {args!r}; valid: {task} ({task}:a), {task}:b")
    return template


@register_task("qa", "[:b]")
def _qa(args, seed):
    return QA(seed, _template("qa", args))


@register_task("fill", "[:b]")
def _fill(args, seed):
    return Fill(seed, _template("fill", args))
