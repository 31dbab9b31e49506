"""The packed pass: a training forward runs the slots and the real tokens through the decoder once, in one row,
and computes what the two passes compute (test_two_pass.py compares both with the full forward over every
family). Here: which positions the row holds, when the passes stay apart, a loss that reads a padding
position, and the Triton kernel on the packed row's strided views."""
import pytest
import torch

from eptk.families import decoder_layers
from test_two_pass import batch, make_prompted


def rows_seen(prompted, run):
    """The hidden-state shapes decoder layer 0 received while `run()` ran, one per forward."""
    shapes = []
    handle = decoder_layers(prompted.model)[0].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["hidden_states"]).shape)),
        with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize("method,layers", [("soft", "all"), ("deep", "1,2")])
def test_a_training_step_is_one_forward_over_the_slots_and_the_real_tokens(tiny_models, method, layers):
    prompted = make_prompted(tiny_models["llama"], method, layers)
    d = prompted.dims["hidden_size"]
    try:
        ids, mask = batch()  # 3 rows of 11, 4 padding positions on the right
        labels = ids.masked_fill(mask == 0, -100)
        real = int(mask.sum())
        assert rows_seen(prompted, lambda: prompted(ids, mask, labels=labels).loss.backward()) == [(1, 5 + real, d)]
        # logits of every position, padding included: the row holds them all
        with torch.no_grad():
            assert rows_seen(prompted, lambda: prompted(ids, mask)) == [(1, 5 + 3 * 11, d)]
            # the slots' keys/values on their own (generation, evaluation over many batches): two passes
            prefix = prompted.prefix()
            assert rows_seen(prompted, lambda: prompted(ids, mask, prefix=prefix)) == [(3, 11, d)]
            assert rows_seen(prompted, lambda: prompted.prefix_mass(ids, mask)) == [(1, 5, d), (3, 11, d)]
            prompted.pack_passes = False
            assert rows_seen(prompted, lambda: prompted(ids, mask)) == [(1, 5, d), (3, 11, d)]
    finally:
        prompted.remove_hooks()


def loss_and_gradients(prompted, left, labels_of):
    """The answer loss of test_two_pass's batch (labels from `labels_of(ids, mask)`) and the prompt gradients."""
    try:
        ids, mask = batch(left=left)
        out = prompted(ids, mask, labels=labels_of(ids, mask))
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in prompted.parameters_by_name().items()}
    finally:
        prompted.remove_hooks()


def assert_same(got, want):
    (loss, grads), (want_loss, want_grads) = got, want
    assert float((loss - want_loss).abs() / want_loss.abs()) < 1e-5
    for name, grad in grads.items():
        assert float((grad - want_grads[name]).abs().max() / want_grads[name].abs().max()) < 1e-4, name


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_a_loss_that_reads_a_padding_position_keeps_it_in_the_row(tiny_models, family):
    """Left padding with each row's first real token labelled: its prediction is the padding position's
    output, which the packed row then holds, so the loss and its gradients equal the two passes'."""
    def labels_of(ids, mask):  # rows 1 and 2 padded on the left
        return ids.masked_fill(mask == 0, -100)
    assert_same(*(loss_and_gradients(make_prompted(tiny_models[family], "deep", "1,2", packed=packed), True, labels_of)
                  for packed in (True, False)))


@pytest.mark.interpreter
@pytest.mark.parametrize("left", [False, True])
def test_the_kernel_reads_the_packed_row(tiny_models, left):
    """backend="triton" (interpreted) on the packed row's strided views equals the reference, outputs and
    gradients, with padding left out of the row."""
    pytest.importorskip("triton")

    def labels_of(ids, mask):  # no label read from a padding position: the row holds the real tokens only
        return ids.masked_fill((mask == 0) | (mask.cumsum(-1) == 1), -100)
    assert_same(*(loss_and_gradients(make_prompted(tiny_models["llama"], "deep", "1,2", backend=backend), left,
                                     labels_of) for backend in ("triton", "torch")))
