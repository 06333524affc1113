"""collect: read the raw sources, normalize each line to the record schema, reject the rest with a reason.

Every non-blank input line ends up in exactly one of records.jsonl or rejects.jsonl, so
counts.json always satisfies read = kept + rejected.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from .io import dumps, write_json
from .params import CollectParams

ROLES = {"system", "user", "assistant"}


class Reject(Exception):
    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


def record_id(character_id: str, messages: list[dict]) -> str:
    """Content address of a conversation: same character and turns give the same id."""
    norm = [{"role": m["role"], "content": " ".join(m["content"].split())} for m in messages]
    return hashlib.sha256(dumps({"character_id": character_id, "messages": norm}).encode()).hexdigest()


def normalize(obj, dataset_source: str, default_character_id: str | None) -> dict:
    """One raw object to a schema record, or Reject naming the field at fault."""
    if not isinstance(obj, dict):
        raise Reject("not_an_object")
    messages = obj.get("messages")
    if messages is None:
        raise Reject("missing_messages", "messages")
    if not isinstance(messages, list):
        raise Reject("messages_not_a_list", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Reject("message_not_an_object", f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise Reject("unknown_role", f"messages[{i}].role")
        if not isinstance(content, str):
            raise Reject("content_not_a_string", f"messages[{i}].content")
        if not content.strip():
            raise Reject("empty_content", f"messages[{i}].content")
        clean.append({"role": role, "content": content})
    roles = {m["role"] for m in clean}
    if "user" not in roles:
        raise Reject("no_user_turn", "messages")
    if "assistant" not in roles:
        raise Reject("no_assistant_turn", "messages")
    character_id = obj.get("character_id") or default_character_id
    if not isinstance(character_id, str) or not character_id:
        raise Reject("missing_character_id", "character_id")
    if obj.get("opt_in") is not True:
        raise Reject("no_opt_in", "opt_in")
    weight = obj.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
        raise Reject("bad_weight", "weight")
    return {
        "id": record_id(character_id, clean),
        "character_id": character_id,
        "dataset_source": obj.get("dataset_source") or dataset_source,
        "timestamp": obj.get("timestamp"),
        "opt_in": True,
        "messages": clean,
        "style_tags": list(obj.get("style_tags") or []),
        "safety_flags": list(obj.get("safety_flags") or []),
        "weight": float(weight),
    }


def collect_file(path: Path, dataset_source: str, default_character_id: str | None, kept_f, rejects_f) -> Counter:
    counts: Counter = Counter()
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # blank lines are not records
            counts["read"] += 1
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise Reject("invalid_utf8") from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError:
                    raise Reject("invalid_json") from None
                record = normalize(obj, dataset_source, default_character_id)
            except Reject as rej:
                counts["rejected"] += 1
                counts[f"rejected.{rej.reason}"] += 1
                rejects_f.write(
                    dumps({"reason": rej.reason, "field": rej.field, "source": str(path), "line": lineno}) + "\n"
                )
                continue
            counts["kept"] += 1
            kept_f.write(dumps(record) + "\n")
    return counts


def run(params: CollectParams, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    totals: Counter = Counter()
    per_source = {}
    with (out_dir / "records.jsonl").open("w", encoding="utf-8") as kept_f, (out_dir / "rejects.jsonl").open(
        "w", encoding="utf-8"
    ) as rejects_f:
        for src in params.sources:
            path = Path(src.path)
            if not path.is_file():
                raise FileNotFoundError(f"collect: source {path} (from params.yaml collect.sources) does not exist")
            c = collect_file(path, src.dataset_source, src.character_id or params.default_character_id, kept_f, rejects_f)
            per_source[str(path)] = dict(sorted(c.items()))
            totals.update(c)
    counts = {"read": totals["read"], "kept": totals["kept"], "rejected": totals["rejected"]}
    counts["reasons"] = {k.split(".", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("rejected.")}
    counts["per_source"] = per_source
    assert counts["read"] == counts["kept"] + counts["rejected"]
    write_json(out_dir / "counts.json", counts)
    return counts
