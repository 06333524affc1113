"""dvc.yaml's code deps are the code each stage runs: every `loraloop <sub>` stage depends on
code/<kind>.json, the fingerprint loraloop/code_deps.py writes of the project files in the import
closure of the module that subcommand runs (and of the `loraloop` entry point itself). A file
missing from it means `dvc repro` says "up to date" after an edit that changes the stage's output;
an extra one reruns it for nothing. The closure is read from the source; here it is also checked
against what importing the stage really loads, and the checker against each kind of import."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraloop import code_deps

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = code_deps.PACKAGES


def imported_modules(path: Path, source: str | None = None, top_only: bool = False) -> set[str]:
    return code_deps.imported_modules(ROOT, path, source, top_only)


def module_file(name: str) -> Path | None:
    return code_deps.module_file(ROOT, name)


def closure(module: str) -> set[str]:
    return code_deps.closure(ROOT, module)


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


def source_deps(stage_name: str) -> set[str]:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage_name]
    deps = stage.get("do", stage).get("deps", [])
    return {d for d in deps if d.split("/")[0] in PACKAGES}


def project_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_stage_runs_a_loraloop_subcommand():
    from loraloop.cli import COMMANDS

    commands = stage_commands()
    assert len(commands) == 18
    unknown = {stage: sub for stage, sub in commands.items() if sub not in COMMANDS}
    assert not unknown, f"dvc.yaml runs subcommands the CLI does not have: {unknown}"


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_a_stage_depends_on_its_kinds_fingerprint_and_no_source_file(stage):
    from loraloop.cli import COMMANDS

    sub = stage_commands()[stage]
    kind = COMMANDS[sub].split(":")[0].removeprefix("stages.")
    listed = source_deps(stage)
    if stage == "code":  # the fingerprints' own stage depends on the source trees whole
        assert listed == {"loraloop", "stages"}
        return
    assert listed == set(), f"dvc.yaml stage {stage!r} lists source files as deps: {sorted(listed)}"
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    assert f"code/{kind}.json" in deps.get("do", deps)["deps"]


@pytest.mark.parametrize("kind", code_deps.kinds(ROOT))
def test_a_fingerprint_holds_what_importing_its_stage_loads(kind, tmp_path):
    """code/<kind>.json lists the import closure of the entry point and stages/<kind>.py; every
    project module that importing them really loads is in it."""
    code_deps.run(ROOT, tmp_path)
    files = set(json.loads((tmp_path / f"{kind}.json").read_text())["files"])
    assert files == closure("loraloop.cli") | closure(f"stages.{kind}")
    probe = (
        f"import sys, loraloop.cli, stages.{kind}; "
        "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    ours = {
        Path(f).relative_to(ROOT).as_posix()
        for f in loaded.stdout.split()
        if Path(f).is_absolute() and any(Path(f).is_relative_to(ROOT / p) for p in PACKAGES)
    }
    assert "loraloop/cli.py" in ours and f"stages/{kind}.py" in ours  # the probe sees the project
    assert ours <= files, f"{kind}: loads {sorted(ours - files)} that its fingerprint misses"


def test_a_fingerprint_changes_only_for_the_kinds_whose_code_changed(tmp_path):
    import shutil

    copy = tmp_path / "copy"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    code_deps.run(copy, tmp_path / "before")
    loop = copy / "loraloop/train/loop.py"
    loop.write_text(loop.read_text() + "\n# an edit\n")
    code_deps.run(copy, tmp_path / "after")
    moved = {
        p.stem
        for p in (tmp_path / "after").glob("*.json")
        if p.read_bytes() != (tmp_path / "before" / p.name).read_bytes()
    }
    assert moved == {"train"}


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
    with pytest.raises(ValueError, match="leaves the project"):
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
    """Imports between the library's modules form no cycle (a cycle hides which wing stands on
    which), those inside functions included: deferring an import hides a cycle, it does not
    remove it (lm/loss.py and lm/mtp.py had one)."""
    graph = {}
    for path in project_files():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(path) if module_file(m) is not None}
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
