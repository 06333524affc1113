"""dvc.yaml's code deps are the code each stage runs: for every `loraloop <sub>` stage, the
project files in the import closure of the module that subcommand runs (and of the `loraloop`
entry point itself) are exactly the stage's deps under stages/ and loraloop/. A missing one means
`dvc repro` says "up to date" after an edit that changes the stage's output; an extra one reruns
it for nothing."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "loraloop")  # the DVC stages, and the library they run


def package_of(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as parts: a module's folder, or
    for an __init__.py the package it opens."""
    return list(path.relative_to(ROOT).parent.parts)


def imported_modules(path: Path, source: str | None = None, top_only: bool = False) -> set[str]:
    """Every project module a file imports, at the top or inside a function (a lazy import runs
    when the stage runs, so it counts; `top_only`: the module-level ones alone), as dotted names;
    relative imports of any level resolved against the file's own package. `source`: the file's
    text, if not read from `path`."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in tree.body if top_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package_of(path)
                if node.level - 1 > len(parts) - 1:
                    raise AssertionError(f"{path}: `from {'.' * node.level}{node.module or ''}` leaves the project")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] not in PACKAGES:
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
    return {d for d in deps if d.split("/")[0] in PACKAGES}


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_stage_runs_a_loraloop_subcommand():
    from loraloop.cli import COMMANDS

    commands = stage_commands()
    assert len(commands) == 13
    unknown = {stage: sub for stage, sub in commands.items() if sub not in COMMANDS}
    assert not unknown, f"dvc.yaml runs subcommands the CLI does not have: {unknown}"


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_stage_deps_are_its_import_closure(stage):
    from loraloop.cli import COMMANDS

    sub = stage_commands()[stage]
    module = COMMANDS[sub].split(":")[0]
    ran = closure("loraloop.cli") | closure(module)
    listed = code_deps(stage)
    missing, extra = sorted(ran - listed), sorted(listed - ran)
    assert not missing and not extra, (
        f"dvc.yaml stage {stage!r} (loraloop {sub} -> {module}): "
        + (f"runs but does not list as deps: {', '.join(missing)}. " if missing else "")
        + (f"lists as deps but does not run: {', '.join(extra)}." if extra else "")
    )


def test_closure_follows_lazy_and_relative_imports():
    """The checker itself: an import inside a function, `from . import x`, `from .x import y` and
    `from ..x import y` in a nested package are all followed (a checker that missed them would pass
    a dvc.yaml with missing deps)."""
    assert "loraloop/lm/generate.py" in closure("loraloop.lm.sampling")  # imported inside generate_hf
    assert "loraloop/judge/ab.py" in closure("loraloop.judge.evaluate")  # from . import ab
    assert "loraloop/files.py" in closure("loraloop.judge.report")  # from ..files import read_json
    assert "loraloop/train/sft.py" in closure("loraloop.train.setup")  # from . import dpo, sft
    assert "loraloop/lm/loss.py" in closure("loraloop.train.sft")  # from ..lm.loss import ...
    assert "loraloop/train/__init__.py" in closure("stages.train")  # the packages on the way
    assert "loraloop/train/loop.py" not in closure("stages.eval")
    assert "loraloop/data/quality.py" not in closure("loraloop.judge.rules")


def test_the_checker_resolves_each_relative_level():
    """`from ..a import b` in pkg/sub/mod.py is pkg.a; `from . import c` in pkg/sub/__init__.py is
    pkg.sub.c; three dots from pkg/sub/mod.py leave the project and are refused."""
    mod, init = ROOT / "loraloop/train/mod.py", ROOT / "loraloop/train/__init__.py"
    assert imported_modules(mod, "from ..files import read_json\nfrom .setup import Run\n") == {
        "loraloop.files",
        "loraloop.train.setup",
    }
    assert imported_modules(init, "from . import sft\n") == {"loraloop.train", "loraloop.train.sft"}
    assert imported_modules(mod, "def f():\n    from ..lm import chat\n") == {"loraloop.lm", "loraloop.lm.chat"}
    with pytest.raises(AssertionError, match="leaves the project"):
        imported_modules(mod, "from ...files import read_json\n")


def test_stages_holds_one_module_per_kind_of_stage_and_nothing_imports_one():
    """stages/ is the pipeline: one module per kind of dvc.yaml stage (eval and eval_base share
    one), none that no stage runs; the library never imports a stage module, and nothing imports
    the entry point (it loads the subcommands, not the other way round)."""
    from loraloop.cli import STAGES

    kinds = {STAGES[sub].split(":")[0] for sub in stage_commands().values()}
    on_disk = {f"stages.{p.stem}" for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py"}
    assert on_disk == kinds
    for path in project_files():
        imported = imported_modules(path)
        assert "loraloop.cli" not in imported, f"{path.relative_to(ROOT)} imports the entry point"
        if path.is_relative_to(ROOT / "loraloop"):
            assert not any(m.split(".")[0] == "stages" for m in imported), f"{path.relative_to(ROOT)} imports a stage"


def test_the_library_has_no_import_cycles():
    """Module-level imports between the library's modules form no cycle (a cycle hides which wing
    stands on which)."""
    graph = {}
    for path in project_files():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(path, top_only=True) if module_file(m) is not None}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", ["loraloop.cli", "stages.collect", "stages.scrub", "stages.version", "stages.view"])
def test_stages_without_a_model_do_not_import_torch(module):
    """Importing torch and transformers costs seconds; a stage that runs no model must not pay it."""
    import subprocess
    import sys

    probe = (
        f"import sys, {module}; "
        "print(' '.join(m for m in ('torch', 'transformers', 'peft', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("module", ["stages.package", "stages.report", "loraloop.workspace", "loraloop.commands.serve"])
def test_the_workspace_and_light_commands_do_not_import_torch(module):
    test_stages_without_a_model_do_not_import_torch(module)
