"""Examples to token batches: right-padded training batches with labels on the answer, left-padded
prompts for generation, and row slices of a batch."""
from __future__ import annotations

import torch

from .tasks import Example


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


def encoded_lengths(tokenizer, examples: list[Example]) -> tuple[list[int], list[int]]:
    """The tokens `encode_batch` gives each example: (its prompt's, its answer's + EOS), in one tokenizer call each."""
    prompts = tokenizer([ex.prompt for ex in examples])["input_ids"]
    answers = tokenizer([ex.answer for ex in examples], add_special_tokens=False)["input_ids"]
    eos = int(tokenizer.eos_token_id is not None)
    return [len(p) for p in prompts], [len(a) + eos for a in answers]


def encode_content_batch(tokenizer, examples: list[Example]) -> dict:
    """`encode_batch` (prompt + answer + EOS) with a `content_mask` [B, T]: the tokens of the examples' content
    spans (at least half of a token's characters inside one) and the answer's tokens; template words, special
    tokens, EOS and padding are False. Needs a tokenizer that reports character offsets."""
    batch = encode_batch(tokenizer, examples, with_answer=True)
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    for row, ex in enumerate(examples):
        enc = tokenizer(ex.prompt, return_offsets_mapping=True)
        for i, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start and any(2 * (min(end, b) - max(start, a)) >= end - start for a, b in ex.content):
                mask[row, i] = True
        answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
        n = len(enc["input_ids"])
        mask[row, n:n + len(answer)] = True
    batch["content_mask"] = mask & batch["attention_mask"].bool()
    return batch


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
