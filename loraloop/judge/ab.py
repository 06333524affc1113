"""Human A/B sets: this round's answers against the previous round's on the same eval prompts,
shuffled and blinded, as a CSV a person fills in; and the win rate from the filled-in file.

ab.csv columns: item, context, response_a, response_b, preferred (A, B or tie; blank = not yet).
The key (which side is which round) is kept apart in ab_key.json, so labelers cannot see it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from ..files import read_json, read_jsonl, write_json

COLUMNS = ["item", "context", "response_a", "response_b", "preferred"]


def render_context(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def make(
    this_round: str,
    this_samples: Path,
    prev_round: str,
    prev_samples: Path,
    out_csv: Path,
    key_file: Path,
    n: int,
    seed: int,
) -> int:
    """Write up to n blinded pairs; returns how many."""
    prev = {r["prompt_id"]: r for r in read_jsonl(prev_samples)}
    pairs = [(r, prev[r["prompt_id"]]) for r in read_jsonl(this_samples) if r["prompt_id"] in prev]
    rng = random.Random(f"{seed}:ab:{this_round}")
    pairs = rng.sample(pairs, min(n, len(pairs)))
    key = {}
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, (mine, theirs) in enumerate(pairs, 1):
            flip = rng.random() < 0.5
            a, b = (theirs, mine) if flip else (mine, theirs)
            key[str(i)] = {"A": prev_round if flip else this_round, "B": this_round if flip else prev_round}
            w.writerow([i, render_context(mine["messages"]), a["response"], b["response"], ""])
    write_json(key_file, {"round": this_round, "vs": prev_round, "items": key})
    return len(pairs)


class LabelError(ValueError):
    pass


def score(csv_file: Path, key_file: Path) -> dict:
    """Win rate of the key's round over the other, ties counting half; blank labels are skipped."""
    key = read_json(key_file)
    wins = losses = ties = unlabeled = 0
    with csv_file.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("item", "preferred") if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelError(f"{csv_file}: missing column(s) {missing}; expected {COLUMNS}")
        for row in reader:
            line = reader.line_num
            label = (row["preferred"] or "").strip().lower()
            if not label:
                unlabeled += 1
                continue
            sides = key["items"].get(str(row["item"]).strip())
            if sides is None:
                raise LabelError(f"{csv_file}:{line}: field item: {row['item']!r} is not in {key_file}")
            if label == "tie":
                ties += 1
            elif label in ("a", "b"):
                if sides[label.upper()] == key["round"]:
                    wins += 1
                else:
                    losses += 1
            else:
                raise LabelError(f"{csv_file}:{line}: field preferred: {row['preferred']!r} is not A, B, tie or blank")
    labeled = wins + losses + ties
    return {
        "round": key["round"],
        "vs": key["vs"],
        "labeled": labeled,
        "unlabeled": unlabeled,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": (wins + ties / 2) / labeled if labeled else None,
    }
