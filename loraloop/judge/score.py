"""Scoring a round's samples: every rule's value per sample, a total score and a training weight; the best-scored
samples are marked `keep` for training, and with several samples per prompt the best and the
worst of each prompt become an on-policy DPO pair."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from ..files import dumps, read_jsonl, replacing, write_jsonl
from ..params import DataError, ParamsError, ScoreParams
from .rules import rule_values, weighted_total


def rewarder_of(params: ScoreParams):
    """The reward model score.reward_model names, for the kinds that need no workspace (hf); the
    score stage builds the learned one from the lineage's judge."""
    rm = params.reward_model
    if rm.kind == "hf":
        from .reward import HfRewarder

        return HfRewarder(rm.path, rm.batch_size)
    if rm.kind == "learned":
        raise ParamsError(
            "score.reward_model.kind learned scores with the lineage's judge: run `loraloop score --round`"
        )
    return None


def score_rows(rows: list[dict], params: ScoreParams, rewarder=None) -> None:
    """Adds `scores` (per rule), `score` and `weight` to each row, in place; with a rewarder, its
    reward as one more value (and the judge's hash, for a learned one)."""
    weights = params.rules.weights.model_dump()
    rm = params.reward_model
    rules = [
        rule_values(row["response"], params.rules, row["messages"], row.get("character_id"), row.get("tools"))
        for row in rows
    ]
    rewards = rewarder.score(rows, rules) if rewarder is not None and rewarder.available else None
    if rewards is not None:
        weights["reward_model"] = rm.weight
    for i, (row, values) in enumerate(zip(rows, rules)):
        if rewards is not None:
            values["reward_model"] = rewards[i]
        row["scores"] = values
        row["score"] = (
            values["reward_model"] if rewards is not None and rm.mode == "replace" else weighted_total(values, weights)
        )
        row["weight"] = max(row["score"], params.weight_floor)
        if rewarder is not None and rewarder.hash:
            row["judge"] = rewarder.hash


def rank(r: dict) -> tuple:
    """Best first; ties break on prompt and sample index, so choices are deterministic."""
    return (-r["score"], r["prompt_id"], r.get("sample_index", 0))


def allowed_in(group: list, params: ScoreParams) -> list:
    """A prompt's rows that may be kept: its best keep_top_k (all without it)."""
    return group if params.keep_top_k is None else sorted(group, key=rank)[: params.keep_top_k]


def chosen(allowed: list[tuple], n_rows: int, params: ScoreParams) -> set:
    """Of (rank, key) pairs, the keys of the best keep_top_fraction of all n_rows."""
    n_keep = max(1, math.ceil(n_rows * params.keep_top_fraction)) if n_rows else 0
    return {key for _, key in sorted(allowed)[:n_keep]}


def mark_kept(rows: list[dict], params: ScoreParams) -> int:
    """keep = among the best `keep_top_fraction` overall and, with keep_top_k, among its prompt's
    best k."""
    per_prompt = defaultdict(list)
    for r in rows:
        per_prompt[r["prompt_id"]].append(r)
    allowed = [(rank(r), id(r)) for group in per_prompt.values() for r in allowed_in(group, params)]
    kept = chosen(allowed, len(rows), params)
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


BATCH = 256  # samples scored at a time (the reward model's batch comes out of these)


def run(params: ScoreParams, samples_file: Path, out_file: Path, pairs_file: Path, rewarder=None) -> dict:
    """scored.jsonl and pairs.jsonl in two passes over the samples, so memory holds a batch and a
    rank per sample, not the round: the first scores a batch at a time, writes the rows unmarked
    and ranks each prompt's samples (sample writes them together); the second marks `keep`."""
    with replacing(out_file, pairs_file) as (out_tmp, pairs_tmp):
        unmarked = out_tmp.with_name(out_tmp.name + ".unmarked")
        rewarder = rewarder if rewarder is not None else rewarder_of(params)
        try:
            n, total, kept, pairs = score_into(samples_file, unmarked, params, rewarder)
            with unmarked.open(encoding="utf-8") as f, out_tmp.open("w", encoding="utf-8") as out:
                for i, line in enumerate(f):
                    out.write(dumps({**json.loads(line), "keep": i in kept}) + "\n")
        finally:
            unmarked.unlink(missing_ok=True)
        write_jsonl(pairs_tmp, sorted(pairs, key=lambda p: p["prompt_id"]))  # as dpo_pairs orders them
    against = sum(p["prompt_id"].startswith("neg:") for p in pairs)
    mean = total / n if n else 0.0
    summary = {"samples": n, "kept": len(kept), "pairs": len(pairs), "negative_pairs": against, "mean_score": mean}
    return summary if rewarder is None else {**summary, "reward_model": rewarder.note}


def score_into(samples_file: Path, unmarked: Path, params: ScoreParams, rewarder=None) -> tuple[int, float, set, list]:
    """The first pass: scored rows to `unmarked`; (rows, their total score, the indices to keep,
    the DPO pairs)."""
    allowed, pairs, n, total = [], [], 0, 0.0
    with unmarked.open("w", encoding="utf-8") as f:
        for group in prompt_groups(samples_file, params, rewarder):
            for r in group:
                f.write(dumps(r) + "\n")
            ok = {id(r) for r in allowed_in(group, params)}
            allowed += [(rank(r), n + i) for i, r in enumerate(group) if id(r) in ok]
            pairs += dpo_pairs(group, params.pair_min_margin, params)
            n, total = n + len(group), total + sum(r["score"] for r in group)
    return n, total, chosen(allowed, n, params), pairs


def prompt_groups(samples_file: Path, params: ScoreParams, rewarder=None) -> Iterator[list[dict]]:
    """The samples scored (BATCH at a time), one prompt's together at a time; a prompt whose
    samples are not together in the file is refused, naming the line."""
    group, seen = [], set()
    for batch in batched(read_jsonl(samples_file), BATCH):
        score_rows(batch, params, rewarder)
        for row in batch:
            if group and row["prompt_id"] != group[0]["prompt_id"]:
                yield group
                group = []
            if not group:
                if row["prompt_id"] in seen:
                    raise DataError(
                        f"{samples_file}: the samples of prompt {row['prompt_id']!r} are not together (another "
                        "prompt's come between them); sample writes each prompt's samples in a row"
                    )
                seen.add(row["prompt_id"])
            group.append(row)
    if group:
        yield group


def batched(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
