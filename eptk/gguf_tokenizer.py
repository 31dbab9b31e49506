"""A fast tokenizer built from a GGUF's SentencePiece-BPE vocabulary (`tokenizer.ggml.model` "llama": pieces,
scores and token types, as Gemma's GGUFs carry it), segmenting the way SentencePiece's BPE does: the text
is split into characters and the adjacent pair whose joined piece has the highest score is joined, again
and again; pieces the vocabulary lacks fall back to their UTF-8 bytes.

transformers 5.17 builds Gemma GGUF vocabularies into a Unigram model instead, which reads these BPE
scores as log-probabilities: "The quick brown fox" becomes `The ▁qu ick ▁b ro wn ▁f ox` rather than
`The ▁quick ▁brown ▁fox`, and Gemma-3-270M's loss on English text rises from 2.4 to 7 nats per token.

The result is a real `tokenizers` BPE model wrapped in transformers' fast tokenizer (padding, batching,
offsets and decoding all work): the merge ranks are every pair of normal pieces whose join is a normal
piece, ordered by that joined piece's score. User-defined pieces (whitespace runs, newlines, HTML tags)
are matched whole in the raw text before merging, leftmost and longest first, as SentencePiece's prefix
matcher does; the GGUF stores them with spaces where SentencePiece has ▁. Control pieces (<bos>, <eos>,
<start_of_turn>, <unusedN>) are special tokens, matched in text as in Hugging Face's own Gemma tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import EptkUsageError

# gguf.TokenType, spelled here so that building needs no GGUF file
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6
SPACE = "▁"  # SentencePiece's visible space


@dataclass
class GgufVocabulary:
    """The tokenizer fields of a GGUF file."""
    model: str                 # tokenizer.ggml.model: "llama" is SentencePiece, "gpt2" byte-level BPE
    pieces: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def read_vocabulary(path) -> GgufVocabulary:
    """The tokenizer fields of the GGUF at `path` (reading a 262k-piece vocabulary takes ~30 s: the gguf
    package parses every field of the file)."""
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def value(key, default=None):
        field = fields.get(f"tokenizer.ggml.{key}")
        return default if field is None else field.contents()

    def array(key):
        field = fields.get(f"tokenizer.ggml.{key}")
        return [] if field is None else [field.parts[i] for i in field.data]

    pieces = [bytes(part).decode("utf-8") for part in array("tokens")]
    scores = [float(part[0]) for part in array("scores")] or [0.0] * len(pieces)
    types = [int(part[0]) for part in array("token_type")] or [NORMAL] * len(pieces)
    return GgufVocabulary(model=value("model", ""), pieces=pieces, scores=scores, types=types,
                          bos_id=value("bos_token_id"), eos_id=value("eos_token_id"),
                          unk_id=value("unknown_token_id"), pad_id=value("padding_token_id"),
                          add_bos=bool(value("add_bos_token", True)), add_eos=bool(value("add_eos_token", False)),
                          add_space_prefix=bool(value("add_space_prefix", True)))


def builds_here(vocab: GgufVocabulary) -> bool:
    """Whether `build_tokenizer` takes this vocabulary: SentencePiece BPE without a dummy space prefix (Gemma's
    layout; the prefix of Llama-2's would need a normalizer and decoder step this module has not been
    verified with)."""
    return vocab.model == "llama" and not vocab.add_space_prefix


def merges(vocab: GgufVocabulary) -> list[tuple[str, str]]:
    """BPE merge ranks equivalent to SentencePiece's score order: every split of a normal piece into two
    normal pieces, ordered by the whole piece's score, highest first (the scores of normal pieces are
    distinct, so one piece's splits are adjacent; they cannot meet in one text except in periodic runs)."""
    normal = {piece for piece, kind in zip(vocab.pieces, vocab.types) if kind == NORMAL}
    ranked = []
    for piece, score, kind in zip(vocab.pieces, vocab.scores, vocab.types):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, left, right))
    ranked.sort(key=lambda entry: entry[0])  # stable: a piece's splits stay left to right
    return [(left, right) for _, left, right in ranked]


def build_tokenizer(vocab: GgufVocabulary):
    """A transformers fast tokenizer over a `tokenizers` BPE model that segments like SentencePiece."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    if not builds_here(vocab):
        raise EptkUsageError(f"eptk builds tokenizers for SentencePiece-BPE GGUF vocabularies without a space "
                             f"prefix (Gemma's); this one is {vocab.model!r} with add_space_prefix="
                             f"{vocab.add_space_prefix}")
    ids = {piece: i for i, piece in enumerate(vocab.pieces)}
    core = Tokenizer(BPE(vocab=ids, merges=merges(vocab), unk_token=_piece(vocab, vocab.unk_id),
                         byte_fallback=True, fuse_unk=False))
    core.normalizer = normalizers.Replace(" ", SPACE)
    core.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    core.add_tokens([AddedToken(piece, normalized=False, special=False)
                     for piece, kind in zip(vocab.pieces, vocab.types) if kind == USER_DEFINED])
    core.add_special_tokens([AddedToken(piece, normalized=False, special=True)
                             for piece, kind in zip(vocab.pieces, vocab.types) if kind == CONTROL])
    # add_bos_token / add_eos_token: transformers writes the post-processor that puts <bos> first (Gemma needs it)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=_piece(vocab, vocab.bos_id),
                                   eos_token=_piece(vocab, vocab.eos_id),
                                   unk_token=_piece(vocab, vocab.unk_id), pad_token=_piece(vocab, vocab.pad_id),
                                   add_bos_token=vocab.add_bos, add_eos_token=vocab.add_eos)


def _piece(vocab: GgufVocabulary, index: int | None) -> str | None:
    return None if index is None else vocab.pieces[index]


def tokenizer_from_gguf(path: Path):
    """The tokenizer of a GGUF file: eptk's SentencePiece build where it applies (`builds_here`), else None
    (transformers' own conversion serves, e.g. the byte-level BPE of SmolLM2, checked to match its merges)."""
    vocab = read_vocabulary(path)
    return build_tokenizer(vocab) if builds_here(vocab) else None
