"""version: split the scrubbed records into train/eval per character and write a manifest.

The split is a pure function of the record id (a content hash), so adding data never moves an
existing record between train and eval."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from .io import dumps, read_jsonl, sha256_file, write_json, write_jsonl
from .params import VersionParams

SCHEMA_VERSION = 1


def split_of(record_id: str, eval_fraction: float) -> str:
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest()[:12], 16) / float(1 << 48)
    return "eval" if bucket < eval_fraction else "train"


def chatml_row(record: dict) -> dict:
    return {
        "id": record["id"],
        "character_id": record["character_id"],
        "dataset_source": record["dataset_source"],
        "weight": record["weight"],
        "messages": record["messages"],
    }


def run(params: VersionParams, in_file: Path, out_dir: Path) -> dict:
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in read_jsonl(in_file):
        rows[(record["character_id"], split_of(record["id"], params.eval_fraction))].append(chatml_row(record))

    out_dir.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for (character, split), items in sorted(rows.items()):
        items.sort(key=lambda r: r["id"])  # order independent of input order
        path = out_dir / character / f"{split}.jsonl"
        write_jsonl(path, items)
        rel = path.relative_to(out_dir).as_posix()
        files[rel] = sha256_file(path)
        counts.setdefault(character, {})[split] = len(items)
        by_source = counts[character].setdefault(f"{split}_by_source", {})
        for r in items:
            by_source[r["dataset_source"]] = by_source.get(r["dataset_source"], 0) + 1
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "params_hash": hashlib.sha256(dumps(params.model_dump()).encode()).hexdigest(),
        "counts": counts,
        "files": files,
    }
    write_json(out_dir / "manifest.json", manifest)
    lines = ["# Dataset changelog", "", "| character | train | eval |", "|---|---|---|"]
    for character, c in sorted(counts.items()):
        lines.append(f"| {character} | {c.get('train', 0)} | {c.get('eval', 0)} |")
    (out_dir / "CHANGELOG.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def load_split(version_dir: Path, split: str) -> list[dict]:
    """All characters' rows of one split, in a stable order."""
    out = []
    for path in sorted(Path(version_dir).glob(f"*/{split}.jsonl")):
        out.extend(read_jsonl(path))
    return out
