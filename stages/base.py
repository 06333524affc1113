"""base: materialize the base model into models/base/ as safetensors + tokenizer, pinned by
content hash, and models/rounds/base/ROUND.json, the round every lineage starts from
(loraloop/lm/materialize.py)."""

from __future__ import annotations

import click

from loraloop.lm.materialize import run
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, ROUNDS


@click.command()
@click.option("--out", type=PATH, default=BASE, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.pass_context
def cli(ctx, out, rounds_dir):
    """Materialize the base model as safetensors, pinned by content hash."""
    info = run(params_of(ctx).base, out, rounds_dir)
    say({k: v for k, v in info.items() if k != "files"})
