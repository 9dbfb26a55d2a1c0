"""The reference server's language model: a word-level trigram model, numpy only, that
``/v1/completions`` streams tokens from (``completions.py``).

Small but real: trained by ``tools/train_textgen.py`` on the Book of Genesis in the King James
Version (public domain: the translation is of 1611; the text comes from Debian's
``bible-kjv-text`` package), its counts shipped in ``textgen.json`` beside this file (a few
hundred KB, so a GCP node can receive it as one metadata value). A token is a word or a
punctuation mark; the next one is drawn from an interpolation of the trigram, bigram and
unigram distributions (Jelinek-Mercer smoothing), with the request's temperature and seed.

On a GCP node this file and ``textgen.json`` are shipped beside ``serve.py`` as
``mlinfra/textgen.py``, like ``demand.py``. numpy is imported only when the model loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# os.path, not pathlib, and base64/zlib imported when the model loads: the server imports this
# module at start, and a server that never generates text should not pay for more.
MODEL_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "textgen.json")
FORMAT = "mlinfra-textgen/1"
# A word (with an inner apostrophe), a number, or one punctuation mark.
TOKEN = r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+|[^\sA-Za-z\d]"  # compiled on first use (re's cache), not at import
NO_SPACE_BEFORE = frozenset(".,;:!?)'")
# Interpolation weights of the trigram, bigram and unigram distributions (fixed, not tuned:
# the point is a real token stream, not perplexity).
WEIGHTS = (0.6, 0.3, 0.1)


def tokenize(text: str) -> list[str]:
    return re.findall(TOKEN, text)


def piece(token: str, first: bool) -> str:
    """The text a token adds to what came before: a leading space unless it is punctuation."""
    return token if first or token in NO_SPACE_BEFORE else " " + token


def pack(array) -> str:
    """An int array as base64 of zlib'd little-endian int32 (the training script writes these)."""
    import base64
    import zlib

    import numpy as np

    return base64.b64encode(zlib.compress(np.asarray(array, dtype="<i4").tobytes(), 9)).decode()


def unpack(text: str) -> np.ndarray:
    import base64
    import zlib

    import numpy as np

    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i4").astype(np.int64)


class TextModel:
    """Counts in compressed-sparse-row form: the bigram row of token b, the trigram row of the
    pair (a, b) found by binary search over the sorted keys ``a * V + b``."""

    def __init__(self, data: dict) -> None:
        import numpy as np

        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model file")
        self.name: str = data["name"]
        self.vocab: list[str] = data["vocab"]
        self.index = {token: i for i, token in enumerate(self.vocab)}
        arrays = {key: unpack(value) for key, value in data["arrays"].items()}
        unigram = arrays["unigram"].astype(float)
        self.unigram = unigram / unigram.sum()
        self.bi_starts, self.bi_next, self.bi_count = arrays["bi_starts"], arrays["bi_next"], arrays["bi_count"]
        self.tri_keys, self.tri_starts = arrays["tri_keys"], arrays["tri_starts"]
        self.tri_next, self.tri_count = arrays["tri_next"], arrays["tri_count"]
        self._np = np

    @classmethod
    def load(cls, path: str = MODEL_FILE) -> TextModel:
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; an unknown word breaks the context (-1)."""
        return [self.index.get(token, -1) for token in tokenize(text)]

    def distribution(self, a: int, b: int) -> np.ndarray:
        np = self._np
        p = WEIGHTS[2] * self.unigram
        if b >= 0:
            lo, hi = self.bi_starts[b], self.bi_starts[b + 1]
            if hi > lo:
                counts = self.bi_count[lo:hi]
                p[self.bi_next[lo:hi]] += WEIGHTS[1] * counts / counts.sum()
            if a >= 0:
                key = a * len(self.vocab) + b
                row = int(np.searchsorted(self.tri_keys, key))
                if row < len(self.tri_keys) and self.tri_keys[row] == key:
                    lo, hi = self.tri_starts[row], self.tri_starts[row + 1]
                    counts = self.tri_count[lo:hi]
                    p[self.tri_next[lo:hi]] += WEIGHTS[0] * counts / counts.sum()
        return p

    def generate(
        self, prompt: str, max_tokens: int, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str]:
        """Yield ``max_tokens`` pieces of text continuing ``prompt``, one token each."""
        np = self._np
        rng = np.random.default_rng(seed)
        ids = self.encode(prompt)
        a, b = ([-1, -1] + ids)[-2:]
        for i in range(max_tokens):
            p = self.distribution(a, b)
            if temperature <= 0:
                token = int(np.argmax(p))
            else:
                if temperature != 1.0:
                    p = p ** (1.0 / temperature)
                cumulative = np.cumsum(p)
                token = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
                token = min(token, len(self.vocab) - 1)
            yield piece(self.vocab[token], first=i == 0 and not prompt)
            a, b = b, token
