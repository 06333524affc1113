"""score@rN: rule scores of each sample, a total score and a training weight; the best-scored
share is marked `keep` for training."""

from __future__ import annotations

import math
from pathlib import Path

from .io import read_jsonl, write_jsonl
from .params import ScoreParams
from .rules import score_text


def run(params: ScoreParams, samples_file: Path, out_file: Path) -> dict:
    rows = list(read_jsonl(samples_file))
    for row in rows:
        row["scores"], row["score"] = score_text(row["response"], params)
        row["weight"] = max(row["score"], params.weight_floor)
    n_keep = max(1, math.ceil(len(rows) * params.keep_top_fraction)) if rows else 0
    ranked = sorted(rows, key=lambda r: (-r["score"], r["prompt_id"]))
    kept = {id(r) for r in ranked[:n_keep]}
    for row in rows:
        row["keep"] = id(row) in kept
    write_jsonl(out_file, rows)
    mean = sum(r["score"] for r in rows) / len(rows) if rows else 0.0
    return {"samples": len(rows), "kept": n_keep, "mean_score": mean}
