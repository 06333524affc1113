"""code: code/<kind>.json, the files each kind of stage runs with their hashes, which that kind's
stages depend on instead of each file (loraloop/code_deps.py says why)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop import code_deps
from loraloop.options import PATH, params_of, say


@click.command()
@click.option("--out", type=PATH, default=Path("code"), show_default=True)
@click.pass_context
def cli(ctx, out):
    """Fingerprint the code each kind of stage runs (its import closure) into OUT/<kind>.json."""
    params_of(ctx)  # like every stage: a broken params.yaml stops the run before any work
    say(code_deps.run(Path.cwd(), out))
