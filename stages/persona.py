"""persona: the fleet's persona classifier, which of the lineages' characters a reply sounds like
(or none: the base's own replies), reported on held-out conversations; the leakage stage applies it
to every round (persona_match, persona_leakage; loraloop/judge/judges.py)."""

from __future__ import annotations

import click

from loraloop.judge.judges import run_persona
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, METRICS, PERSONA, VERSION, Base


@click.command()
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--data", "version_dir", type=PATH, default=VERSION, show_default=True, help="The dataset version.")
@click.option("--out", type=PATH, default=PERSONA, show_default=True)
@click.option("--metrics", "metrics_file", type=PATH, default=METRICS / "persona.json", show_default=True)
@click.pass_context
def cli(ctx, base_dir, version_dir, out, metrics_file):
    """Train the persona classifier on every character's replies and the base's."""
    say(run_persona(params_of(ctx), version_dir, Base(base_dir), out, metrics_file))
