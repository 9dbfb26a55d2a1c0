"""Train the reference server's language model (mlinfra/textgen.json) from public-domain text.

    python tools/train_textgen.py                      # Genesis, from Debian's bible-kjv
    python tools/train_textgen.py --text some.txt      # any plain text

The default text is the Book of Genesis, King James Version (1611; public domain), read with
the ``bible`` program of Debian's ``bible-kjv`` package (``apt-get install bible-kjv``; the text
itself is in ``bible-kjv-text``, whose copyright file notes the translation's copyright has
expired). Deterministic: the same text gives the same file. numpy only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlinfra.textgen import FORMAT, MODEL_FILE, pack, tokenize  # noqa: E402

GENESIS = "gen1:1-gen50:26"
SOURCE = "The Book of Genesis, King James Version (1611), from Debian's bible-kjv-text package"
LICENCE = "public domain (the translation's copyright has expired; see bible-kjv-text's copyright file)"
MIN_TRIGRAM = 2  # trigrams seen once are dropped: half the file (GCP metadata values hold 256 KB at most)


def read_genesis() -> str:
    out = subprocess.run(["bible", "-f", GENESIS], capture_output=True, text=True, check=True).stdout
    return re.sub(r"^\S+\d+:\d+ ", "", out, flags=re.M)  # drop the "Ge1:1 " verse references


def train(text: str) -> dict:
    tokens = tokenize(text)
    counts = Counter(tokens)
    vocab = sorted(counts, key=lambda t: (-counts[t], t))
    index = {t: i for i, t in enumerate(vocab)}
    ids = np.array([index[t] for t in tokens], dtype=np.int64)
    size = len(vocab)

    pairs = Counter(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    bi = sorted(pairs.items())
    bi_starts = np.searchsorted(np.array([a for (a, _), _ in bi]), np.arange(size + 1))

    triples = Counter(zip(ids[:-2].tolist(), ids[1:-1].tolist(), ids[2:].tolist(), strict=True))
    tri = sorted((k, c) for k, c in triples.items() if c >= MIN_TRIGRAM)
    keys = np.array([a * size + b for (a, b, _), _ in tri], dtype=np.int64)
    tri_keys, first = np.unique(keys, return_index=True)
    tri_starts = np.append(first, len(tri))
    return {
        "format": FORMAT,
        "name": "genesis-trigram",
        "source": SOURCE,
        "licence": LICENCE,
        "tokens_trained": len(tokens),
        "vocab": vocab,
        "arrays": {
            "unigram": pack([counts[t] for t in vocab]),
            "bi_starts": pack(bi_starts),
            "bi_next": pack([b for (_, b), _ in bi]),
            "bi_count": pack([c for _, c in bi]),
            "tri_keys": pack(tri_keys),
            "tri_starts": pack(tri_starts),
            "tri_next": pack([c for (_, _, c), _ in tri]),
            "tri_count": pack([n for _, n in tri]),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="a plain-text file (default: Genesis from `bible`)")
    parser.add_argument("--out", type=Path, default=Path(MODEL_FILE))
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8") if args.text else read_genesis()
    model = train(text)
    args.out.write_text(json.dumps(model, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{args.out}: {args.out.stat().st_size} bytes, {len(model['vocab'])} words, "
          f"{model['tokens_trained']} tokens trained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
