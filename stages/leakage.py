"""leakage: every round's adapter answers the other lineages' eval prompts under their system
prompts; the tone_leakage_rate is the share of replies that use the round's own tone keywords
(loraloop/judge/leakage.py). One stage for the fleet, since it reads every lineage."""

from __future__ import annotations

import click

from loraloop.judge import leakage
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, METRICS, ROUNDS, VIEWS, Workspace, leakage_file


@click.command()
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.option("--views", type=PATH, default=VIEWS, show_default=True, help="The lineages' dataset views.")
@click.option("--out", type=PATH, default=leakage_file(METRICS), show_default=True)
@click.pass_context
def cli(ctx, base_dir, rounds_dir, views, out):
    """Measure every round's tone leakage into the other lineages' characters."""
    say(leakage.run(Workspace(params_of(ctx), base_dir, rounds_dir, views=views), out))
