"""Recall per kind and the share of clean lines changed, per class of false positive, of loraloop's
PII masker and scrubadub's, on the corpus written from the specifications (tests/pii_corpus.py:
hand-written lines, every region's example numbers from libphonenumber's metadata, dates in every
written form, hotlines), and their speed on it, in the same run.

    python bench/pii.py [--repeat 20]

A positive counts as found when its value no longer appears in the output; a clean line counts as
changed when the output differs from the input. scrubadub runs with its default detectors
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

from pii_corpus import ALL_NEGATIVES, ALL_POSITIVES, CLASSES  # noqa: E402

from loraloop.data.pii import mask  # noqa: E402


def evaluate(clean) -> tuple[dict, dict]:
    """(recall per kind, share of lines changed per class of clean text)."""
    found, total = defaultdict(int), defaultdict(int)
    for text, kind, value in ALL_POSITIVES:
        total[kind] += 1
        found[kind] += value not in clean(text)
    recall = {k: found[k] / total[k] for k in sorted(total)} | {"all": sum(found.values()) / len(ALL_POSITIVES)}
    changed = {name: sum(clean(t) != t for t in texts) / len(texts) for name, texts in CLASSES.items()}
    changed["all clean lines"] = sum(clean(t) != t for t in ALL_NEGATIVES) / len(ALL_NEGATIVES)
    return recall, changed


def rate(clean, repeat: int) -> float:
    texts = [t for t, _, _ in ALL_POSITIVES] + ALL_NEGATIVES
    clean(texts[0])  # warm up (imports, compiled patterns)
    t0 = time.perf_counter()
    for _ in range(repeat):
        for t in texts:
            clean(t)
    return repeat * len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    import scrubadub

    sides = {"loraloop": lambda t: mask(t)[0], "scrubadub": scrubadub.clean}
    results = {name: (*evaluate(fn), rate(fn, args.repeat)) for name, fn in sides.items()}
    kinds = sorted({k for _, k, _ in ALL_POSITIVES})
    n_kinds = {k: sum(kind == k for _, kind, _ in ALL_POSITIVES) for k in kinds}
    print(f"corpus: {len(ALL_POSITIVES)} positives, {len(ALL_NEGATIVES)} clean lines")
    print(f"{'recall':38s} " + " ".join(f"{name:>10s}" for name in results) + "  positives")
    for k in [*kinds, "all"]:
        row = " ".join(f"{results[name][0][k]:10.3f}" for name in results)
        print(f"  {k:36s} {row}  {n_kinds.get(k, len(ALL_POSITIVES))}")
    print(f"{'clean lines changed':38s} " + " ".join(f"{name:>10s}" for name in results) + "  lines")
    for c in [*CLASSES, "all clean lines"]:
        row = " ".join(f"{results[name][1][c]:10.3f}" for name in results)
        print(f"  {c:36s} {row}  {len(CLASSES.get(c, ALL_NEGATIVES))}")
    ours, peer = results["loraloop"], results["scrubadub"]
    print(f"{'texts/s':38s} {ours[2]:10.0f} {peer[2]:10.0f}")
    print(
        f"speed ratio (loraloop / scrubadub): {ours[2] / peer[2]:.1f}x; recall {ours[0]['all']:.3f} vs "
        f"{peer[0]['all']:.3f}; clean lines changed {ours[1]['all clean lines']:.3f} vs "
        f"{peer[1]['all clean lines']:.3f}"
    )


if __name__ == "__main__":
    main()
