"""Per-method options: each method declares its options as a small frozen dataclass whose fields are made with
`option(...)`; the command line, the validation, config.json and the sweep's run names all read that declaration.

A field's type annotation is its type (bool, int, float or str); its metadata holds the help line, the range
(`low`, `high`), the valid `choices`, a grammar `check` (a function that raises EptkUsageError) and, with
`in_name`, how its value appears in a sweep's run names. Plain data, no torch: a schema can read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .errors import EptkUsageError, check_choice, check_range, choices

TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def option(default, help: str, *, low=None, high=None, choices=None, check: Callable | None = None,
           in_name: Callable | None = None):
    """A method option: its default, help line, range or choices, grammar check and run-name part."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "choices": choices,
                                            "check": check, "in_name": in_name})


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""

    def check(self) -> None:
        """Refuse combinations of values (each value alone is checked against its declaration first)."""


def fields_of(options_class) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(options_class)}


def flag(name: str, kind: str | None = None) -> str:
    """The command-line spelling of an option: --name VALUE, or --name/--no-name for a bool."""
    dashed = "--" + name.replace("_", "-")
    return f"{dashed}/--no-{dashed[2:]}" if kind == "bool" else dashed


def kind_of(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def check_value(where: str, value, kind: str):
    """A value (from TOML or JSON) for a setting of type `kind` (int, float, str, bool), or a one-line error: an int
    is taken where a float or a string is wanted (`layers = 5`)."""
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
          "bool": isinstance(value, bool)}.get(kind, False)
    if not ok:
        wanted = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(kind, kind)
        raise EptkUsageError(f"{where} must be {wanted} (got {value!r})")
    return {"float": float, "str": str}.get(kind, lambda v: v)(value)


def build_options(options_class, values: dict, method: str, owners: Callable[[str], list[str]] | None = None):
    """The options instance of `values` (option name -> value; missing ones take their defaults), every value
    checked against its declaration, then the combination (`check()`). An unknown name is refused naming the
    method's options and, through `owners(name)`, the methods that have it."""
    declared, values = fields_of(options_class), dict(values)
    for name in values:
        if name not in declared:
            valid = choices(flag(n, kind_of(f)) for n, f in declared.items()) or "none"
            others = owners(name) if owners else []
            elsewhere = f"; {flag(name)} belongs to --method {choices(others)}" if others else ""
            raise EptkUsageError(f"--method {method} has no option {flag(name)} (its options: {valid}){elsewhere}")
    for name, value in values.items():
        f = declared[name]
        meta, where = f.metadata, f"--method {method}: {flag(name)}"
        values[name] = value = check_value(where, value, kind_of(f))
        if meta["choices"] is not None:
            check_choice(flag(name), value, meta["choices"])
        if meta["low"] is not None or meta["high"] is not None:
            check_range(flag(name), value, meta["low"], meta["high"])
        if meta["check"] is not None:
            meta["check"](value)
    instance = options_class(**values)
    instance.check()
    return instance


def parse_arguments(options_class, args: list[str], method: str,
                    owners: Callable[[str], list[str]] | None = None) -> dict:
    """Option name -> value from command-line words (`--layers all`, `--layers=all`, `--no-soft`), typed by the
    declaration; anything else is refused naming the valid options (and, through `owners`, the methods that have
    an option another method declares)."""
    declared = fields_of(options_class)
    by_flag = {}
    for name, f in declared.items():
        dashed = flag(name)
        if kind_of(f) == "bool":
            by_flag[dashed], by_flag["--no-" + dashed[2:]] = (name, True), (name, False)
        else:
            by_flag[dashed] = (name, None)
    valid = choices(flag(n, kind_of(f)) for n, f in declared.items()) or "none"
    values, words = {}, list(args)
    while words:
        word = words.pop(0)
        text, _, inline = word.partition("=")
        if text not in by_flag:
            name = text[5:] if text.startswith("--no-") else text[2:]
            if owners is not None and owners(name.replace("-", "_")):
                build_options(options_class, {name.replace("-", "_"): True}, method, owners)  # names its owners
            raise EptkUsageError(f"unknown option {word!r} for eptk tune --method {method}; its own options: {valid} "
                                 f"(eptk tune --help lists the rest)")
        name, boolean = by_flag[text]
        if boolean is not None:
            if inline:
                raise EptkUsageError(f"{text} takes no value (got {word!r})")
            values[name] = boolean
            continue
        if not inline and not words:
            raise EptkUsageError(f"{text} needs a value")
        raw = inline if inline else words.pop(0)
        values[name] = _typed(raw, kind_of(declared[name]), text)
    return values


def _typed(raw: str, kind: str, where: str):
    if kind == "str":
        return raw
    try:
        return TYPES[kind](raw)
    except ValueError:
        wanted = {"int": "an integer", "float": "a number"}[kind]
        raise EptkUsageError(f"{where} must be {wanted} (got {raw!r})") from None


def as_arguments(values: dict) -> list[str]:
    """The command-line words of option values (the inverse of `parse_arguments`)."""
    out = []
    for name, value in values.items():
        dashed = flag(name)
        if isinstance(value, bool):
            out.append(dashed if value else "--no-" + dashed[2:])
        else:
            out += [dashed, str(value)]
    return out


def name_parts(options) -> list[str]:
    """The parts of a sweep run's name that the options give (those declared `in_name`), in declaration order."""
    return [f.metadata["in_name"](getattr(options, f.name)) for f in dataclasses.fields(options)
            if f.metadata.get("in_name") is not None]


def describe(options_class) -> list[tuple[str, str]]:
    """(flag, help with default and range) of each option, for `eptk tune --help`."""
    out = []
    for name, f in fields_of(options_class).items():
        meta = f.metadata
        extra = [f"default {f.default}"]
        if meta["choices"] is not None:
            extra.append(f"one of {choices(meta['choices'])}")
        if meta["low"] is not None or meta["high"] is not None:
            extra.append(f"{meta['low']}..{meta['high']}")
        out.append((flag(name, kind_of(f)), f"{meta['help']} ({'; '.join(extra)})"))
    return out
