"""The context window's checks (eptk.context) accept exactly what the model runs: the longest example and the most
generated tokens they allow run through PromptedModel, and one token more is refused, by the check (before
anything runs) and by PromptedModel's own guard. The refusals through the CLI are in tests/test_bad_input.py."""
import pytest
import torch

from eptk.batches import encode_batch
from eptk.context import check_examples, check_generation, position_limit
from eptk.errors import EptkUsageError
from eptk.families import model_dims
from eptk.methods import build_method
from eptk.prompts import PromptedModel
from eptk.tasks import Example

SLOTS = 4


@pytest.fixture(scope="module")
def prompted(tiny_models):
    loaded = tiny_models["gpt2"]  # learned positions: past n_positions the model itself has no embedding
    method = build_method("soft", SLOTS, model_dims(loaded.model))
    init = {"soft": torch.randn(SLOTS, model_dims(loaded.model)["hidden_size"], generator=torch.Generator().manual_seed(0))}
    return PromptedModel(loaded.model, loaded.tokenizer, method, init, backend="torch")


def _ids(prompted, n: int) -> torch.Tensor:
    ids = prompted.tokenizer("7" * n, return_tensors="pt")["input_ids"]
    return ids[:, -n:] if ids.shape[1] > n else ids


def test_generation_may_fill_the_window_and_not_one_more(prompted):
    limit = position_limit(prompted.model)[0]
    assert limit == 512
    text = _ids(prompted, 480)
    assert text.shape[1] == 480
    most = limit - SLOTS - 480 + 1  # the last generated token is never fed back
    check_generation(prompted.model, slots=SLOTS, text_tokens=480, new_tokens=most)
    with torch.no_grad():
        out = prompted.generate(text, max_new_tokens=most, eos_token_id=-1)
    assert out.shape[1] == 480 + most
    with pytest.raises(EptkUsageError, match=f"valid: --max-new-tokens up to {most} or"):
        check_generation(prompted.model, slots=SLOTS, text_tokens=480, new_tokens=most + 1)
    with pytest.raises(EptkUsageError, match="512 positions"), torch.no_grad():
        prompted.generate(text, max_new_tokens=most + 1, eos_token_id=-1)


def test_a_training_example_may_fill_the_window_and_not_one_more(prompted):
    tokenizer = prompted.tokenizer
    limit = position_limit(prompted.model)[0]
    fits = Example("7" * (limit - SLOTS - 3) + "=", "8")  # + answer + EOS: exactly the positions after the slots
    batch = encode_batch(tokenizer, [fits])
    assert SLOTS + batch["input_ids"].shape[1] == limit
    check_examples(prompted.model, tokenizer, [fits], slots=SLOTS, where="fits")
    with torch.no_grad():
        prompted(batch["input_ids"], batch["attention_mask"])
    longer = Example("7" + fits.prompt, fits.answer)
    with pytest.raises(EptkUsageError, match=r"longer: example 1 .* is 509 tokens \(prompt \+ answer \+ EOS\)"):
        check_examples(prompted.model, tokenizer, [fits, longer], slots=SLOTS, where="longer")
    batch = encode_batch(tokenizer, [longer])
    with pytest.raises(EptkUsageError, match="512 positions"), torch.no_grad():
        prompted(batch["input_ids"], batch["attention_mask"])
