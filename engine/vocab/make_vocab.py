"""Regenerate `vocab.json` and `merges.txt`: a 1000-token byte-level BPE for `builtin:tiny`.

Run once (`python engine/vocab/make_vocab.py`); the outputs are committed so the tiny model
needs no network. The vocabulary has CLIP's layout: 256 byte symbols, the same with `</w>`,
merges learnt from a small list of common prompt words, and the two special tokens.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

SIZE = 1000
WORDS = """
a an the of and with in on at by for from to under over painting photo portrait of
robot cat dog bird horse dragon castle city forest mountain river lake ocean sea sky
sunset sunrise night day moon stars space planet galaxy watercolor watercolour oil
digital art illustration drawing sketch anime cartoon realistic photorealistic detailed
highly intricate beautiful cinematic lighting dramatic soft light dark bright colorful
colourful vibrant pastel golden hour trending artstation concept fantasy science fiction
cyberpunk steampunk futuristic ancient medieval modern old young woman man girl boy
child person people face eyes hair red blue green yellow orange purple pink black white
grey gray brown silver gold small large big tiny giant little cute happy sad angry
standing sitting running flying walking sleeping playing holding wearing looking
house tree flower flowers garden field street road car train ship boat plane bridge
tower building room window door table chair book cup coffee food fruit apple cake
water fire snow rain cloud clouds storm wind ice stone wood metal glass paper
blurry ugly deformed low quality bad anatomy extra fingers watermark text signature
masterpiece best quality 4k 8k hd ultra sharp focus depth bokeh wide angle close up
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def main() -> None:
    table = bytes_to_unicode()
    symbols = list(table.values())
    vocab = symbols + [s + "</w>" for s in symbols]
    words = Counter(
        (*tuple(table[b] for b in w.encode())[:-1], table[w.encode()[-1]] + "</w>") for w in WORDS
    )
    merges: list[tuple[str, str]] = []
    budget = SIZE - len(vocab) - 2
    while len(merges) < budget:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for word, freq in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    here = Path(__file__).parent
    (here / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    )
    (here / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    print(f"{len(vocab)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    main()
