"""The layout keeps its shape: a stage module stays thin, a library module stays one subject, a
function fits on a screen. A new exception is a decision to write down here, with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINES, MODULE_LINES, FUNCTION_LINES = 150, 500, 60
EXCEPTIONS: dict[str, str] = {  # "path:function" or "path" -> why it may be longer
    "loraloop/params.py": "params.yaml's whole schema in one file, so one read shows every key and its bounds",
}


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("path", sorted((ROOT / "stages").glob("*.py")), ids=lambda p: p.name)
def test_a_stage_module_is_thin(path):
    assert lines(path) <= STAGE_LINES, f"{path.relative_to(ROOT)}: {lines(path)} lines; move its work into loraloop/"


def library_files() -> list[Path]:
    return sorted((ROOT / "loraloop").rglob("*.py"))


def test_no_library_module_is_over_its_size():
    long = {
        p.relative_to(ROOT).as_posix(): lines(p)
        for p in library_files()
        if lines(p) > MODULE_LINES and p.relative_to(ROOT).as_posix() not in EXCEPTIONS
    }
    assert not long, f"modules over {MODULE_LINES} lines (split them by subject): {long}"


def test_no_function_is_over_a_screen():
    long = {}
    for path in library_files() + sorted((ROOT / "stages").glob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                n = node.end_lineno - start + 1
                if n > FUNCTION_LINES and f"{rel}:{node.name}" not in EXCEPTIONS:
                    long[f"{rel}:{node.name}"] = n
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def test_no_module_is_named_after_a_standard_module():
    """`io.py` beside the stdlib's io reads as the stdlib's to whoever opens the tree."""
    import sys

    clash = [p.relative_to(ROOT).as_posix() for p in library_files() if p.stem in sys.stdlib_module_names]
    assert not clash, f"modules named after standard-library modules: {clash}"
