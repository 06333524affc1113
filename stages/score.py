"""score@<round>: every rule's value per sample under the lineage's rules, a total score and a
training weight; the best share marked `keep`, each prompt's best and worst reply a DPO pair
(loraloop/judge/score.py)."""

from __future__ import annotations

import click

from loraloop.judge.score import run
from loraloop.options import PATH, params_of, say
from loraloop.workspace import ROUNDS_DATA, Workspace


@click.command()
@click.option("--round", "round_id", required=True)
@click.option("--rounds-data", type=PATH, default=ROUNDS_DATA, show_default=True, help="Rounds' samples and scores.")
@click.option("--samples", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/samples.jsonl")
@click.option("--out", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/pairs.jsonl")
@click.pass_context
def cli(ctx, round_id, rounds_data, samples, out, pairs):
    """Score samples with the rules; mark the best share for training; pair best vs worst."""
    params = params_of(ctx)
    r = Workspace(params, rounds_data=rounds_data).round(round_id)
    say(run(params.score_of(r.lineage), samples or r.samples, out or r.scored, pairs or r.pairs))
