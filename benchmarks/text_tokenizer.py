"""Speed of the text tokenizer and the structured-sequence parsers; prints a table.

Run: ``PYTHONPATH=src python benchmarks/text_tokenizer.py`` (uses the official 30k file from
``../shared/fixtures`` when present, and always a tokenizer trained here on synthetic captions).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from open4m.sequences import boxes_to_text, metadata_to_text, palette_to_text, text_to_boxes, text_to_metadata
from open4m.text import TextTokenizer

OFFICIAL_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / (
    "official-text-tokenizer-wordpiece-30k.json"
)
CLASSES = ["sphere", "cube", "cylinder", "cone", "torus"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    adjectives = ["small", "large", "red", "green", "blue", "shiny", "matte", "metallic", "rubber", "yellow"]
    relations = ["left of", "right of", "behind", "in front of", "next to", "on top of"]

    def obj() -> str:
        return f"{rng.choice(adjectives)} {rng.choice(adjectives)} {rng.choice(CLASSES)}"

    return [f"A {obj()} is {rng.choice(relations)} a {obj()}, under a {obj()}." for _ in range(n)]


def box_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        boxes = []
        for _ in range(rng.randint(1, 8)):
            x0, x1 = sorted([rng.random(), rng.random()])
            y0, y1 = sorted([rng.random(), rng.random()])
            boxes.append({"box": [x0, y0, x1, y1], "class": rng.choice(CLASSES)})
        out.append(boxes_to_text(boxes))
    return out


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rows: list[tuple[str, str, float]] = []
    for n in (10_000, 100_000):
        corpus = captions(n)
        seconds = timed(lambda c=corpus: TextTokenizer.train(c, vocab_size=8000, class_names=CLASSES), repeats=1)
        rows.append(("train (vocab 8000)", f"{n} captions", seconds))
    tokenizers = {"trained": TextTokenizer.train(captions(10_000), vocab_size=8000, class_names=CLASSES)}
    if OFFICIAL_FILE.is_file():
        tokenizers["official-30k"] = TextTokenizer.load(OFFICIAL_FILE)
    caps, boxes = captions(10_000, seed=1), box_strings(10_000, seed=2)
    meta = [metadata_to_text({"n_objects": i % 9, "brightness": i % 255, "contrast": i % 100}) for i in range(10_000)]
    for name, tok in tokenizers.items():
        ids = tok.encode_batch(caps)
        box_ids = tok.encode_batch(boxes)
        rows.append((f"{name}: encode (loop)", "10k captions", timed(lambda t=tok: [t.encode(c) for c in caps])))
        rows.append((f"{name}: encode_batch", "10k captions", timed(lambda t=tok: t.encode_batch(caps))))
        rows.append((f"{name}: decode_batch", "10k captions", timed(lambda t=tok, i=ids: t.decode_batch(i))))
        rows.append((f"{name}: encode_batch", "10k box strings", timed(lambda t=tok: t.encode_batch(boxes))))
        decoded = tok.decode_batch(box_ids)
        rows.append((f"{name}: decode+parse boxes", "10k box strings",
                     timed(lambda t=tok, i=box_ids: [text_to_boxes(s, CLASSES) for s in t.decode_batch(i)])))
        assert all(text_to_boxes(s, CLASSES)[1].ok for s in decoded)
    rows.append(("boxes_to_text", "10k samples", timed(lambda: box_strings(10_000, seed=2))))
    rows.append(("palette_to_text", "10k samples",
                 timed(lambda: [palette_to_text([[i % 256, 3, 4]] * 5) for i in range(10_000)])))
    rows.append(("text_to_metadata", "10k samples", timed(lambda: [text_to_metadata(m) for m in meta])))

    print(f"{'operation':34s} {'input':18s} {'seconds':>8s} {'items/s':>10s}")
    for op, what, seconds in rows:
        count = int(what.split()[0].replace("k", "000"))
        print(f"{op:34s} {what:18s} {seconds:8.3f} {count / seconds:10.0f}")


if __name__ == "__main__":
    main()
