"""Conversations from a dataset split as the model sees them: the character's system prompt in
front, and for prompts, cut before an assistant turn. Plain messages: no tokenizer here."""

from __future__ import annotations

import random
from pathlib import Path

from ..params import DataError
from .splits import load_split


def with_system(system_prompt: str | None, messages: list[dict]) -> list[dict]:
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rest


def cut_for_prompt(messages: list[dict], rng: random.Random) -> list[dict]:
    """A real conversation cut just before one of its assistant turns, chosen at random, so the
    model continues conversations at every depth, not only the opening."""
    cuts = [
        i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0 and messages[i - 1]["role"] == "user"
    ]
    if not cuts:
        raise ValueError("conversation has no assistant turn that follows a user turn")
    return messages[: rng.choice(cuts)]


def system_prompt_for(system_prompts: dict[str, str], character_id: str) -> str:
    try:
        return system_prompts[character_id]
    except KeyError:
        raise KeyError(
            f"character {character_id!r} has no system prompt in this lineage (params.yaml "
            f"lineages.<name>.system_prompts has {sorted(system_prompts)})"
        ) from None


def in_character(system_prompts: dict[str, str], character_id: str, messages: list[dict]) -> list[dict]:
    """The conversation with the character's system prompt in place of any it had."""
    return with_system(system_prompt_for(system_prompts, character_id), messages)


def pick_prompts(rows: list[dict], n: int, rng_seed: str, system_prompts: dict[str, str]) -> list[dict]:
    """n records (all if fewer), each cut before a random assistant turn, system prompt in front.
    Deterministic in (rows, n, rng_seed)."""
    rng = random.Random(rng_seed)
    chosen = rng.sample(rows, min(n, len(rows)))
    out = []
    for row in chosen:
        context = cut_for_prompt(row["messages"], rng)
        out.append(
            {
                "prompt_id": f"{row['id'][:16]}:{len(context)}",
                "record_id": row["id"],
                "character_id": row["character_id"],
                "messages": in_character(system_prompts, row["character_id"], context),
                **({"tools": row["tools"]} if row.get("tools") else {}),
            }
        )
    return out


def negative_prompts(version_dir: Path, n: int, system_prompts: dict[str, str]) -> list[dict]:
    """The newest n negatives (replies users should not get), each a prompt that carries its bad
    reply as `negative`: score pairs the best on-policy answer against it."""
    rows = load_split(version_dir, "negatives", sorted(system_prompts))[-n:] if n else []
    return [
        {
            "prompt_id": f"neg:{row['id'][:16]}",
            "record_id": row["id"],
            "character_id": row["character_id"],
            "messages": in_character(system_prompts, row["character_id"], row["prompt"]),
            "negative": row["rejected"],
            **({"tools": row["tools"]} if row.get("tools") else {}),
        }
        for row in rows
    ]


def prompts_from_split(
    version_dir: Path, split: str, n: int, rng_seed: str, system_prompts: dict[str, str]
) -> list[dict]:
    rows = load_split(version_dir, split, sorted(system_prompts))
    if not rows:
        raise DataError(
            f"{version_dir}: the {split} split of {sorted(system_prompts)} is empty; add conversations, "
            "or raise version.min_eval (the eval records a small character gets)"
        )
    return pick_prompts(rows, n, rng_seed, system_prompts)


def reference_conversations(system_prompts: dict[str, str], version_dir: Path, split: str, n: int) -> list[dict]:
    """The first n records of a split (in its stable order), system prompt in front: the fixed set
    an eval-split loss is measured on, by train while it trains and by eval after."""
    return [
        {
            "messages": in_character(system_prompts, r["character_id"], r["messages"]),
            "tools": r.get("tools"),
            "weight": 1.0,
            "kind": split,
        }
        for r in load_split(version_dir, split, sorted(system_prompts))[:n]
    ]


def tool_items(rows: list[dict], n: int, rng_seed: str, system_prompts: dict[str, str]) -> list[dict]:
    """Tool-use eval items: every assistant turn of the rows that declare tools, the conversation
    before it in character as the prompt, the turn's calls (OpenAI's shape) or text as the gold and
    the tool results it answers; up to n of them (every one if fewer), chosen with the seed."""
    items = []
    for row in rows:
        if not row.get("tools"):
            continue
        for i, m in enumerate(row["messages"]):
            if m["role"] != "assistant" or i == 0:
                continue
            context = row["messages"][:i]
            results = []
            for prior in reversed(context):
                if prior["role"] != "tool":
                    break
                results.insert(0, prior["content"])
            items.append(
                {
                    "prompt_id": f"{row['id'][:16]}:{i}",
                    "record_id": row["id"],
                    "character_id": row["character_id"],
                    "messages": in_character(system_prompts, row["character_id"], context),
                    "tools": row["tools"],
                    "gold_calls": m.get("tool_calls") or [],
                    "gold_text": m.get("content") or "",
                    "results": results,
                }
            )
    return random.Random(rng_seed).sample(items, min(n, len(items)))
