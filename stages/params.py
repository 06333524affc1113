"""params: params/<kind>/<name>.json, the params.yaml keys each lineage's and round's stage reads,
which those stages depend on instead of on params.yaml (loraloop/params_deps.py says why)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop import params_deps
from loraloop.options import PATH, say


@click.command()
@click.option("--out", type=PATH, default=Path("params"), show_default=True)
@click.pass_context
def cli(ctx, out):
    """Write the keys each per-lineage and per-round stage reads into OUT/<kind>/<name>.json."""
    say(params_deps.run(ctx.find_root().obj["params"], out))
