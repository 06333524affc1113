"""eval@<round> and eval_base@<lineage>: the round's model on the lineage's held-out eval prompts,
its metrics under the lineage's rules and gates, deltas against the previous round and the base,
and a blinded A/B set against the previous round (loraloop/judge/evaluate.py)."""

from __future__ import annotations

import click

from loraloop.judge import evaluate
from loraloop.options import PATH, round_options, round_workspace, say
from loraloop.workspace import METRICS


@click.command()
@round_options
@click.option("--lineage", default=None, help="With --round base: the lineage whose prompts and rules judge the base.")
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, view_dir, base_dir, lineage, metrics_dir):
    """Evaluate a round (or `--round base --lineage NAME`) on its lineage's eval split."""
    ws = round_workspace(ctx, base_dir, rounds_dir, rounds_data, view_dir, metrics_dir)
    if round_id == "base":
        if lineage is None:
            raise click.UsageError(f"--round base needs --lineage (one of {', '.join(ws.params.lineages)})")
        ws.params.lineage(lineage)  # a lineage params.yaml has, or the message naming those it has
    else:
        owner = ws.params.round(round_id).lineage
        if lineage not in (None, owner):
            raise click.UsageError(f"round {round_id} belongs to lineage {owner}, not {lineage}")
    say(evaluate.run(ws.params, ws.round(round_id, lineage), ws.base))
