"""Recall per kind and false-positive rate of loraloop's PII masker and scrubadub's, on the corpus
written from the specifications (tests/pii_corpus.py), and their speed on it, in the same run.

    python bench/pii.py [--repeat 200]

A positive counts as found when its value no longer appears in the output; a negative counts as a
false positive when the output differs from the input. scrubadub runs with its default detectors
(`scrubadub.clean`). Needs the bench extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pii_corpus import NEGATIVES, POSITIVES  # noqa: E402

from loraloop.data.pii import mask  # noqa: E402


def evaluate(clean) -> tuple[dict, float]:
    found, total = defaultdict(int), defaultdict(int)
    for text, kind, value in POSITIVES:
        total[kind] += 1
        found[kind] += value not in clean(text)
    recall = {k: found[k] / total[k] for k in sorted(total)}
    false_pos = sum(clean(t) != t for t in NEGATIVES) / len(NEGATIVES)
    return recall | {"all": sum(found.values()) / len(POSITIVES)}, false_pos


def rate(clean, repeat: int) -> float:
    texts = [t for t, _, _ in POSITIVES] + NEGATIVES
    clean(texts[0])  # warm up (imports, compiled patterns)
    t0 = time.perf_counter()
    for _ in range(repeat):
        for t in texts:
            clean(t)
    return repeat * len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    import scrubadub

    sides = {"loraloop": lambda t: mask(t)[0], "scrubadub": scrubadub.clean}
    results = {
        name: (*evaluate(fn), rate(fn, args.repeat if name == "loraloop" else max(1, args.repeat // 10)))
        for name, fn in sides.items()
    }
    kinds = sorted({k for _, k, _ in POSITIVES})
    print(f"corpus: {len(POSITIVES)} positives ({', '.join(kinds)}), {len(NEGATIVES)} negatives")
    print(f"{'':10s} " + " ".join(f"{k:>8s}" for k in [*kinds, "all"]) + "  false-pos  texts/s")
    for name, (recall, false_pos, speed) in results.items():
        print(
            f"{name:10s} "
            + " ".join(f"{recall.get(k, 0):8.2f}" for k in [*kinds, "all"])
            + f"  {false_pos:9.2f}  {speed:7.0f}"
        )
    ours, peer = results["loraloop"], results["scrubadub"]
    print(
        f"speed ratio (loraloop / scrubadub): {ours[2] / peer[2]:.1f}x; "
        f"recall {ours[0]['all']:.2f} vs {peer[0]['all']:.2f}; false positives {ours[1]:.2f} vs {peer[1]:.2f}"
    )


if __name__ == "__main__":
    main()
