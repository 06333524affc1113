"""collect: read the raw sources, normalize each record to the schema, reject the rest with a reason.

Every record read ends up in exactly one of records.jsonl or rejects.jsonl (reason, field,
source, line), so counts.json always satisfies read = kept + rejected. Feedback becomes SFT
records (good and corrected responses) and DPO pairs (bad -> corrected: the corrected record
carries the bad response as `rejected`). Streaming: memory does not grow with the input."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from pathlib import Path

from ..files import dumps, replacing, write_json
from ..params import CollectParams, SourceParams
from . import formats
from .sources import Reject, decode, read_hub, read_source, unwrap_mongo

# Fields whose values name the user; scrub masks them in the text, then drops them.
NAME_FIELDS = ("user_name", "username", "nickname", "display_name", "user_id")


def record_id(character_id: str, messages: list[dict]) -> str:
    """Content address of a conversation: same character and turns give the same id."""
    norm = []
    for m in messages:
        turn = {"role": m["role"], "content": " ".join(m["content"].split())}
        if m.get("tool_calls"):  # (plain turns hash as they always did)
            turn["tool_calls"] = m["tool_calls"]
        norm.append(turn)
    return hashlib.sha256(dumps({"character_id": character_id, "messages": norm}).encode()).hexdigest()


def feedback_messages(obj: dict, max_chars: int) -> tuple[list[dict], str | None]:
    """{"messages": [... user], "response", "feedback": good|bad, "corrected"} -> the SFT
    conversation and, for bad -> corrected, the rejected response of the DPO pair; a bad one
    without a correction is a negative (its reply kept at weight 0 and as the rejected side)."""
    context = formats.messages_of(obj.get("messages"), "messages", max_chars)
    if not context or context[-1]["role"] != "user":
        raise Reject("feedback_context_must_end_with_user", "messages")
    verdict = obj.get("feedback")
    if verdict not in ("good", "bad"):
        raise Reject("bad_feedback_label", "feedback")
    response, corrected = obj.get("response"), obj.get("corrected")
    for name, value in (("response", response), ("corrected", corrected)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise Reject("content_not_a_string" if not isinstance(value, str) else "empty_content", name)
        if isinstance(value, str) and len(value) > max_chars:
            raise Reject("message_too_long", name)
    if verdict == "good":
        if response is None:
            raise Reject("missing_response", "response")
        return context + [{"role": "assistant", "content": corrected or response}], None
    if corrected is None:
        if response is None:
            raise Reject("missing_response", "response")
        # A negative: the reply not to give. Its turn has weight 0 (nothing to learn from it by
        # imitation); sample answers the same prompt and score pairs the best answer against it.
        return context + [{"role": "assistant", "content": response, "weight": 0}], response
    return context + [{"role": "assistant", "content": corrected}], response


# Record fields collect reads itself; any other top-level field is kept under `meta`.
KNOWN = {
    "character_id",
    "opt_in",
    "timestamp",
    "weight",
    "style_tags",
    "safety_flags",
    "dataset_source",
    "_id",
    "source_id",
    "id",
    "label",
    "feedback",
    "response",
    "corrected",
    "messages",
    *NAME_FIELDS,
}


def shaped(obj: dict, src: SourceParams, max_chars: int) -> formats.Shaped:
    """The record's messages from its shape; feedback sources and KTO-style `label` read as
    good/bad feedback (a bad reply is kept as a negative: the reply not to give)."""
    media = formats.media_field(obj)
    if media is not None:
        raise Reject("non_text_content", media, f"a multimodal record ({media}); only text is trained on")
    if src.kind == "feedback":
        messages, rejected = feedback_messages(obj, max_chars)
        return formats.Shaped(
            "feedback", messages, rejected, formats.tools_of(obj.get("tools"), "tools"), used={"tools"}
        )
    out = formats.shape(obj, src.format, max_chars)
    if "label" in obj:
        if not isinstance(obj["label"], bool):
            raise Reject("bad_feedback_label", "label", "label must be true or false")
        if not obj["label"]:
            return formats.as_negative(out)
    return out


# A source's own id of a row, kept as source_id (the first of these it has).
SOURCE_IDS = ("_id", "source_id", "id", "conversation_id", "uuid")


def source_id(obj: dict) -> str | None:
    return next((str(obj[k]) for k in SOURCE_IDS if isinstance(obj.get(k), (str, int)) and str(obj[k]).strip()), None)


def normalize(obj, src: SourceParams, default_character_id: str | None, max_chars: int) -> dict:
    """One raw object to a schema record, or Reject naming the field at fault."""
    if not isinstance(obj, dict):
        raise Reject("not_an_object")
    obj = unwrap_mongo(obj)
    sh = shaped(obj, src, max_chars)
    messages = sh.messages
    roles = {m["role"] for m in messages}
    if "user" not in roles:
        raise Reject("no_user_turn", "messages")
    if "assistant" not in roles:
        raise Reject("no_assistant_turn", "messages")
    character_id = obj.get("character_id") or src.character_id or default_character_id
    if not isinstance(character_id, str) or not character_id:
        raise Reject("missing_character_id", "character_id")
    if src.require_opt_in and obj.get("opt_in") is not True:
        raise Reject("no_opt_in", "opt_in")
    weight = obj.get("weight", 1.0)
    # A number, not a bool; not NaN, infinite, negative or an int too large for a float.
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight < sys.float_info.max:
        raise Reject("bad_weight", "weight")
    names = {str(obj[f]) for f in NAME_FIELDS if isinstance(obj.get(f), (str, int)) and str(obj[f]).strip()}
    names = sorted(names | {m["name"] for m in messages if m["role"] == "user" and m.get("name", "").strip()})
    user_id = obj.get("user_id")
    record = {
        "id": record_id(character_id, messages),
        "character_id": character_id,
        "dataset_source": obj.get("dataset_source") or src.name,
        "kind": src.kind,
        "shape": sh.shape,
        "timestamp": obj.get("timestamp"),
        "opt_in": obj.get("opt_in") is True,
        "messages": messages,
        "style_tags": list(obj.get("style_tags") or []),
        "safety_flags": list(obj.get("safety_flags") or []),
        "weight": float(weight),
        # Provenance without the raw id; deletion requests match on the raw id here in collect.
        "user_ref": hashlib.sha256(str(user_id).encode()).hexdigest()[:16] if user_id is not None else None,
        "source_id": source_id(obj),
        "pii_names": names,
    }
    if sh.tools:
        record["tools"] = sh.tools
    if sh.rejected is not None:
        record["rejected"] = sh.rejected
        if messages[-1].get("weight") == 0:
            record["negative_only"] = True  # no chosen reply yet: see version's negatives split
    if sh.shape in ("preference", "hh"):
        record["pair_only"] = True  # a preference pair trains DPO, not SFT on its chosen reply
    meta = {k: v for k, v in obj.items() if k not in KNOWN and k not in sh.used}
    if meta:
        record["meta"] = meta
    return record


def load_deletions(paths: list[str]) -> set[str]:
    ids: set[str] = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"collect.deletions: {path} does not exist")
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                ids.add(line)
    return ids


def deleted(obj: object, record: dict, deletions: set[str]) -> bool:
    if not deletions:
        return False
    keys = {record["id"], record.get("source_id")}
    if isinstance(obj, dict):
        keys |= {str(obj[k]) for k in ("user_id", "record_id", "id") if obj.get(k) is not None}
    return bool(keys & deletions)


def collect_source(src: SourceParams, params: CollectParams, deletions: set[str], kept_f, rejects_f) -> Counter:
    """Every row of one source to records.jsonl or, with its reason, to rejects.jsonl. Nothing in
    one row can stop the run: an error no rule foresaw is that row's reject too."""
    counts: Counter = Counter()
    source = src.path or f"hub:{src.hub}"

    def reject(where: dict, reason: str, **extra) -> None:
        counts["rejected"] += 1
        counts[f"rejected.{reason}"] += 1
        row = {"reason": reason, "source": source, **where, **{k: v for k, v in extra.items() if v is not None}}
        rejects_f.write(dumps({"field": None, **row}) + "\n")

    if src.path and src.optional and not Path(src.path).exists():
        return counts
    rows = read_hub(src.hub, src.hub_split) if src.hub else read_source(Path(src.path), src.file_format)
    for where, raw in rows:
        counts["read"] += 1
        try:
            obj = decode(raw)
            bad = unencodable_field(obj)
            if bad is not None:
                raise Reject("invalid_unicode", bad, "a lone surrogate (\\ud800-\\udfff escape) cannot be stored")
            record = normalize(obj, src, params.default_character_id, params.max_message_chars)
            line = dumps(record)
            if deleted(unwrap_mongo(obj) if isinstance(obj, dict) else obj, record, deletions):
                reject(where, "deleted_on_request", id=record["id"])
                continue
        except Reject as rej:
            reject(where, rej.reason, field=rej.field, detail=rej.detail)
            continue
        except Exception as exc:  # one record must not stop the run
            # The exception's message may quote the record: only its type is kept.
            reject(where, "unreadable_record", detail=type(exc).__name__)
            continue
        counts["kept"] += 1
        counts[f"shape.{record['shape']}"] += 1
        kept_f.write(line + "\n")
    return counts


def unencodable_field(value, path: str = "") -> str | None:
    """The path of the first string UTF-8 cannot encode (a lone surrogate from a JSON escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = unencodable_field(v, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}" if path else k)
        if found is not None:
            return found
    return None


# Reasons an option fixes, and the options (in params.yaml; for `loraloop collect --source`).
FIXES = {
    "missing_character_id": (
        "`character_id:` on the source in collect.sources, or collect.default_character_id",
        "--character-id NAME",
    ),
    "no_opt_in": ("`require_opt_in: false` on the source (public data you may train on)", "--no-opt-in-required"),
}


def hint(source: str, counts: Counter) -> str | None:
    """When a source kept nothing and most of it was rejected for one reason an option fixes: which."""
    reasons = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("rejected.")}
    if counts["kept"] or not reasons:
        return None
    reason, n = max(reasons.items(), key=lambda kv: kv[1])
    if reason not in FIXES or n * 2 <= counts["rejected"]:
        return None
    in_params, on_cli = FIXES[reason]
    return f"{source}: {n} of {counts['read']} records rejected as {reason}; set {in_params} (or {on_cli})"


def summarize(totals: Counter, per_source: dict) -> dict:
    counts = {"read": totals["read"], "kept": totals["kept"], "rejected": totals["rejected"]}
    counts["reasons"] = {k.split(".", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("rejected.")}
    counts["shapes"] = {k.split(".", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith("shape.")}
    counts["per_source"] = per_source
    counts["hints"] = [h for source, c in per_source.items() if (h := hint(source, Counter(c)))]
    assert counts["read"] == counts["kept"] + counts["rejected"]
    return counts


def run(params: CollectParams, out_dir: Path) -> dict:
    for src in params.sources:
        if src.path and not src.optional and not Path(src.path).exists():
            raise FileNotFoundError(f"collect: source {src.path} does not exist")
    deletions = load_deletions(params.deletions)
    totals: Counter = Counter()
    per_source = {}
    with replacing(out_dir) as tmp:
        tmp.mkdir()
        with (
            (tmp / "records.jsonl").open("w", encoding="utf-8") as kept_f,
            (tmp / "rejects.jsonl").open("w", encoding="utf-8") as rejects_f,
        ):
            for src in params.sources:
                c = collect_source(src, params, deletions, kept_f, rejects_f)
                per_source[src.path or src.hub] = dict(sorted(c.items()))
                totals.update(c)
        counts = summarize(totals, per_source)
        write_json(tmp / "counts.json", counts)
    return counts
