"""Scoring a round's samples: every rule's value per sample, a total score and a training weight; the best-scored
samples are marked `keep` for training, and with several samples per prompt the best and the
worst of each prompt become an on-policy DPO pair."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..files import read_jsonl, replacing, write_jsonl
from ..params import ScoreParams
from .rules import rule_values, weighted_total


def score_rows(rows: list[dict], params: ScoreParams) -> None:
    """Adds `scores` (per rule), `score` and `weight` to each row, in place."""
    weights = params.rules.weights.model_dump()
    rm = params.reward_model
    rewards = None
    if rm.path:
        from .reward import RewardModel

        convs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows]
        rewards = RewardModel(rm.path).score(convs, rm.batch_size)
        weights["reward_model"] = rm.weight
    for i, row in enumerate(rows):
        values = rule_values(row["response"], params.rules, row["messages"], row.get("character_id"), row.get("tools"))
        if rewards is not None:
            values["reward_model"] = rewards[i]
        row["scores"] = values
        row["score"] = (
            values["reward_model"] if rewards is not None and rm.mode == "replace" else weighted_total(values, weights)
        )
        row["weight"] = max(row["score"], params.weight_floor)


def mark_kept(rows: list[dict], params: ScoreParams) -> int:
    """keep = among the best `keep_top_fraction` overall and, with keep_top_k, among its prompt's
    best k. Ties break on prompt and sample index, so the choice is deterministic."""
    rank = lambda r: (-r["score"], r["prompt_id"], r.get("sample_index", 0))  # noqa: E731
    allowed = {id(r) for r in rows}
    if params.keep_top_k is not None:
        per_prompt = defaultdict(list)
        for r in rows:
            per_prompt[r["prompt_id"]].append(r)
        allowed = {id(r) for group in per_prompt.values() for r in sorted(group, key=rank)[: params.keep_top_k]}
    n_keep = max(1, math.ceil(len(rows) * params.keep_top_fraction)) if rows else 0
    kept = {id(r) for r in sorted((r for r in rows if id(r) in allowed), key=rank)[:n_keep]}
    for row in rows:
        row["keep"] = id(row) in kept
    return len(kept)


def dpo_pairs(rows: list[dict], min_margin: float, params: ScoreParams | None = None) -> list[dict]:
    """Per prompt with two or more distinct replies: best vs worst, if they differ by min_margin.
    A negative's prompt pairs its best reply against the logged bad one instead (scored by the
    same rules; any reply beats one a user turned down, so no margin is asked there)."""
    per_prompt = defaultdict(list)
    for r in rows:
        per_prompt[r["prompt_id"]].append(r)
    pairs = []
    for pid in sorted(per_prompt):
        group = sorted(per_prompt[pid], key=lambda r: (-r["score"], r.get("sample_index", 0)))
        best, worst = group[0], group[-1]
        if "negative" in best:
            if best["response"] == best["negative"]:
                continue
            worst = {"response": best["negative"], "score": negative_score(best, params)}
        elif len(group) < 2 or best["response"] == worst["response"] or best["score"] - worst["score"] < min_margin:
            continue
        pairs.append(
            {
                "prompt_id": pid,
                "character_id": best.get("character_id"),
                "messages": best["messages"],
                "chosen": best["response"],
                "rejected": worst["response"],
                "chosen_score": best["score"],
                "rejected_score": worst["score"],
            }
        )
    return pairs


def negative_score(row: dict, params: ScoreParams | None) -> float | None:
    """The logged bad reply's score under the rules (None without rules to judge by)."""
    if params is None:
        return None
    values = rule_values(row["negative"], params.rules, row["messages"], row.get("character_id"), row.get("tools"))
    return weighted_total(values, params.rules.weights.model_dump())


def run(params: ScoreParams, samples_file: Path, out_file: Path, pairs_file: Path) -> dict:
    rows = list(read_jsonl(samples_file))
    score_rows(rows, params)
    n_keep = mark_kept(rows, params)
    pairs = dpo_pairs(rows, params.pair_min_margin, params)
    with replacing(out_file, pairs_file) as (out_tmp, pairs_tmp):
        write_jsonl(out_tmp, rows)
        write_jsonl(pairs_tmp, pairs)
    mean = sum(r["score"] for r in rows) / len(rows) if rows else 0.0
    against = sum(p["prompt_id"].startswith("neg:") for p in pairs)
    return {"samples": len(rows), "kept": n_keep, "pairs": len(pairs), "negative_pairs": against, "mean_score": mean}
