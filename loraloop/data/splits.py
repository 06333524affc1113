"""A dataset version's splits: <dir>/splits/<character>/{train,eval,dpo,negatives}.jsonl. The
version stage writes data/version/splits; the view stage copies a lineage's characters' files to
data/lineages/<lineage>/splits (write_view), which sample, train and eval read through here."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..files import read_jsonl, replacing
from ..params import DataError

SPLITS = "splits"


class ForeignRecord(DataError):
    """A record of another character where only a lineage's own characters may be."""


def load_split(version_dir: Path, split: str, characters: list[str] | None = None) -> list[dict]:
    """All characters' rows of one split, in a stable order. With `characters`: only theirs, and
    a row of any other character (a leak between lineages) stops the stage, naming it."""
    out = []
    for path in sorted((Path(version_dir) / SPLITS).glob(f"*/{split}.jsonl")):
        if characters is not None and path.parent.name not in characters:
            raise ForeignRecord(
                f"{path}: a split of character {path.parent.name!r} in a lineage of {characters}; "
                "a lineage reads only its own characters' data"
            )
        for lineno, row in enumerate(read_jsonl(path), 1):
            owner = row.get("character_id")
            if owner != path.parent.name or (characters is not None and owner not in characters):
                raise ForeignRecord(
                    f"{path}:{lineno}: record {row.get('id')!r} belongs to character {owner!r}, not to "
                    f"{path.parent.name!r}; characters' data never mixes (rebuild with `dvc repro version`)"
                )
            out.append(row)
    return out


class EmptySplit(DataError):
    """A lineage whose view has no train or no eval records: its rounds could not be trained or judged."""


def write_view(lineage: str, characters: list[str], version_dir: Path, out_dir: Path) -> dict:
    """The characters' split files copied out of the dataset version into out_dir; the rows of each
    split, every record's owner checked. A view without train or eval records is refused here,
    before any of the lineage's rounds sample or train."""
    counts = {}
    with replacing(out_dir) as tmp:
        for character in characters:
            src = Path(version_dir) / SPLITS / character
            if not src.is_dir():
                raise FileNotFoundError(
                    f"{src}: the dataset version has no data for character {character!r} "
                    f"(characters with data: {sorted(p.name for p in (Path(version_dir) / SPLITS).iterdir())})"
                )
            shutil.copytree(src, tmp / SPLITS / character)
        for split in ("train", "eval", "dpo", "negatives"):
            counts[split] = len(load_split(tmp, split, characters))  # checks every record's owner
        for split in ("train", "eval"):
            if not counts[split]:
                raise EmptySplit(empty_split_message(lineage, split, counts))
    return {"characters": characters, **counts}


def empty_split_message(lineage: str, split: str, counts: dict) -> str:
    have = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no records"
    return (
        f"lineage {lineage!r}: no {split} records in its characters' data ({have}); add conversations, "
        "or raise version.min_eval (the eval records a small character gets, at most half of its records)"
    )
