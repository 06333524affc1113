"""train@<round>: LoRA training of the round's adapter on score's samples and the lineage's data
(loraloop/train/), here or under `accelerate launch` when train.launcher says so."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loraloop.options import PATH, round_options, round_workspace, say
from loraloop.train import launch, loop
from loraloop.train.errors import TrainingStopped


@click.command()
@round_options
@click.option("--scored", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/pairs.jsonl")
@click.option("--checkpoints", type=PATH, default=None, help="Default: checkpoints/<round> (untracked)")
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, view_dir, base_dir, scored, pairs, checkpoints):
    """Train the round's LoRA adapter (under `accelerate launch` when train.launcher says so)."""
    ws = round_workspace(ctx, base_dir, rounds_dir, rounds_data, view_dir)
    r = ws.round(round_id)
    try:
        if ws.params.train.launcher == "accelerate" and not launch.launched():
            sys.exit(launch.accelerate_launch(ws.params.train, sys.argv[1:]))
        result = loop.run(ws.params, r, ws.base, checkpoints or Path("checkpoints") / round_id, scored, pairs)
    except TrainingStopped as exc:
        raise click.ClickException(str(exc)) from None
    if result:  # only the main process reports
        say(result)
