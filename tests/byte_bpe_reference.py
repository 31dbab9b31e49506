"""GPT-2 byte-level BPE in plain Python, from a GGUF vocabulary's tokens and merges (`tokenizer.ggml.model`
"gpt2"): the reference for SmolLM2's tokenizer. SmolLM2's pre-tokenization (the GGUF's `tokenizer.ggml.pre`
"smollm", as its original tokenizer.json and llama.cpp define it): every digit alone, then GPT-2's pattern;
each piece's UTF-8 bytes become GPT-2's printable characters; then, again and again, the adjacent pair with
the lowest merge rank is joined (the leftmost on a tie).
"""
import regex

DIGIT = regex.compile(r"\p{N}")
GPT2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def byte_characters() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class ByteBPE:
    def __init__(self, tokens, merges):
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.rank = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.chars = byte_characters()

    def pre_tokens(self, text):
        out = []
        for part in _split_keeping(DIGIT, text):
            out.extend(GPT2.findall(part))
        return out

    def merge(self, word):
        symbols = [self.chars[b] for b in word.encode("utf-8")]
        while True:
            ranked = [(self.rank[pair], k) for k, pair in enumerate(zip(symbols, symbols[1:])) if pair in self.rank]
            if not ranked:
                return symbols
            _, k = min(ranked)
            symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]

    def pieces(self, text):
        return [piece for word in self.pre_tokens(text) for piece in self.merge(word)]

    def encode(self, text):
        return [self.ids[p] for p in self.pieces(text)]


def _split_keeping(pattern, text):
    """`text` cut before and after every match of `pattern`, the matches kept as parts."""
    parts, start = [], 0
    for match in pattern.finditer(text):
        parts.extend(p for p in (text[start:match.start()], match.group()) if p)
        start = match.end()
    return parts + ([text[start:]] if text[start:] else [])
