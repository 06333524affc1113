"""A round's training data: the SFT mix (kept on-policy samples and anchor conversations of the
train split) or the DPO pairs (score's and the users' feedback pairs), tokenized, and the
schedule of length-grouped micro-batches every process follows."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..data.prompts import in_character
from ..data.splits import load_split
from ..files import read_jsonl
from ..lm.chat import training_ids
from ..lm.loss import collate
from ..params import Params, TrainParams
from ..workspace import Round


@dataclass(frozen=True)
class Inputs:
    """What a round trains on: its lineage's dataset view and score's samples and pairs (the
    round's own files unless a command names others; a pairs file that is not there is none)."""

    round: Round
    scored: Path
    pairs: Path | None

    @classmethod
    def of(cls, r: Round, scored: Path | None = None, pairs: Path | None = None) -> Inputs:
        return cls(r, Path(scored or r.scored), Path(pairs or r.pairs))

    @property
    def files(self) -> list[Path]:
        """The data files that exist, in the order the checkpoint fingerprint hashes them."""
        return [self.scored] + ([self.pairs] if self.pairs and self.pairs.is_file() else [])


def build_mix(
    params: Params, system_prompts: dict[str, str], scored_file: Path, view: Path, rng: random.Random
) -> list[dict]:
    """The kept on-policy samples and enough train-split conversations of the lineage's characters
    (the keys of system_prompts) for `mix_ratio`."""
    onpolicy = [
        {
            "messages": r["messages"] + [{"role": "assistant", "content": r["response"]}],
            "tools": r.get("tools"),
            "weight": r["weight"],
            "kind": "onpolicy",
        }
        for r in read_jsonl(scored_file)
        if r["keep"] and r["response"].strip()
    ]
    rows = load_split(view, "train", sorted(system_prompts))
    mix = params.train.mix_ratio
    n_anchor = min(len(rows), round(len(onpolicy) * (1 - mix) / mix)) if onpolicy else len(rows)
    anchors = [
        {
            "messages": in_character(system_prompts, r["character_id"], r["messages"]),
            "tools": r.get("tools"),
            "weight": r["weight"],
            "kind": "anchor",
        }
        for r in rng.sample(rows, n_anchor)
    ]
    return onpolicy + anchors


def build_pairs(params: Params, system_prompts: dict[str, str], pairs_file: Path | None, view: Path) -> list[dict]:
    """score's on-policy pairs (best vs worst reply of a prompt) and, with train.feedback_pairs,
    the version's feedback pairs (a reply users marked bad and its correction), system prompt in front."""
    pairs = [{**p, "kind": "pair"} for p in read_jsonl(pairs_file)] if pairs_file and Path(pairs_file).is_file() else []
    if params.train.feedback_pairs:
        pairs += [
            {
                "messages": in_character(system_prompts, r["character_id"], r["prompt"]),
                "tools": r.get("tools"),
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                "kind": "feedback_pair",
            }
            for r in load_split(view, "dpo", sorted(system_prompts))
        ]
    return pairs


def tokenize_pairs(tok, pairs: list[dict], max_length: int) -> tuple[list[dict], int]:
    """DPO pairs as (chosen, rejected) tokenized conversations; a pair either side of which
    max_length empties is dropped and counted."""
    out, dropped = [], 0
    for p in pairs:
        sides = [
            training_ids(tok, p["messages"] + [{"role": "assistant", "content": p[k]}], max_length, p.get("tools"))
            for k in ("chosen", "rejected")
        ]
        if None in sides:
            dropped += 1
            continue
        (c_ids, c_mask), (r_ids, r_mask) = sides
        out.append(
            {
                "chosen": {"ids": c_ids, "mask": c_mask},
                "rejected": {"ids": r_ids, "mask": r_mask},
                "ids": c_ids + r_ids,  # only for length grouping
                "kind": p["kind"],
            }
        )
    return out, dropped


def collate_pairs(pairs: list[dict], pad_id: int, dev, aligned: bool = False) -> dict:
    """Chosen rows first, then rejected, in one batch: one forward pass serves both."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, dev, aligned)


def batches(examples: list[dict], batch_size: int, rng: random.Random):
    """Endless epochs; inside each, chunks of 8 batches are sorted by length so a batch pads little."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = batch_size * 8
        for c in range(0, len(order), chunk):
            part = sorted(order[c : c + chunk], key=lambda i: len(examples[i]["ids"]))
            groups = [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
            rng.shuffle(groups)
            yield from groups


def schedule(examples: list[dict], tp: TrainParams, rng: random.Random, processes: int) -> list[list]:
    """For each step, its `processes * grad_accum` micro-batches (lists of example indices), in the
    order processes take them: process k trains on `plan[step][k::processes]`."""
    stream = batches(examples, tp.batch_size, rng)
    return [[next(stream) for _ in range(processes * tp.grad_accum)] for _ in range(tp.steps)]
