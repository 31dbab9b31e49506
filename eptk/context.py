"""The model's context window: one sequence, [slots ; tokens ; generated tokens], may span at most the positions
the model takes (its family's `max_positions`); the last generated token is never fed back, so generating N
tokens after T takes T + N - 1 positions. Every command checks its options and its task's examples against
that limit once the model and its tokenizer have loaded, before anything is written or generated, and refuses the
longest example by its split, index and length, naming the valid range; nothing is truncated."""
from __future__ import annotations

from .batches import encoded_lengths
from .errors import EptkUsageError
from .families import family_of
from .tasks import Example


def position_limit(model) -> tuple[int, str] | None:
    """(positions, why) of `model`'s context window, or None when its config states none."""
    return family_of(model).max_positions(model)


def check_examples(model, tokenizer, examples: list[Example], *, slots: int, where: str, new_tokens: int = 0,
                   generates: bool = False, tokens_option: str | None = None, sink: int = 0) -> None:
    """Every example fits after `slots` prompt slots: its prompt + answer + EOS (what training and the answer loss
    encode) and, with `generates`, its prompt + `new_tokens` generated tokens (what scoring generates). The
    refusal names the longest example (`where`: "task arith, train split"), its length and the valid lengths;
    with `tokens_option`, the prompt length (`sink` slots beside the trained ones) that would fit."""
    limit = position_limit(model)
    if limit is None or not examples:
        return
    prompts, answers = encoded_lengths(tokenizer, examples)
    spans = [max(p + a, p + new_tokens - 1 if generates else 0) for p, a in zip(prompts, answers)]
    index = max(range(len(spans)), key=spans.__getitem__)
    if slots + spans[index] <= limit[0]:
        return
    what = ("prompt + the generated tokens fed back" if spans[index] > prompts[index] + answers[index]
            else "prompt + answer + EOS")
    fits = []
    if tokens_option and limit[0] - spans[index] - sink >= 1:
        fits.append(f"{tokens_option} up to {limit[0] - spans[index] - sink}")
    if limit[0] - slots >= 1:
        fits.append(f"examples of at most {limit[0] - slots} tokens ({what})")
    valid = " or ".join(fits) or f"fewer slots and examples shorter than {limit[0]} tokens"
    raise EptkUsageError(f"{where}: example {index} ({excerpt(examples[index].prompt)}) is {spans[index]} tokens "
                         f"({what}); after {slots} prompt slots it passes {limit[1]}; valid: {valid}")


def check_generation(model, *, slots: int, text_tokens: int, new_tokens: int, option: str = "--max-new-tokens",
                     where: str = "the text") -> None:
    """`slots` + the text's tokens + `new_tokens` generated fit in the context window: checked before generating.
    The refusal names `where` the text comes from and the valid `option` values."""
    limit = position_limit(model)
    room = None if limit is None else limit[0] - slots + 1  # text + new tokens, the last one never fed back
    if room is None or text_tokens + new_tokens <= room:
        return
    fits = []
    if room - text_tokens >= 1:
        fits.append(f"{option} up to {room - text_tokens}")
    if room - new_tokens >= 1:
        fits.append(f"a text of at most {room - new_tokens} tokens")
    valid = " or ".join(fits) or f"a text of at most {room - 1} tokens with {option} 1"
    raise EptkUsageError(f"{slots} prompt slots + {text_tokens} tokens of {where} + {option} {new_tokens} pass "
                         f"{limit[1]}; valid: {valid}")


def excerpt(text: str, width: int = 30) -> str:
    """The start of a prompt, quoted on one line, for a message that names an example."""
    return repr(text if len(text) <= width else text[:width] + "...")
