"""Scoring a prompted (or unprompted) model on a task split: generation scores and answer loss, and the
baseline-and-tuned evaluation a run writes to eval.json (also what `eptk eval` prints)."""
from __future__ import annotations

import torch

from .batches import encode_batch, encode_prompts
from .runs import BASELINE, PREFIX_MASS, PREFIX_MASS_FIRST_SLOT, PREFIX_MASS_OTHER_SLOTS, TUNED, scores
from .tasks import Example, Task, first_line


@torch.no_grad()
def answer_loss(prompted, tokenizer, examples: list[Example], batch_size: int = 32) -> float:
    """Mean cross-entropy per answer token (teacher forced), over all examples (at least one: an empty
    set has no loss, and 0 would be a made-up one)."""
    if not examples:
        raise ValueError("answer_loss needs at least one example")
    total, count = 0.0, 0
    prefix = prompted.prefix()
    for start in range(0, len(examples), batch_size):
        batch = encode_batch(tokenizer, examples[start:start + batch_size])
        batch = {k: v.to(prompted.device) for k, v in batch.items()}
        out = prompted(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], prefix=prefix)
        total += float(out.loss_sum)
        count += out.tokens
    if count == 0:
        raise ValueError("answer_loss: no answer tokens in the examples")
    return total / count


@torch.no_grad()
def predict(prompted, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy answers (text up to EOS / the first newline), left-padded batches with the KV cache."""
    predictions = []
    prefix = prompted.prefix()  # the slots do not depend on the batch: one slot pass for every batch
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        enc = encode_prompts(tokenizer, [e.prompt for e in chunk])
        ids = enc["input_ids"].to(prompted.device)
        out = prompted.generate(ids, enc["attention_mask"].to(prompted.device), max_new_tokens=max_new_tokens,
                                prefix=prefix)
        for row in out[:, ids.shape[1]:]:
            predictions.append(first_line(tokenizer.decode(row, skip_special_tokens=True)))
    return predictions


def score(prompted, tokenizer, task: Task, examples: list[Example], batch_size: int = 32,
          keep_examples: int = 8) -> dict:
    if not examples:
        raise ValueError("score needs at least one example")
    predictions = predict(prompted, tokenizer, examples, task.max_answer_tokens, batch_size)
    items = task.item_scores(predictions, [e.answer for e in examples])
    result = task.mean_score(items)
    result["loss"] = answer_loss(prompted, tokenizer, examples, batch_size)
    result["metric"] = task.metric
    result["n"] = len(examples)
    result["examples"] = [{"prompt": e.prompt, "answer": e.answer, "prediction": p}
                          for e, p in zip(examples[:keep_examples], predictions[:keep_examples])]
    # every item, for predictions.jsonl (split off before eval.json is written: `item_rows`)
    result["items"] = [{"prompt": e.prompt, "answer": e.answer, "prediction": p, **s}
                       for e, p, s in zip(examples, predictions, items)]
    return result


def evaluate(prompted, task: Task, examples: list[Example], split: str = "test", prefix_mass: bool = True) -> dict:
    """Scores without any prompt (the baseline) and with the tuned one; with `prefix_mass`, the attention
    mass on the prompt per layer and head when the method reports it: on all slots (`prefix_mass`), on slot 0
    (`prefix_mass_first_slot`: the sink with --keep-sink, else the first trained slot) and on the others
    (`prefix_mass_other_slots`), each the mean over the real (not padding) query tokens."""
    tokenizer = prompted.tokenizer
    result = {"task": task.name, "split": split, "metric": task.metric,
              BASELINE: score(prompted.baseline(), tokenizer, task, examples),
              TUNED: score(prompted, tokenizer, task, examples)}
    if prefix_mass and prompted.method.reports_prefix_mass:
        batch = encode_batch(tokenizer, examples[:64])
        total, first = prompted.slot_mass(batch["input_ids"].to(prompted.device),
                                          batch["attention_mask"].to(prompted.device))
        others = {l: total[l] - first[l] for l in total}
        for key, mass in ((PREFIX_MASS, total), (PREFIX_MASS_FIRST_SLOT, first), (PREFIX_MASS_OTHER_SLOTS, others)):
            result[key] = {f"layer{l}": [round(float(x), 6) for x in v] for l, v in sorted(mass.items())}
    return result



def item_rows(result: dict) -> list[dict]:
    """Take the per-item results out of an evaluation (they go to predictions.jsonl, not eval.json): one row per
    test item with its prompt, answer, and the baseline's and the tuned prompt's prediction and scores."""
    rows = []
    base, tuned = scores(result)
    base_items, tuned_items = base.pop("items", None), tuned.pop("items", None)
    if not tuned_items:
        return rows
    for index, item in enumerate(tuned_items):
        row = {"index": index, "split": result.get("split"), **item}
        if base_items:
            row.update({f"baseline_{k}": v for k, v in base_items[index].items() if k not in ("prompt", "answer")})
        rows.append(row)
    return rows


def skipped(task: Task, reason: str, split: str = "test") -> dict:
    """eval.json of a run whose test evaluation was skipped: the reason, and no score."""
    return {"task": task.name, "split": split, "metric": task.metric, "skipped": reason, BASELINE: None,
            TUNED: None}
