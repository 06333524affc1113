"""version: split the scrubbed records into train/eval (and DPO pairs) per character, write a
manifest, and a changelog against the previous version.

The split is a pure function of the record id (a content hash), so adding data never moves an
existing record between train and eval. manifest.json and CHANGELOG.md are tracked by git, not
the DVC cache: the previous version is read from git history (and its record ids from the DVC
cache when it is there), so `git log -p data/version/CHANGELOG.md` tells the data's story."""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from ..files import dumps, parse_yaml, read_json, read_jsonl, replacing, sha256_file, write_json
from ..params import VersionParams
from .manifest import records_by_source
from .splits import SPLITS

SCHEMA_VERSION = 2


def bucket_of(record_id: str) -> float:
    """A record's fixed place in [0, 1): a hash of its id."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_of(record_id: str, eval_fraction: float) -> str:
    return "eval" if bucket_of(record_id) < eval_fraction else "train"


def trains(record: dict) -> bool:
    """A record of the train/eval splits (not a preference pair, not a negative alone)."""
    return not record.get("negative_only") and not record.get("pair_only")


def eval_fractions(scrubbed_dir: Path, params: VersionParams) -> dict[str, float]:
    """Each character's eval threshold: version.eval_fraction, raised for a character whose share
    would hold fewer than version.min_eval records (at most half of its records) to the bucket of
    its min_eval-th lowest record. A character with enough data keeps the plain split, so new
    data never moves its records between train and eval."""
    out = {}
    for src in sorted(scrubbed_dir.glob("*/records.jsonl")):
        lowest, n, under = [], 0, 0  # the k lowest buckets (a max-heap by negation), counts
        for record in read_jsonl(src):
            if not trains(record):
                continue
            b, n = bucket_of(record["id"]), n + 1
            under += b < params.eval_fraction
            heapq.heappush(lowest, -b)
            if len(lowest) > params.min_eval:
                heapq.heappop(lowest)
        k = min(params.min_eval, n // 2)
        fraction = params.eval_fraction
        if under < k:
            fraction = math.nextafter(sorted(-x for x in lowest)[k - 1], 1.0)
        out[src.parent.name] = fraction
    return out


def chatml_row(record: dict) -> dict:
    row = {k: record[k] for k in ("id", "character_id", "dataset_source", "weight", "messages")}
    if record.get("tools"):
        row["tools"] = record["tools"]
    if record.get("kind") == "feedback" and "rejected" not in record:
        row["feedback"] = "good"  # a user's thumbs up: the judge's label (a correction is a dpo pair)
    return row


def dpo_row(record: dict) -> dict:
    row = {
        "id": record["id"],
        "character_id": record["character_id"],
        "prompt": record["messages"][:-1],
        "chosen": record["messages"][-1]["content"],
        "rejected": record["rejected"],
    }
    if record.get("tools"):
        row["tools"] = record["tools"]
    return row


def negative_row(record: dict) -> dict:
    """A reply users should not get, with no better one yet: sample answers its prompt on-policy
    and score pairs the best answer against it (the DPO rejected side)."""
    row = {
        "id": record["id"],
        "character_id": record["character_id"],
        "prompt": record["messages"][:-1],
        "rejected": record["rejected"],
    }
    if record.get("tools"):
        row["tools"] = record["tools"]
    return row


# --- the previous version, from git and the DVC cache -----------------------------------------


def _git_show(rel: str) -> str | None:
    res = subprocess.run(["git", "show", f"HEAD:{rel}"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def _repo_rel(path: Path) -> str | None:
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    try:
        return path.resolve().relative_to(Path(res.stdout.strip()).resolve()).as_posix()
    except ValueError:
        return None


def previous_ids(splits_rel: str) -> dict[str, set[str]] | None:
    """Record ids of each split file of the committed version, read from the local DVC cache
    through the committed dvc.lock; None when they are not available."""
    lock = _git_show("dvc.lock")
    if lock is None:
        return None
    outs = (parse_yaml(lock) or {}).get("stages", {}).get("version", {}).get("outs", [])
    md5 = next((o.get("md5") for o in outs if o.get("path") == splits_rel), None)
    cache = Path(".dvc/cache/files/md5")
    if not md5 or not (cache / md5[:2] / md5[2:]).is_file():
        return None
    out = {}
    for entry in json.loads((cache / md5[:2] / md5[2:]).read_text()):
        obj = cache / entry["md5"][:2] / entry["md5"][2:]
        if not obj.is_file():
            return None
        out[entry["relpath"]] = {r["id"] for r in read_jsonl(obj)}
    return out


def reject_reasons(reject_files: list[Path]) -> dict[str, str]:
    out = {}
    for path in reject_files:
        if path.is_file():
            for r in read_jsonl(path):
                if r.get("id"):
                    out[r["id"]] = r["reason"]
    return out


def changelog_section(
    manifest: dict,
    prev: dict | None,
    now_ids: dict[str, set[str]],
    prev_ids: dict[str, set[str]] | None,
    reasons: dict[str, str],
) -> str:
    label = hashlib.sha256(dumps(manifest["files"]).encode()).hexdigest()[:12]
    lines = [f"## data {label}", ""]
    lines += ["| file | records | change |", "|---|---|---|"]
    prev_files = (prev or {}).get("records", {})
    for rel, n in sorted(manifest["records"].items()):
        before = prev_files.get(rel)
        lines.append(f"| {rel} | {n} | {'new' if before is None else f'{n - before:+d}'} |")
    for rel in sorted(set(prev_files) - set(manifest["records"])):
        lines.append(f"| {rel} | 0 | removed ({prev_files[rel]} records) |")
    lines.append("")
    if prev is None:
        lines.append("First version.")
    elif prev_ids is None:
        lines.append(
            "Previous record ids are not in the local DVC cache (`dvc pull` the previous version "
            "for added/removed lists); counts above are from the previous manifest."
        )
    else:
        added = sum(len(ids - prev_ids.get(rel, set())) for rel, ids in now_ids.items())
        gone = set().union(*prev_ids.values()) - set().union(*now_ids.values()) if prev_ids else set()
        why = Counter(reasons.get(i, "no_longer_in_sources") for i in gone)
        lines.append(
            f"Added {added} records; removed {len(gone)}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(why.items()))})" if gone else "")
            + "."
        )
    by_source = records_by_source(manifest["counts"])
    lines.append("Records by source: " + ", ".join(f"{k} {v}" for k, v in by_source.items()) + ".")
    negatives = sum(char.get("negatives", {}).get("total", 0) for char in manifest["counts"].values())
    if negatives:
        lines.append(f"Negatives (replies users should not get; trained against): {negatives}.")
    deleted = manifest["upstream"].get("collect", {}).get("reasons", {}).get("deleted_on_request", 0)
    lines.append(f"Deleted on request in this version: {deleted}.")
    return "\n".join(lines) + "\n"


def write_splits(scrubbed_dir: Path, splits: Path, fractions: dict[str, float]) -> tuple[dict, dict, dict]:
    """Every scrubbed record to its character's train or eval split (the dpo split for a pair, the
    negatives split for a bad reply without a correction),
    streaming, in scrub's (deterministic) order. Returns records per file, counts per
    character/split/source, and the record ids per file."""
    handles: dict[str, object] = {}
    counts: dict = defaultdict(lambda: defaultdict(Counter))
    records: Counter = Counter()
    now_ids: dict[str, set[str]] = defaultdict(set)
    splits.mkdir(parents=True, exist_ok=True)
    try:
        for src in sorted(scrubbed_dir.glob("*/records.jsonl")):
            for record in read_jsonl(src):
                char = record["character_id"]
                split = split_of(record["id"], fractions[char])
                if record.get("negative_only"):
                    rows = [("negatives", negative_row(record))]
                else:
                    rows = [(split, chatml_row(record))] if trains(record) else []
                    rows += [("dpo", dpo_row(record))] if "rejected" in record else []
                for name, row in rows:
                    rel = f"{char}/{name}.jsonl"
                    if rel not in handles:
                        (splits / char).mkdir(parents=True, exist_ok=True)
                        handles[rel] = (splits / rel).open("w", encoding="utf-8")
                    handles[rel].write(dumps(row) + "\n")
                    records[rel] += 1
                    now_ids[rel].add(row["id"])
                    counts[char][name][record["dataset_source"]] += 1
    finally:
        for f in handles.values():
            f.close()
    return dict(sorted(records.items())), counts, now_ids


def run(
    params: VersionParams,
    scrubbed_dir: Path,
    out_dir: Path,
    data_metrics: Path | None = None,
    reject_files: list[Path] | None = None,
) -> dict:
    """splits/, manifest.json and CHANGELOG.md under out_dir, replacing the previous ones only when
    all three are written; the previous version is read from git at out_dir's place in the repo."""
    with replacing(out_dir / SPLITS, out_dir / "manifest.json", out_dir / "CHANGELOG.md") as (splits, man, log):
        records, counts, now_ids = write_splits(scrubbed_dir, splits, eval_fractions(scrubbed_dir, params))
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "params_hash": hashlib.sha256(dumps(params.model_dump()).encode()).hexdigest(),
            "counts": {
                char: {
                    split: {"total": sum(c.values()), "by_source": dict(sorted(c.items()))}
                    for split, c in sorted(per.items())
                }
                for char, per in sorted(counts.items())
            },
            "records": records,
            "files": {rel: sha256_file(splits / rel) for rel in records},
            "upstream": read_json(data_metrics) if data_metrics and data_metrics.is_file() else {},
        }
        write_json(man, manifest)
        log.write_text(changelog(manifest, out_dir, now_ids, reject_files or []), encoding="utf-8")
    return manifest


def changelog(manifest: dict, out_dir: Path, now_ids: dict, reject_files: list[Path]) -> str:
    """The committed CHANGELOG.md with a section for this version on top (none if nothing changed)."""
    rel_dir = _repo_rel(out_dir)
    prev_text = _git_show(f"{rel_dir}/manifest.json") if rel_dir else None
    prev = json.loads(prev_text) if prev_text else None
    prev_log = (_git_show(f"{rel_dir}/CHANGELOG.md") if rel_dir else None) or "# Dataset changelog\n"
    if prev is not None and prev.get("schema_version") != SCHEMA_VERSION:
        prev, prev_log = None, "# Dataset changelog\n"  # another layout: start the story afresh
    if prev is not None and prev.get("files") == manifest["files"]:
        return prev_log  # nothing changed: no new section
    pids = previous_ids(f"{rel_dir}/{SPLITS}") if prev is not None else None
    section = changelog_section(manifest, prev, now_ids, pids, reject_reasons(reject_files))
    head, _, rest = prev_log.partition("\n")
    return f"{head}\n\n{section}{rest.lstrip(chr(10)) and chr(10) + rest.lstrip(chr(10))}"
