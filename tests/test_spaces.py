"""eptk.spaces: where prompt tensors live (layer index and space of each TensorSpec) and the one `--layers` parser,
with the one-line errors that name the valid choices."""
import dataclasses

import pytest

from eptk.errors import EptkUsageError
from eptk.spaces import RESIDUAL, SPACES, TensorSpec, check_layer_spec, parse_layers


def test_a_spec_without_a_space_is_embedding_at_layer_0_and_activation_above():
    assert TensorSpec("soft", (4, 8), 0).space == "embedding"
    assert TensorSpec("deep.1", (4, 8), 1).space == "activation"
    assert TensorSpec("deep.5", (4, 8), 5, "").space == "activation"
    assert TensorSpec("prefix.0.key", (2, 4, 8), 0, "key").space == "key"  # a given space is kept, at layer 0 too
    assert TensorSpec("prefix.3.value", (2, 4, 8), 3, "value").space == "value"


def test_only_residual_stream_vectors_are_residual():
    assert SPACES == ("embedding", "activation", "key", "value") and RESIDUAL == ("embedding", "activation")
    assert [TensorSpec("t", (1,), 2, space).residual for space in SPACES] == [True, True, False, False]


def test_an_unknown_space_is_refused_naming_the_four():
    with pytest.raises(ValueError) as refused:
        TensorSpec("x", (1,), 0, "query")
    assert str(refused.value) == "unknown space 'query'; valid: embedding, activation, key, value"


def test_a_spec_is_frozen():
    spec = TensorSpec("soft", (4, 8), 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layer = 1


@pytest.mark.parametrize("spec,lowest", [("all", 1), ("last:1", 1), ("last:30", 1), ("1", 1), ("0", 0),
                                         ("4,8, 12", 1), ("3,", 1), (" 2 ", 1)])
def test_check_layer_spec_accepts_the_grammar_before_the_model_is_known(spec, lowest):
    check_layer_spec(spec, lowest=lowest)


@pytest.mark.parametrize("spec,lowest", [("", 1), (None, 1), ("last:0", 1), ("last:-2", 1), ("last:x", 1),
                                         ("0", 1), ("-1", 0), ("2,0", 1), ("x", 1), (",", 1), ("1.5", 1)])
def test_check_layer_spec_refuses_naming_the_grammar(spec, lowest):
    with pytest.raises(EptkUsageError) as refused:
        check_layer_spec(spec, lowest=lowest)
    assert str(refused.value) == (f"bad --layers {str(spec or '').strip()!r}; valid: all, last:N (N >= 1), or a comma "
                                  f"list of layers >= {lowest}")


def test_check_layer_spec_counts_from_1_by_default():
    check_layer_spec("1")
    with pytest.raises(EptkUsageError, match=">= 1"):
        check_layer_spec("0")


def test_tune_layers():
    """Tune's deep layers: 1..L-1; last:N is the input of the last N decoder layers."""
    assert parse_layers("all", 5) == [1, 2, 3, 4]
    assert parse_layers("last:3", 30) == [27, 28, 29]
    assert parse_layers("last:7", 8) == [1, 2, 3, 4, 5, 6, 7]   # every layer that can be chosen
    assert parse_layers("last:1", 8) == [7]                     # the smallest count
    assert parse_layers("4,2", 8) == [2, 4]
    assert parse_layers("4, 2,4 ,", 8) == [2, 4]                # sorted, once each, blanks ignored
    assert parse_layers(" 7 ", 8) == [7] and parse_layers("1", 8) == [1]


def test_capture_layers():
    """Capture's layers: 0..L, the last layer's output L chosen by naming it or by `all`."""
    def capture(text, num_layers):
        return parse_layers(text, num_layers, lowest=0, highest=num_layers)
    assert capture("all", 4) == [0, 1, 2, 3, 4]
    assert capture("last:2", 4) == [2, 3]   # the inputs of the last two layers, as in tune
    assert capture("last:4", 4) == [0, 1, 2, 3]
    assert capture("4", 4) == [4] and capture("3, 0", 4) == [0, 3]


TUNE_VALID = ("all, last:N (1..7), or a comma list of layers in 1..7 (0 = token embeddings, l = the input of "
              "decoder layer l, 8 = the last layer's output)")


@pytest.mark.parametrize("spec,message", [
    ("0", "--layers '0': layer 0 out of range"), ("8", "--layers '8': layer 8 out of range"),
    ("3,9", "--layers '3,9': layer 9 out of range"), ("", "--layers '': layer ? out of range"),
    (",", "--layers ',': layer ? out of range"), ("last:0", "--layers last:0 out of range"),
    ("last:8", "--layers last:8 out of range"), ("last:x", "bad --layers 'last:x'"), ("x", "bad --layers 'x'"),
    ("2,x", "bad --layers '2,x'")])
def test_parse_layers_refuses_naming_the_range(spec, message):
    with pytest.raises(EptkUsageError) as refused:
        parse_layers(spec, 8)
    assert str(refused.value) == f"{message}; valid: {TUNE_VALID}"


def test_parse_layers_names_the_capture_range():
    with pytest.raises(EptkUsageError) as refused:
        parse_layers("5", 4, lowest=0, highest=4)
    assert str(refused.value) == ("--layers '5': layer 5 out of range; valid: all, last:N (1..4), or a comma list of "
                                  "layers in 0..4 (0 = token embeddings, l = the input of decoder layer l, 4 = the "
                                  "last layer's output)")
    with pytest.raises(EptkUsageError, match="layer -1 out of range"):
        parse_layers("-1", 4, lowest=0, highest=4)
    with pytest.raises(EptkUsageError, match="last:5 out of range"):
        parse_layers("last:5", 4, lowest=0, highest=4)
