"""Reading and writing the files stages exchange: JSONL, JSON, hashes. Output bytes are stable,
and outputs appear whole or not at all (`replacing`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator


def dumps(obj) -> str:
    """One canonical JSON line: same object, same bytes."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """One canonical JSON line per row; the file appears whole or not at all."""
    n = 0
    with replacing(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a file this project wrote; a bad line here is a bug upstream, so it raises."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None


def write_json(path: Path, obj) -> None:
    """Indented, sorted JSON; the file appears whole or not at all."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def parse_yaml(text: str):
    """YAML as Python data (safe types only), with libyaml's parser where PyYAML was built with it:
    dvc.lock runs to hundreds of KB in a fleet, and the pure-Python parser takes seconds on it."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: Path) -> tuple[str, dict[str, str]]:
    """Hash of a directory: sha256 over the sorted (relative path, file hash) list."""
    root = Path(root)
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    h = hashlib.sha256(dumps(files).encode()).hexdigest()
    return h, files


def remove(path: Path) -> None:
    """Delete a file or a directory tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextlib.contextmanager
def replacing(*paths: Path):
    """Write outputs (files or directories) through temporary siblings: the block writes to the
    paths it is given, and only when it succeeds do they replace the real ones. A stage that fails
    halfway leaves its previous outputs exactly as they were, and never a half-written one."""
    paths = [Path(p) for p in paths]
    temps = [_sibling(p, "tmp") for p in paths]
    for t in temps:
        remove(t)
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps[0] if len(temps) == 1 else temps
    except BaseException:
        for t in temps:
            remove(t)
        raise
    for path, tmp in zip(paths, temps):
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the stage wrote nothing there")
    for path, tmp in zip(paths, temps):
        if tmp.is_dir():
            old = _sibling(path, "old")
            remove(old)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            remove(old)
        else:
            os.replace(tmp, path)
