import json

import pytest

from eptk.errors import EptkUsageError
from eptk.batches import encode_batch
from eptk.tasks import load_task, normalize_answer, token_f1


@pytest.mark.parametrize("spec", ["arith", "arith:+-*:2", "qa", "fill"])
def test_generated_splits_are_disjoint_and_seeded(spec):
    task = load_task(spec, seed=0)
    splits = {s: task.examples(s, 150) for s in ("train", "validation", "test")}
    prompts = {s: {e.prompt for e in rows} for s, rows in splits.items()}
    assert all(len(rows) == 150 for rows in splits.values())
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]
    assert task.examples("test", 20) == load_task(spec, seed=0).examples("test", 20)


def test_arith_answers_are_right():
    for ex in load_task("arith:+-*:2").examples("train", 50):
        assert str(eval(ex.prompt.rstrip("="))) == ex.answer


def test_qa_answers_are_extractive():
    for ex in load_task("qa").examples("train", 30):
        assert ex.answer.strip() in ex.prompt


def test_labels_cover_only_the_answer(tiny_models):
    tok = tiny_models["llama"].tokenizer
    ex = load_task("arith").examples("train", 2)
    enc = encode_batch(tok, ex)
    for i, e in enumerate(ex):
        labelled = enc["labels"][i][enc["labels"][i] != -100].tolist()
        assert labelled == tok(e.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_squad_normalization():
    assert normalize_answer("The  Paris!") == "paris"
    assert token_f1("in Paris", "Paris") == pytest.approx(2 / 3)
    assert normalize_answer("-12") == "-12"


def test_jsonl_task(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(50)))
    task = load_task(f"jsonl:{path}")
    sizes = [len(task.examples(s)) for s in ("train", "validation", "test")]
    assert sum(sizes) == 50 and min(sizes) >= 1


def test_jsonl_task_text_is_read_exactly(tmp_path):
    """UTF-8 as written: a byte-order mark and CRLF line ends are allowed, non-ASCII text and a U+2028 inside a
    string are kept (a line ends at a newline only); bytes that are not UTF-8 are refused naming the line
    (replacement characters would silently change prompts and answers)."""
    rows = [{"prompt": f"café {i}\u2028ß=", "answer": f"é{i}"} for i in range(30)]
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8"))
    task = load_task(f"jsonl:{path}")
    got = {(e.prompt, e.answer) for s in ("train", "validation", "test") for e in task.examples(s)}
    assert got == {(r["prompt"], r["answer"]) for r in rows}
    path.write_bytes(path.read_bytes().replace("é7".encode(), "é7".encode("latin-1")))
    with pytest.raises(EptkUsageError, match=r"t.jsonl:8: not UTF-8 text \(byte 0xe9"):
        load_task(f"jsonl:{path}")


@pytest.mark.parametrize("content,message", [("{bad json", "bad JSON"), ('{"prompt": "x"}', "answer"),
                                             ("", "no rows"), ('["a", "b"]', "prompt")])
def test_broken_jsonl(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(EptkUsageError, match=message):
        load_task(f"jsonl:{path}")


@pytest.mark.parametrize("bad", ["nope", "arith:/", "arith:+:9", "arith:+:x", "jsonl:/no/such/file"])
def test_bad_task_specs(bad):
    with pytest.raises(EptkUsageError):
        load_task(bad)


def test_take_rows_equals_encoding_those_examples(tiny_models):
    """The trainer tokenizes a step's global batch once and slices micro-batches out of it."""
    import torch
    from eptk.batches import take_rows
    tok = tiny_models["llama"].tokenizer
    examples = load_task("arith:+-*:3").examples("train", 9)
    full = encode_batch(tok, examples)
    for rows in ([0, 1, 2], [3, 5, 7], [8], [1, 4, 7]):
        alone = encode_batch(tok, [examples[i] for i in rows])
        assert all(torch.equal(take_rows(full, rows)[k], alone[k]) for k in alone), rows


@pytest.mark.parametrize("task, a_word, b_word", [("qa", "\nQuestion: ", "Context: "),
                                                  ("fill", "Fill in the blank: ", "Complete the sentence: ")])
def test_template_b_words_the_same_content_otherwise(task, a_word, b_word):
    """`<task>:b` (claim 4's null) is its own task with its own wording; its content spans hold content."""
    from eptk.tasks import load_task

    a, b = load_task(task), load_task(f"{task}:b")
    assert (a.name, b.name) == (task, f"{task}:b")
    for t, word, other in ((a, a_word, b_word), (b, b_word, a_word)):
        for e in t.examples("test", 20):
            assert word in e.prompt and other not in e.prompt
            assert all(word not in e.prompt[s:end] for s, end in e.content)
