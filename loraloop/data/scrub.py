"""scrub: mask personal data, apply the quality rules, drop exact and near duplicates, and
partition the kept records by character.

Outputs (out_dir): <character>/records.jsonl, <character>/review_sample.jsonl (a few random
records for a human to read), rejects.jsonl (id, rule, character). metrics/data.json counts every
rule per character, and read = kept + rejected holds. A conversation that appears under two
characters fails the stage: characters must not share training data."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from ..files import dumps, read_json, read_jsonl, replacing, write_json, write_jsonl
from ..params import ScrubParams
from .dedup import NearDupIndex, content_key, near_text, structure_key
from .pii import PHONE_REGIONS, mask, names_pattern
from .quality import reject_reason


class CharacterConflict(RuntimeError):
    pass


def extra_names(params: ScrubParams) -> list[str]:
    names = list(params.names)
    if params.names_file:
        path = Path(params.names_file)
        if not path.is_file():
            raise FileNotFoundError(f"scrub.names_file: {path} does not exist")
        names += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return names


def scrub_record(record: dict, extra: list[str], regions: tuple = PHONE_REGIONS) -> tuple[dict, Counter]:
    """The record with personal data masked wherever text is: every turn and its speaker `name`,
    tool-call arguments, a DPO pair's rejected reply, and `meta`. The raw user names are used here
    and dropped."""
    masker = Masker(names_pattern(record.get("pii_names", []) + extra), regions)
    out = {k: v for k, v in record.items() if k != "pii_names"}
    out["messages"] = [masker.message(m) for m in record["messages"]]
    if "rejected" in record:
        out["rejected"] = masker.text(record["rejected"])
    if "meta" in record:
        out["meta"] = masker.value(record["meta"])
    return out, masker.found


class Masker:
    """Masks text with placeholders consistent across one record (<EMAIL_1> twice for one address)."""

    def __init__(self, names, regions: tuple = PHONE_REGIONS):
        self.names, self.regions, self.seen, self.found = names, regions, {}, Counter()

    def text(self, text: str) -> str:
        masked, kinds = mask(text, self.seen, self.names, self.regions)
        self.found.update(kinds)
        return masked

    def value(self, value):
        """Every string inside lists and dicts (keys stay)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def arguments(self, args: str) -> str:
        """Tool-call arguments: the strings inside the JSON; rewritten only if something was masked."""
        try:
            parsed = json.loads(args)
        except ValueError:
            return self.text(args)
        masked = self.value(parsed)
        return args if masked == parsed else json.dumps(masked, ensure_ascii=False, sort_keys=True)

    def message(self, m: dict) -> dict:
        out = {**m, "content": self.text(m["content"])}
        if "name" in m:
            out["name"] = self.text(m["name"])
        if m.get("tool_calls"):
            out["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": self.arguments(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        return out


def dedup_view(record: dict) -> list[dict]:
    """What makes a record the same as another: its turns, and for a preference pair also the
    rejected reply (two pairs that share prompt and chosen reply still teach different things)."""
    if record.get("pair_only"):
        return record["messages"] + [{"role": "rejected", "content": record["rejected"]}]
    return record["messages"]


def negative_keys(in_file: Path) -> set[int]:
    """Content keys of the negatives (replies users turned down) among the collected records."""
    keys = set()
    with Path(in_file).open(encoding="utf-8") as f:
        for line in f:
            if '"negative_only":true' in line:
                row = json.loads(line)
                keys.add(content_key(row["messages"], row.get("tools")))
    return keys


class Reservoir:
    """k records drawn uniformly from a stream of unknown length, deterministically."""

    def __init__(self, k: int, seed: str):
        self.k, self.n, self.items, self.rng = k, 0, [], random.Random(seed)

    def offer(self, item) -> None:
        self.n += 1
        if len(self.items) < self.k:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.n)
            if j < self.k:
                self.items[j] = item


def run(
    params: ScrubParams, in_file: Path, out_dir: Path, metrics_file: Path, collect_counts: Path | None = None
) -> dict:
    """Scrub in_file into out_dir (per character) and metrics_file; both replace what was there
    only when the whole run succeeds."""
    with replacing(out_dir, metrics_file) as (tmp_dir, tmp_metrics):
        return scrub_into(params, in_file, tmp_dir, tmp_metrics, collect_counts)


class Duplicates:
    """Which kept conversations were seen before: exactly (under this character or another, which
    is a conflict) or nearly (MinHash, within the character, among conversations with the same
    tool calls, results and tools)."""

    def __init__(self, near_dup_threshold: float | None):
        self.threshold = near_dup_threshold
        self.owner: dict[int, str] = {}  # conversation content -> character that has it
        self.conflicts: list[tuple[str, str, str]] = []  # (record id, first character, this one)
        self.near: dict[str, NearDupIndex] = {}

    def reason(self, record: dict, char: str) -> str | None:
        """Why the record repeats one kept before, or None (and it is kept in mind from now on)."""
        view, tools = dedup_view(record), record.get("tools")
        key = content_key(view, tools)
        first = self.owner.get(key)
        if first is None:
            self.owner[key] = char
        elif first != char:
            self.conflicts.append((record["id"], first, char))
            return "in_two_characters"
        else:
            return "exact_duplicate"
        if self.threshold:
            if char not in self.near:
                self.near[char] = NearDupIndex(self.threshold)
            if self.near[char].add(near_text(view), structure_key(view, tools)):
                return "near_duplicate"
        return None

    def check(self) -> None:
        """Characters must not share data: a conversation under two of them stops the stage."""
        if self.conflicts:
            shown = "; ".join(
                f"record {record_id[:12]} is in {a!r} and {b!r}" for record_id, a, b in self.conflicts[:5]
            )
            raise CharacterConflict(
                f"scrub: {len(self.conflicts)} conversation(s) appear under two characters ({shown}). "
                f"Fix character_id in the sources; characters must not share data."
            )


def scrub_stats(counts: Counter, per_char: dict[str, Counter], pii: Counter) -> dict:
    """metrics/data.json's scrub section: records read, kept and rejected (by rule, per character)."""
    reasons = Counter()
    for c in per_char.values():
        reasons.update({k.split(".", 1)[1]: v for k, v in c.items() if k.startswith("rejected.")})
    stats = {
        "read": counts["read"],
        "kept": counts["kept"],
        "rejected": counts["rejected"],
        "reasons": dict(sorted(reasons.items())),
        "pii_masked": dict(sorted(pii.items())),
        "per_character": {
            char: {
                "kept": c["kept"],
                "rejected": sum(v for k, v in c.items() if k.startswith("rejected.")),
                "reasons": {k.split(".", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("rejected.")},
            }
            for char, c in sorted(per_char.items())
        },
    }
    assert stats["read"] == stats["kept"] + stats["rejected"]
    return stats


class Partition:
    """The kept records, one records.jsonl per character, and a review sample of each."""

    def __init__(self, out_dir: Path, review_sample: int):
        self.out_dir, self.k = out_dir, review_sample
        self.files: dict = {}
        self.review: dict[str, Reservoir] = {}

    def add(self, char: str, record: dict) -> None:
        if char not in self.files:
            (self.out_dir / char).mkdir(parents=True, exist_ok=True)
            self.files[char] = (self.out_dir / char / "records.jsonl").open("w", encoding="utf-8")
        self.files[char].write(dumps(record) + "\n")
        self.review.setdefault(char, Reservoir(self.k, f"review:{char}")).offer(record)

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def write_reviews(self) -> None:
        for char, res in self.review.items():
            write_jsonl(self.out_dir / char / "review_sample.jsonl", res.items)


def scrub_into(
    params: ScrubParams, in_file: Path, out_dir: Path, metrics_file: Path, collect_counts: Path | None
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = extra_names(params)
    counts: Counter = Counter()
    per_char: dict[str, Counter] = defaultdict(Counter)
    pii: Counter = Counter()
    dups, kept = Duplicates(params.near_dup_threshold), Partition(out_dir, params.review_sample)
    try:
        with (out_dir / "rejects.jsonl").open("w", encoding="utf-8") as rej_f:
            turned_down = negative_keys(in_file)
            for record in read_jsonl(in_file):
                counts["read"] += 1
                char = record["character_id"]
                raw_key = None if record.get("negative_only") else content_key(record["messages"], record.get("tools"))
                record, found = scrub_record(record, extra, tuple(params.phone_regions))
                pii.update(found)
                reason = reject_reason(record["messages"], params)
                if reason is None and raw_key in turned_down:
                    reason = "turned_down"  # a logged exchange whose reply users marked bad: not an example
                reason = reason or dups.reason(record, char)
                if reason:
                    counts["rejected"] += 1
                    per_char[char][f"rejected.{reason}"] += 1
                    reject = {"reason": reason, "id": record["id"], "character_id": char, "source": str(in_file)}
                    rej_f.write(dumps(reject) + "\n")
                    continue
                counts["kept"] += 1
                per_char[char]["kept"] += 1
                kept.add(char, record)
    finally:
        kept.close()
    dups.check()
    kept.write_reviews()
    stats = scrub_stats(counts, per_char, pii)
    metrics = {"scrub": stats}
    if collect_counts is not None and collect_counts.is_file():
        c = read_json(collect_counts)
        metrics["collect"] = {k: c[k] for k in ("read", "kept", "rejected", "reasons")}
    write_json(metrics_file, metrics)
    return stats
