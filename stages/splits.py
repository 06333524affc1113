"""Reading a dataset version's splits: data/version/splits/<character>/{train,eval,dpo}.jsonl.
The version stage writes them; sample, train and eval read them through here."""

from __future__ import annotations

from pathlib import Path

from .io import read_jsonl

SPLITS = "splits"


def load_split(version_dir: Path, split: str) -> list[dict]:
    """All characters' rows of one split, in a stable order."""
    out = []
    for path in sorted((Path(version_dir) / SPLITS).glob(f"*/{split}.jsonl")):
        out.extend(read_jsonl(path))
    return out
