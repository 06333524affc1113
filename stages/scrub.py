"""scrub: mask personal data, drop conversations with empty or too-short turns, drop exact duplicates.

Dropped records go to rejects.jsonl with the rule that dropped them; metrics/data.json counts
every rule, and read = kept + rejected holds."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from .io import dumps, read_jsonl, write_json
from .params import ScrubParams
from .pii import mask


def scrub_record(record: dict) -> tuple[dict, Counter]:
    seen: dict = {}
    found: Counter = Counter()
    messages = []
    for m in record["messages"]:
        text, kinds = mask(m["content"], seen)
        found.update(kinds)
        messages.append({"role": m["role"], "content": text})
    return {**record, "messages": messages}, found


def too_short(record: dict, params: ScrubParams) -> bool:
    limits = {"user": params.min_user_chars, "assistant": params.min_assistant_chars}
    return any(len(m["content"].strip()) < limits.get(m["role"], 0) for m in record["messages"])


def content_hash(record: dict) -> str:
    """Exact-duplicate key: character and whitespace/case-normalized turns, after masking."""
    norm = [(m["role"], " ".join(m["content"].lower().split())) for m in record["messages"]]
    return hashlib.sha256(dumps([record["character_id"], norm]).encode()).hexdigest()


def run(params: ScrubParams, in_file: Path, out_dir: Path, metrics_file: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    pii: Counter = Counter()
    per_character: Counter = Counter()
    seen_hashes: set[str] = set()
    with (out_dir / "records.jsonl").open("w", encoding="utf-8") as kept_f, (out_dir / "rejects.jsonl").open(
        "w", encoding="utf-8"
    ) as rej_f:
        for record in read_jsonl(in_file):
            counts["read"] += 1
            record, found = scrub_record(record)
            pii.update(found)
            reason = None
            if too_short(record, params):
                reason = "too_short_turn"
            else:
                h = content_hash(record)
                if h in seen_hashes:
                    reason = "exact_duplicate"
                seen_hashes.add(h)
            if reason:
                counts["rejected"] += 1
                counts[f"rejected.{reason}"] += 1
                rej_f.write(dumps({"reason": reason, "id": record["id"], "source": str(in_file)}) + "\n")
                continue
            counts["kept"] += 1
            per_character[record["character_id"]] += 1
            kept_f.write(dumps(record) + "\n")
    metrics = {
        "scrub": {
            "read": counts["read"],
            "kept": counts["kept"],
            "rejected": counts["rejected"],
            "reasons": {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected.")},
            "pii_masked": dict(sorted(pii.items())),
            "per_character": dict(sorted(per_character.items())),
        }
    }
    assert counts["read"] == counts["kept"] + counts["rejected"]
    write_json(metrics_file, metrics)
    return metrics["scrub"]
