"""`loraloop forget ID...`: honouring a deletion request end to end. collect.deletions keeps a
user's records out of the next version; this finds the versions already made (git tags and HEAD,
through their dvc.lock) whose stored files still hold that user's records, and with --purge
deletes those files from the local DVC cache and the remote, recording in data/forgotten.json
which versions can no longer be restored.

A user is found by user id (scrubbed records keep its hash as user_ref) or by record id. Files
are matched by the ids rows carry: `id`, `record_id`, and `prompt_id` (whose first 16 characters
are the record id). Adapters trained on those files are listed, not deleted: removing someone from
a trained adapter means training it again without them."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..files import parse_yaml, read_json, write_json

FORGOTTEN = Path("data/forgotten.json")


@dataclass
class Version:
    label: str  # a tag, or HEAD
    rev: str
    files: dict[str, str] = field(default_factory=dict)  # path -> md5 of every cached file it holds
    affected: dict[str, str] = field(default_factory=dict)
    adapters: list[str] = field(default_factory=list)  # trained on affected files
    missing: list[str] = field(default_factory=list)  # not in the local cache: could not be checked


def git(*args: str) -> str | None:
    res = subprocess.run(["git", *args], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def versions() -> list[Version]:
    """Every tag and HEAD, each once per commit (a tag on HEAD is listed as the tag)."""
    tags = [t for t in (git("tag", "--sort=creatordate") or "").split() if t]
    out, seen = [], set()
    for label in [*tags, "HEAD"]:
        rev = (git("rev-parse", f"{label}^{{commit}}") or "").strip()
        if rev and rev not in seen:
            seen.add(rev)
            out.append(Version(label, rev))
    return out


def cache_path(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def stored_files(lock: dict, cache: Path, version: Version) -> None:
    """The version's cached outputs, directories expanded through their .dir listings."""
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            md5 = out.get("md5")
            if not md5:
                continue
            if not md5.endswith(".dir"):
                version.files[out["path"]] = md5
                continue
            listing = cache_path(cache, md5)
            if not listing.is_file():
                version.missing.append(out["path"])
                continue
            for entry in json.loads(listing.read_text()):
                version.files[f"{out['path']}/{entry['relpath']}"] = entry["md5"]


def rows(path: Path):
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield row


def user_ref(user_id: str) -> str:
    """How collect keeps a user id in records: its hash, never the id."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


def find(ids: list[str], cache: Path) -> list[Version]:
    refs, wanted = {user_ref(i) for i in ids}, set(ids)
    found = []
    for v in versions():
        lock_text = git("show", f"{v.rev}:dvc.lock")
        if lock_text is None:
            continue
        stored_files(parse_yaml(lock_text) or {}, cache, v)
        records = set(wanted)
        for path, md5 in v.files.items():  # the user's record ids in this version, via user_ref
            if path.endswith("records.jsonl") and cache_path(cache, md5).is_file():
                records |= {r["id"] for r in rows(cache_path(cache, md5)) if r.get("user_ref") in refs and "id" in r}
        prefixes = {r[:16] for r in records}
        for path, md5 in v.files.items():
            obj = cache_path(cache, md5)
            if not path.endswith(".jsonl"):
                continue
            if not obj.is_file():
                v.missing.append(path)
                continue
            if any(
                r.get("id") in records or r.get("record_id") in records or str(r.get("prompt_id", ""))[:16] in prefixes
                for r in rows(obj)
            ):
                v.affected[path] = md5
        for path, md5 in list(v.files.items()):  # the A/B sheet quotes the eval answers beside it
            if path.endswith("ab.csv") and path.replace("ab.csv", "eval_samples.jsonl") in v.affected:
                v.affected[path] = md5
        # data/rounds/<lineage>/<round>/...
        rounds = {p.split("/")[3] for p in v.affected if p.startswith("data/rounds/") and p.count("/") >= 4}
        touched_data = any(p.startswith(("data/scrubbed/", "data/version/", "data/lineages/")) for p in v.affected)
        v.adapters = sorted(
            {
                p.split("/adapter/")[0]
                for p in v.files
                if "/adapter/" in p and p.startswith("models/rounds/") and (touched_data or p.split("/")[2] in rounds)
            }
        )
        found.append(v)
    return found


def purge(md5s: set[str], cache: Path, remote: str | None) -> tuple[int, int]:
    """Delete the objects from the local cache and the DVC remote; (local, remote) counts."""
    local = 0
    for md5 in sorted(md5s):
        path = cache_path(cache, md5)
        if path.is_file():
            path.unlink()
            local += 1
    from dvc.repo import Repo

    odb = Repo(".").cloud.get_remote_odb(remote, command="forget")
    on_remote = 0
    for md5 in sorted(md5s):
        path = odb.oid_to_path(md5)
        if odb.fs.exists(path):
            odb.fs.rm(path)
            on_remote += 1
    return local, on_remote


def record_forgotten(ids: list[str], md5s: set[str], found: list[Version]) -> None:
    """Which versions can no longer be restored, in data/forgotten.json (ids only as hashes)."""
    log = read_json(FORGOTTEN) if FORGOTTEN.is_file() else []
    log.append(
        {
            "ids_sha256": sorted(hashlib.sha256(i.encode()).hexdigest() for i in ids),
            "objects": sorted(md5s),
            "versions_no_longer_restorable": [v.label for v in found if v.affected],
        }
    )
    write_json(FORGOTTEN, log)
