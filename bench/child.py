"""Running one side of a benchmark in its own process, so its peak memory and warm caches are its
own: the parent runs the script again with extra arguments; the child prints one RESULT line."""

from __future__ import annotations

import json
import subprocess
import sys


def report(result: dict) -> None:
    """In the child: the one line the parent reads."""
    print("RESULT " + json.dumps(result))


def run(script: str, argv: list[str], label: str) -> dict:
    """In the parent: `script argv...` in a new Python process; its RESULT, or exit with its stderr."""
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
