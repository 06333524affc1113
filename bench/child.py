"""Running one side of a benchmark in its own process, so its peak memory and warm caches are its
own: the parent runs the script again with extra arguments; the child prints one RESULT line."""

from __future__ import annotations

import json
import subprocess
import sys


def report(result: dict) -> None:
    """In the child: the one line the parent reads."""
    print("RESULT " + json.dumps(result))


class SideFailed(RuntimeError):
    """A side that stopped with an error: `reason` is its last line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run(script: str, argv: list[str], label: str, exit_on_error: bool = True, timeout: float | None = None) -> dict:
    """In the parent: `script argv...` in a new Python process; its RESULT, or (by default) exit
    with its stderr; with exit_on_error=False, raise SideFailed with its last line. A side still
    running after `timeout` seconds is stopped and fails so."""
    try:
        out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        if exit_on_error:
            sys.exit(f"{label} ran past its {timeout:.0f} s")
        raise SideFailed(f"stopped after its budget of {timeout:.0f} s") from None
    if out.returncode != 0:
        if not exit_on_error:
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            raise SideFailed(lines[-1] if lines else f"exit status {out.returncode}")
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
