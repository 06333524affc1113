"""Choosing prompts from a dataset split: which records, cut where, with which system prompt."""

from __future__ import annotations

import random
from pathlib import Path

from .chat import cut_for_prompt, with_system
from .version import load_split


def system_prompt_for(system_prompts: dict[str, str], character_id: str) -> str:
    try:
        return system_prompts[character_id]
    except KeyError:
        raise KeyError(
            f"params.yaml system_prompts has no entry for character {character_id!r}; "
            f"add one (known: {sorted(system_prompts)})"
        ) from None


def pick_prompts(rows: list[dict], n: int, rng_seed: str, system_prompts: dict[str, str]) -> list[dict]:
    """n records (all if fewer), each cut before a random assistant turn, system prompt in front.
    Deterministic in (rows, n, rng_seed)."""
    rng = random.Random(rng_seed)
    chosen = rng.sample(rows, min(n, len(rows)))
    out = []
    for row in chosen:
        context = cut_for_prompt(row["messages"], rng)
        out.append({
            "prompt_id": f"{row['id'][:16]}:{len(context)}",
            "record_id": row["id"],
            "character_id": row["character_id"],
            "messages": with_system(system_prompt_for(system_prompts, row["character_id"]), context),
        })
    return out


def prompts_from_split(version_dir: Path, split: str, n: int, rng_seed: str, system_prompts: dict[str, str]) -> list[dict]:
    rows = load_split(version_dir, split)
    if not rows:
        raise RuntimeError(f"{version_dir}: the {split} split is empty; add data or change version.eval_fraction")
    return pick_prompts(rows, n, rng_seed, system_prompts)
