"""sample@<round>: on-policy completions of the previous round's model on the lineage's train
prompts, `samples_per_prompt` each, with the hf engine or vLLM (loraloop/lm/sampling.py)."""

from __future__ import annotations

import click

from loraloop.lm import sampling
from loraloop.options import PATH, round_options, round_workspace, say


@click.command()
@round_options
@click.option("--out", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/samples.jsonl")
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, view_dir, base_dir, out):
    """Sample on-policy completions from the previous round's model."""
    ws = round_workspace(ctx, base_dir, rounds_dir, rounds_data, view_dir)
    say(sampling.run(ws.params, ws.round(round_id), ws.base, out))
