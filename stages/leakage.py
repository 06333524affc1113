"""leakage: every round's adapter answers the other lineages' eval prompts under their system
prompts; the tone_leakage_rate is the share of replies that use the round's own tone keywords, the
persona_leakage the share the fleet's persona classifier takes for its own characters, and the
persona_match the share of its eval answers it takes for the right character
(loraloop/judge/leakage.py). One stage for the fleet, since it reads every lineage."""

from __future__ import annotations

import click

from loraloop.judge import leakage
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, METRICS, PERSONA, ROUNDS, ROUNDS_DATA, VIEWS, Workspace, leakage_file


@click.command()
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.option("--rounds-data", type=PATH, default=ROUNDS_DATA, show_default=True, help="The rounds' eval answers.")
@click.option("--views", type=PATH, default=VIEWS, show_default=True, help="The lineages' dataset views.")
@click.option("--persona", type=PATH, default=PERSONA, show_default=True, help="The persona classifier.")
@click.option("--out", type=PATH, default=leakage_file(METRICS), show_default=True)
@click.pass_context
def cli(ctx, base_dir, rounds_dir, rounds_data, views, persona, out):
    """Measure every round's tone and persona leakage into the other lineages, and its persona match."""
    ws = Workspace(params_of(ctx), base_dir, rounds_dir, rounds_data, views=views, persona=persona)
    say(leakage.run(ws, out))
