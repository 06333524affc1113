"""The labels a lineage's judge learns from, gathered from what the loop already has: users'
feedback (a reply marked good), corrections and preference pairs (the dpo split: chosen vs
rejected), replies users turned down (the negatives split: feedback `bad` and served thumbs down,
which `loraloop monitor` writes), and filled-in A/B sheets (<judge.ab_dir>/<lineage>/*.csv, the
columns `loraloop eval` writes; a tie or a blank is no label).

Every example carries its conversation as `group`: the two sides of a pair share one, and the
judge's splits never cut a group, so no conversation is both trained on and held out."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.splits import load_split
from .ab import COLUMNS


@dataclass(frozen=True)
class Example:
    group: str  # the conversation it came from; a preference pair's two sides share it
    context: tuple  # the messages before the reply (dicts)
    reply: str
    label: int  # 1: what users want, 0: what they turned down
    source: str  # feedback | pair | negative | ab
    character_id: str | None = None
    tools: tuple | None = None
    pair: str | None = None  # the preference pair it is a side of


def from_view(view: Path, characters: list[str]) -> list[Example]:
    """The labelled replies of a lineage's dataset view (train and eval splits both: the judge
    holds out its own conversations)."""
    out = []
    for split in ("train", "eval"):
        for row in load_split(view, split, characters):
            if row.get("feedback") == "good" and row["messages"][-1]["role"] == "assistant":
                out.append(_example(row, row["messages"][:-1], row["messages"][-1]["content"], 1, "feedback"))
    for row in load_split(view, "dpo", characters):
        out.append(_example(row, row["prompt"], row["chosen"], 1, "pair", pair=row["id"]))
        out.append(_example(row, row["prompt"], row["rejected"], 0, "pair", pair=row["id"]))
    for row in load_split(view, "negatives", characters):
        out.append(_example(row, row["prompt"], row["rejected"], 0, "negative"))
    return out


def _example(row: dict, context: list, reply: str, label: int, source: str, pair: str | None = None) -> Example:
    tools = tuple(row["tools"]) if row.get("tools") else None
    return Example(row["id"], tuple(context), reply, label, source, row["character_id"], tools, pair)


def parse_context(text: str) -> list[dict]:
    """The messages of an A/B sheet's context column (`role: content` lines, as ab.render_context
    writes them; a line without a role continues the message above)."""
    messages: list[dict] = []
    for line in text.splitlines():
        role, sep, content = line.partition(": ")
        if sep and role in ("user", "assistant", "tool"):
            messages.append({"role": role, "content": content})
        elif messages:
            messages[-1]["content"] += "\n" + line
        else:
            messages.append({"role": "user", "content": line})
    return messages


def from_ab_sheets(sheets_dir: Path, character: str | None) -> tuple[list[Example], list[dict]]:
    """Preference pairs from the filled-in A/B sheets under sheets_dir, and the rejects: a row
    whose `preferred` is not A, B, tie or blank, or a sheet without the columns, named by file
    and line (a tie or a blank is no label, not a reject)."""
    examples, rejects = [], []
    for path in sorted(Path(sheets_dir).glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS[1:] if c not in (reader.fieldnames or [])]
            if missing:
                rejects.append(
                    {"file": str(path), "line": 1, "reason": f"missing column(s) {missing}; expected {COLUMNS}"}
                )
                continue
            end = reader.line_num  # a quoted field may span lines: a row is named by its first
            for row in reader:
                where, end = {"file": str(path), "line": end + 1}, reader.line_num
                label = (row["preferred"] or "").strip().lower()
                if label in ("", "tie"):
                    continue
                if (
                    label not in ("a", "b")
                    or not (row["response_a"] or "").strip()
                    or not (row["response_b"] or "").strip()
                ):
                    why = (
                        f"field preferred: {row['preferred']!r} is not A, B, tie or blank"
                        if label not in ("a", "b")
                        else "an empty response"
                    )
                    rejects.append({**where, "reason": why})
                    continue
                context = tuple(parse_context(row["context"] or ""))
                group = "ab:" + hashlib.sha256(f"{path.name}:{row['context']}".encode()).hexdigest()[:16]
                pair = f"{group}:{where['line']}"
                won, lost = (
                    (row["response_a"], row["response_b"]) if label == "a" else (row["response_b"], row["response_a"])
                )
                examples.append(Example(group, context, won, 1, "ab", character, None, pair))
                examples.append(Example(group, context, lost, 0, "ab", character, None, pair))
    return examples, rejects
