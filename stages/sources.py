"""Reading raw sources: JSONL, JSON arrays, MongoDB exports, parquet, `datasets` save_to_disk
directories, and mapping public chat-data shapes (LMSYS-Chat-1M, Magpie, Prosocial-Dialog) to
messages. Readers yield (line, object-or-bytes) so rejects can name where a record came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class Reject(Exception):
    """A record that cannot be kept: `reason` is a stable slug, `field` names the culprit."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


def read_jsonl_raw(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, bytes) of each non-blank line; decoding is the caller's, so bad UTF-8 or
    JSON on one line is that line's reject, not the file's."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield lineno, raw


def read_json_array(path: Path) -> Iterator[tuple[int, object]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: a .json source must be one valid UTF-8 JSON array: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: a .json source must hold a JSON array of records")
    for i, obj in enumerate(data, 1):
        yield i, obj


def read_arrow_table(path: Path) -> Iterator[tuple[int, object]]:
    """parquet files, or a `datasets` save_to_disk directory (Arrow IPC stream shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    if path.is_dir():
        shards = sorted(path.glob("*.arrow"))
        if not shards:
            raise ValueError(f"{path}: no *.arrow shards; expected a datasets.save_to_disk directory")
        for shard in shards:
            with pa.memory_map(str(shard)) as src:
                for batch in pa.ipc.open_stream(src):
                    for obj in batch.to_pylist():
                        row += 1
                        yield row, obj
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def read_hub(name: str, split: str) -> Iterator[tuple[int, object]]:
    """Only when a user names a hub dataset in params.yaml; needs `datasets` and network."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RuntimeError("a hub anchor source needs `pip install datasets` (and network)") from None
    for i, obj in enumerate(load_dataset(name, split=split, streaming=True), 1):
        yield i, obj


def read_source(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
    if fmt == "auto":
        fmt = (
            "datasets"
            if path.is_dir()
            else {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}.get(path.suffix, "jsonl")
        )
    return {
        "jsonl": read_jsonl_raw,
        "json": read_json_array,
        "parquet": read_arrow_table,
        "datasets": read_arrow_table,
    }[fmt](path)


def decode(raw: object) -> object:
    if not isinstance(raw, bytes):
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("invalid_utf8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise Reject("invalid_json") from None


def unwrap_mongo(value):
    """MongoDB extended JSON ({"$oid": ...}, {"$date": ...}, {"$numberLong": ...}) to plain values."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((k, v),) = value.items()
            if k == "$oid":
                return str(v)
            if k == "$date":
                if isinstance(v, dict) and "$numberLong" in v:
                    v = int(v["$numberLong"])
                if isinstance(v, (int, float)):
                    import datetime as dt

                    return dt.datetime.fromtimestamp(v / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")
                return str(v)
            if k in ("$numberLong", "$numberInt"):
                return int(v)
            if k == "$numberDouble":
                return float(v)
        return {k: unwrap_mongo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_mongo(v) for v in value]
    return value


# --- public chat-data shapes -> {"messages": [...]} ----------------------------------------

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def map_lmsys(obj: dict) -> dict:
    """LMSYS-Chat-1M: {"conversation": [{"role", "content"}], "conversation_id", "language", ...}."""
    conv = obj.get("conversation")
    if not isinstance(conv, list):
        raise Reject("missing_messages", "conversation")
    return {"messages": conv, "source_id": obj.get("conversation_id")}


def map_magpie(obj: dict) -> dict:
    """Magpie: {"instruction", "response"} or ShareGPT-style {"conversations": [{"from", "value"}]}."""
    if "conversations" in obj:
        conv = obj["conversations"]
        if not isinstance(conv, list):
            raise Reject("messages_not_a_list", "conversations")
        msgs = []
        for i, m in enumerate(conv):
            if not isinstance(m, dict) or m.get("from") not in _SHAREGPT_ROLES:
                raise Reject("unknown_role", f"conversations[{i}].from")
            msgs.append({"role": _SHAREGPT_ROLES[m["from"]], "content": m.get("value")})
        return {"messages": msgs, "source_id": obj.get("uuid")}
    if "instruction" not in obj or "response" not in obj:
        raise Reject("missing_messages", "instruction")
    return {
        "messages": [
            {"role": "user", "content": obj["instruction"]},
            {"role": "assistant", "content": obj["response"]},
        ],
        "source_id": obj.get("uuid"),
    }


def map_prosocial(obj: dict) -> dict:
    """Prosocial-Dialog rows: {"context": user turn, "response": reply, "dialogue_id", "response_id"}."""
    if "context" not in obj or "response" not in obj:
        raise Reject("missing_messages", "context")
    sid = f"{obj.get('dialogue_id')}:{obj.get('response_id')}" if "dialogue_id" in obj else None
    return {
        "messages": [{"role": "user", "content": obj["context"]}, {"role": "assistant", "content": obj["response"]}],
        "source_id": sid,
    }


def map_auto(obj: dict) -> dict:
    if "messages" in obj:
        return obj
    if "conversation" in obj:
        return {**obj, **map_lmsys(obj)}
    if "conversations" in obj or "instruction" in obj:
        return {**obj, **map_magpie(obj)}
    if "context" in obj and "response" in obj:
        return {**obj, **map_prosocial(obj)}
    raise Reject("missing_messages", "messages")


MAPPINGS = {
    "none": lambda obj: obj,
    "auto": map_auto,
    "lmsys": lambda obj: {**obj, **map_lmsys(obj)},
    "magpie": lambda obj: {**obj, **map_magpie(obj)},
    "prosocial": lambda obj: {**obj, **map_prosocial(obj)},
}
