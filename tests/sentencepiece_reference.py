"""SentencePiece's BPE segmentation in plain Python, from a GGUF vocabulary's pieces, scores and types: the
reference eptk's built tokenizer must reproduce. Slow (quadratic per fragment) and obviously right:

1. user-defined pieces are cut out of the raw text first, at each position the longest one that starts
   there, scanning left to right (SentencePiece's prefix matcher; the GGUF spells their spaces as spaces);
2. in each remaining fragment, spaces become ▁ and every character is a symbol; then, again and again, the
   adjacent pair whose joined string is a normal piece with the highest score is joined (the leftmost pair
   on a tie), until no joined pair is a piece;
3. a symbol that is not a piece becomes the <0xXX> pieces of its UTF-8 bytes.
"""
NORMAL, USER_DEFINED = 1, 4


class ScoreMerge:
    def __init__(self, pieces, scores, types):
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.score = {piece: s for piece, s, t in zip(pieces, scores, types) if t == NORMAL}
        self.user = {piece for piece, t in zip(pieces, types) if t == USER_DEFINED}
        self.longest_user = max(map(len, self.user), default=0)

    def fragments(self, text):
        """[(is_user_defined, string)] in text order."""
        out, start, i = [], 0, 0
        while i < len(text):
            match = next((text[i:i + n] for n in range(min(self.longest_user, len(text) - i), 0, -1)
                          if text[i:i + n] in self.user), None)
            if match is None:
                i += 1
                continue
            if start < i:
                out.append((False, text[start:i]))
            out.append((True, match))
            i += len(match)
            start = i
        if start < len(text):
            out.append((False, text[start:]))
        return out

    def merge(self, fragment):
        symbols = list(fragment.replace(" ", "▁"))
        while True:
            best = None
            for k in range(len(symbols) - 1):
                joined = symbols[k] + symbols[k + 1]
                if joined in self.score and (best is None or self.score[joined] > self.score[best[1]]):
                    best = (k, joined)
            if best is None:
                return symbols
            k, joined = best
            symbols[k:k + 2] = [joined]

    def pieces(self, text):
        """The pieces of `text` (no BOS)."""
        out = []
        for user, fragment in self.fragments(text):
            if user:
                out.append(fragment)
                continue
            for symbol in self.merge(fragment):
                out.extend([symbol] if symbol in self.score else [f"<0x{b:02X}>" for b in symbol.encode("utf-8")])
        return out

    def encode(self, text):
        return [self.ids[p] for p in self.pieces(text)]
