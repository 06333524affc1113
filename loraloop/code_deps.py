"""The code each kind of DVC stage runs, fingerprinted: code/<kind>.json lists the project files in
the import closure of stages/<kind>.py and of the `loraloop` entry point, each with its sha256.

Every stage of a kind depends on its kind's file instead of on each of its ~25 source files. DVC
pays per dependency on every `dvc status` and `dvc repro` (a hash lookup, a read-write lock entry
and, in dvc.lock, four lines per stage per file), so with hundreds of stages the per-file deps
were most of dvc.lock and a third of a no-op repro. The `code` stage (stages/code.py) depends on
loraloop/ and stages/ whole and rewrites these files; a file whose closure did not change comes out
byte-identical, so only the stages whose code changed rerun, as before. `git diff code/` names
the source files that moved.

The closure is read from the source (ast), not by importing it: an import inside a function
counts (it runs when the stage runs), relative imports of every level are resolved, and the
package __init__ files on the way are included. tests/test_deps.py checks it against what an
imported stage module really loads."""

from __future__ import annotations

import ast
from pathlib import Path

from .files import sha256_file, write_json

PACKAGES = ("stages", "loraloop")  # the DVC stages, and the library they run
ENTRY = "loraloop.cli"  # every stage runs through it


def package_of(root: Path, path: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as parts."""
    return list(path.relative_to(root).parent.parts)


def imported_modules(root: Path, path: Path, source: str | None = None, top_only: bool = False) -> set[str]:
    """Every project module a file imports, at the top or inside a function (`top_only`: the
    module-level ones alone), as dotted names, relative imports resolved against its package."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in tree.body if top_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom):
            base = absolute(root, path, node)
            if base.split(".")[0] not in PACKAGES:
                continue
            found.add(base)
            # `from . import ab`: ab is a module when a file says so.
            found |= {f"{base}.{a.name}" for a in node.names if module_file(root, f"{base}.{a.name}") is not None}
    return found


def absolute(root: Path, path: Path, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    parts = package_of(root, path)
    if node.level - 1 > len(parts) - 1:
        raise ValueError(f"{path}: `from {'.' * node.level}{node.module or ''}` leaves the project")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def module_file(root: Path, name: str) -> Path | None:
    path = Path(root).joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def closure(root: Path, module: str, parsed: dict | None = None) -> set[str]:
    """Project files (relative paths) run when `module` is imported: itself, what it imports,
    transitively, and the package __init__ files on the way. `parsed`: each file's imports, kept
    across calls (every kind's closure shares most files)."""
    parsed = {} if parsed is None else parsed
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
            f = module_file(root, ".".join(parts[:i]))
            if f is None:
                raise ValueError(f"{name}: no such project module")
            rel = f.relative_to(root).as_posix()
            if rel not in seen:
                seen.add(rel)
                if rel not in parsed:
                    parsed[rel] = imported_modules(root, f)
                todo.extend(parsed[rel])
    return seen


def kinds(root: Path) -> list[str]:
    """The kinds of stage that depend on their fingerprint: one module each under stages/ (the
    code stage itself depends on the source trees whole)."""
    return sorted(p.stem for p in (Path(root) / "stages").glob("*.py") if p.stem not in ("__init__", "code"))


def stage_code(root: Path, kind: str, parsed: dict | None = None) -> set[str]:
    """What `loraloop <kind>` runs: the entry point's closure and the stage module's."""
    return closure(root, ENTRY, parsed) | closure(root, f"stages.{kind}", parsed)


def fingerprint(root: Path, kind: str, parsed: dict | None = None) -> dict:
    """What code/<kind>.json holds: the kind, and each file it runs with its sha256."""
    return {"stage": kind, "files": {f: sha256_file(Path(root) / f) for f in sorted(stage_code(root, kind, parsed))}}


def fingerprints(root: Path) -> dict[str, dict]:
    """Every kind's fingerprint, each file parsed once."""
    parsed: dict = {}
    return {kind: fingerprint(root, kind, parsed) for kind in kinds(root)}


def run(root: Path, out_dir: Path) -> dict[str, int]:
    """code/<kind>.json for every kind of stage; returns how many files each runs."""
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for kind, fp in fingerprints(root).items():
        write_json(out_dir / f"{kind}.json", fp)
        counts[kind] = len(fp["files"])
    for stale in set(p.stem for p in out_dir.glob("*.json")) - set(counts):
        (out_dir / f"{stale}.json").unlink()  # a kind of stage that no longer exists
    return counts
