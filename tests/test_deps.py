"""dvc.yaml's code deps are the code each stage runs: for every `loraloop <sub>` stage, the
project files in the import closure of the module that subcommand runs (and of the `loraloop`
entry point itself) are exactly the stage's `stages/` deps. A missing one means `dvc repro` says
"up to date" after an edit that changes the stage's output; an extra one reruns it for nothing."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "stages"


def imported_modules(path: Path) -> set[str]:
    """Every project module a file imports, at the top or inside a function (a lazy import runs
    when the stage runs, so it counts), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = PACKAGE if node.level else (node.module or "")
            if node.level and node.module:
                base = f"{PACKAGE}.{node.module}"
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            # `from . import ab`: ab is a module when a file says so.
            found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None}
    return found


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def closure(module: str) -> set[str]:
    """Project files (relative paths) run when `module` is imported: itself, what it imports,
    transitively, and the package __init__ files on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
            f = module_file(".".join(parts[:i]))
            if f is None:
                raise AssertionError(f"{name}: no such project module")
            rel = f.relative_to(ROOT).as_posix()
            if rel not in seen:
                seen.add(rel)
                todo.extend(imported_modules(f))
    return seen


def stage_commands() -> dict[str, str]:
    """Stage name (foreach stages once, by their template) -> the loraloop subcommand it runs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        argv = shlex.split(body["cmd"])
        if argv[0] == "loraloop":
            out[name] = next(a for a in argv[1:] if not a.startswith("-"))
    return out


def code_deps(stage_name: str) -> set[str]:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage_name]
    deps = stage.get("do", stage).get("deps", [])
    return {d for d in deps if d.startswith(f"{PACKAGE}/")}


def test_every_stage_runs_a_loraloop_subcommand():
    from stages.cli import COMMANDS

    commands = stage_commands()
    assert len(commands) == 13
    unknown = {stage: sub for stage, sub in commands.items() if sub not in COMMANDS}
    assert not unknown, f"dvc.yaml runs subcommands the CLI does not have: {unknown}"


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_stage_deps_are_its_import_closure(stage):
    from stages.cli import COMMANDS

    sub = stage_commands()[stage]
    module = COMMANDS[sub].split(":")[0]
    ran = closure(f"{PACKAGE}.cli") | closure(module)
    listed = code_deps(stage)
    missing, extra = sorted(ran - listed), sorted(listed - ran)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r} (loraloop {sub} -> {module}): "
        + (f"runs but does not list as deps: {', '.join(missing)}. " if missing else "")
        + (f"lists as deps but does not run: {', '.join(extra)}." if extra else "")
    )


def test_closure_follows_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function, `from . import x` and `from .x import y`
    are all followed (a checker that missed them would pass a dvc.yaml with missing deps)."""
    assert "stages/generate.py" in closure("stages.sample")  # imported inside generate_hf
    assert "stages/ab.py" in closure("stages.eval")  # from . import ab
    assert "stages/io.py" in closure("stages.report")  # from .io import read_json
    assert "stages/train.py" not in closure("stages.eval")
    assert "stages/quality.py" not in closure("stages.rules")


@pytest.mark.parametrize("module", ["cli", "collect", "scrub", "version", "view", "package", "report"])
def test_stages_without_a_model_do_not_import_torch(module):
    """Importing torch and transformers costs seconds; a stage that runs no model must not pay it."""
    import subprocess
    import sys

    probe = (
        f"import sys, stages.{module}; "
        "print(' '.join(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
