"""The real Gemma-3-270M (`--model gemma3-270m`, where its packages are installed: `make gemma`): it reads
English at the loss it should (its BOS first), continues a prompt sensibly, and the two passes equal the
full [slots ; tokens] forward of transformers' own eager attention for every method on sequences longer
than its 512-position sliding window, with the prompt gradients and the prefix mass."""
import pytest
import torch

from conftest import gemma3_installed
from reference_forward import full_forward
from test_keep_sink import sink_prompted

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not gemma3_installed(), reason="needs Gemma-3-270M (make gemma)")]

PARAGRAPH = ("The history of the printing press begins in the middle of the fifteenth century, when Johannes "
             "Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a practical "
             "system for producing books. Before his invention, most books in Europe were copied by hand, a slow "
             "and expensive process that kept written knowledge in the hands of a small number of institutions. "
             "Within a few decades, printing shops had spread to more than two hundred cities, and millions of "
             "volumes were in circulation. The new technology lowered the cost of books, encouraged the "
             "standardization of spelling and grammar, and helped scientific ideas travel quickly between scholars "
             "who would never meet.")
# Measured with eptk's tokenizer (BOS first), fp32 on the CPU: 2.786 nats/token over 126 predicted tokens.
# transformers 5.17's GGUF tokenizer gives 6.97 on this paragraph, and dropping the BOS 4.94.
PARAGRAPH_LOSS = 2.786
WINDOW = 512
T = 540  # real tokens per row: with 5 or 6 slots in front, the last ~30 queries see no slot in local layers


def test_config_is_gemma3_270m(gemma3):
    config = gemma3.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == \
        ("gemma3_text", 18, 640, 262144)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 1, 256)
    assert config.sliding_window == WINDOW
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3


def test_paragraph_loss(gemma3):
    ids = torch.tensor([gemma3.tokenizer(PARAGRAPH)["input_ids"]])
    with torch.no_grad():
        logits = gemma3.model(input_ids=ids).logits[0, :-1].float()
    loss = float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))
    assert abs(loss - PARAGRAPH_LOSS) < 0.01, loss


def test_greedy_continuation_is_sensible(gemma3):
    """Greedy decoding after "The capital of France is" stays on topic (names France) and does not loop on one
    word (without its BOS the model continues " France. The The The ...")."""
    tokenizer = gemma3.tokenizer
    prompt = tokenizer(["The capital of France is"], return_tensors="pt")
    out = gemma3.model.generate(**prompt, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    words = text.split()
    assert "France" in text and len(set(words)) >= 0.5 * len(words), text


# ---- the two passes on the real checkpoint ------------------------------------------------------------

def long_batch(tokenizer, left):
    """Two rows of T real tokens of English (BOS first); the second padded by 20 on one side."""
    ids = tokenizer(" ".join([PARAGRAPH] * 6))["input_ids"][:T]
    ids = torch.tensor([ids, ids[7:] + ids[:7]])
    mask = torch.ones_like(ids)
    mask[1, :20] = 0 if left else 1
    mask[1, -20:] = 1 if left else 0
    return ids.masked_fill(mask == 0, tokenizer.pad_token_id), mask


# logits compared at these real-token positions (the LM head over 262k tokens at every position would be
# gigabytes): some early ones, and the stretch where the local layers' windows drop the slots
KEEP = torch.tensor([0, 1, 64, 256, 480, *range(495, T)])

# (method, layers, keep_sink, left padding): each forward of 2 x 540 tokens takes ~15 s on two shared cores, so
# the padding side alternates over the cases instead of doubling them
CASES = [("soft", "all", False, False), ("deep", "all", False, True), ("deep", "last:3", False, False),
         ("prefix", "all", False, True), ("deep", "all", True, False)]


def case_id(case):
    method, layers, sink, left = case
    return f"{method}-{layers}" + ("-sink" if sink else "") + ("-left" if left else "-right")


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_sequences_pass_the_window(gemma3):
    """Else the tests below would pass with the window ignored."""
    ids, _ = long_batch(gemma3.tokenizer, left=False)
    assert 5 + ids.shape[1] > WINDOW + 20 and int(KEEP.max()) + 5 >= WINDOW + 20


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_two_pass_equals_full_forward(gemma3, case):
    method, layers, sink, left = case
    prompted = sink_prompted(gemma3, method, layers, keep_sink=sink)
    try:
        ids, mask = long_batch(gemma3.tokenizer, left)
        with torch.no_grad():
            hidden = prompted.hidden(ids, mask)[0].last_hidden_state
            two_pass = prompted.lm_head(hidden[:, KEEP]).float()
            full = full_forward(prompted, ids, mask, keep=KEEP)
        real = mask[:, KEEP].bool()
        error = relative_error(two_pass[real], full[real])
        assert error <= 2e-4, f"{case_id(case)}: {error}"
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("case", [("soft", "all", False, False), ("deep", "all", False, False),
                                  ("prefix", "all", False, False)], ids=case_id)
def test_gradients_match_full_forward(gemma3, case):
    method, layers, sink, left = case
    prompted = sink_prompted(gemma3, method, layers, keep_sink=sink)
    try:
        ids, mask = long_batch(gemma3.tokenizer, left)
        # next-token labels after the kept positions that are real in both rows
        where = KEEP[(KEEP + 1 < int(mask[1].sum()))]
        labels = torch.full_like(ids, -100)
        labels[:, where + 1] = ids[:, where + 1]
        prompted(ids, mask, labels=labels).loss.backward()
        two = {n: p.grad.clone() for n, p in prompted.parameters_by_name().items()}
        prompted.zero_grad()
        logits = full_forward(prompted, ids, mask, keep_graph=True, keep=where)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, where + 1].flatten()).backward()
        for n, p in prompted.parameters_by_name().items():
            error = relative_error(two[n], p.grad)
            assert error < 1e-3, f"{case_id(case)} {n}: {error}"
    finally:
        prompted.remove_hooks()


@pytest.mark.parametrize("method", ["deep", "prefix"])
def test_prefix_mass_equals_explicit_attention(gemma3, method):
    """Per layer and query head, the softmax mass on the prompt's keys averaged over the real query rows, as the
    full forward's explicit attention has it; in local layers the last queries put none there."""
    prompted = sink_prompted(gemma3, method, "all", keep_sink=False)
    try:
        ids, mask = long_batch(gemma3.tokenizer, left=True)
        mass = prompted.prefix_mass(ids, mask)
        probs = {}
        full_forward(prompted, ids, mask, probs=probs, keep=torch.tensor([T - 1]))
        real = mask.bool()
        for layer, p in probs.items():
            on_prompt = p[..., :prompted.tokens].sum(-1).permute(0, 2, 1)     # [B,T,Hq]
            torch.testing.assert_close(mass[layer].double(), on_prompt[real].double().mean(0), rtol=1e-4,
                                       atol=1e-6, msg=lambda m: f"layer {layer}: {m}")
            if gemma3.model.config.layer_types[layer] == "sliding_attention":
                assert float(on_prompt[0, -1].max()) == 0.0, f"layer {layer}: the window hides the prompt"
    finally:
        prompted.remove_hooks()
