"""critic@<round>: the value head a round trains its token weights with (train.token_weighting:
critic), fit on the round's scored samples and judged on held-out prompts
(loraloop/judge/critic.py); a round that weighs tokens otherwise gets a note that it does not."""

from __future__ import annotations

import click

from loraloop.judge.critic import run
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, CRITICS, METRICS, ROUNDS_DATA, Workspace


@click.command()
@click.option("--round", "round_id", required=True)
@click.option("--rounds-data", type=PATH, default=ROUNDS_DATA, show_default=True, help="Rounds' samples and scores.")
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--out", type=PATH, default=None, help="Default: models/critics/<round>")
@click.option("--metrics", "metrics_file", type=PATH, help="Default: metrics/<lineage>/critic_<round>.json")
@click.pass_context
def cli(ctx, round_id, rounds_data, base_dir, out, metrics_file):
    """Fit the round's value head on its scored samples (when it trains with the critic)."""
    params = params_of(ctx)
    ws = Workspace(params, base=base_dir, rounds_data=rounds_data, metrics=METRICS, critics=CRITICS)
    r = ws.round(round_id)
    say(run(params, r, ws.base, out or r.critic, metrics_file or ws.critic_metrics(r)))
