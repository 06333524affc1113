"""score@<round>: every rule's value per sample under the lineage's rules (and the reward model
score.reward_model names: the lineage's learned judge, or an hf model), a total score and a
training weight; the best share marked `keep`, each prompt's best and worst reply a DPO pair
(loraloop/judge/score.py)."""

from __future__ import annotations

import click

from loraloop.judge.score import run
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, JUDGES, ROUNDS_DATA, Workspace


@click.command()
@click.option("--round", "round_id", required=True)
@click.option("--rounds-data", type=PATH, default=ROUNDS_DATA, show_default=True, help="Rounds' samples and scores.")
@click.option("--samples", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/samples.jsonl")
@click.option("--out", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: <rounds-data>/<lineage>/<round>/pairs.jsonl")
@click.option("--judges", type=PATH, default=JUDGES, show_default=True, help="The lineages' learned judges.")
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.pass_context
def cli(ctx, round_id, rounds_data, samples, out, pairs, judges, base_dir):
    """Score samples with the rules; mark the best share for training; pair best vs worst."""
    params = params_of(ctx)
    ws = Workspace(params, base=base_dir, rounds_data=rounds_data, judges=judges)
    r = ws.round(round_id)
    sp = params.score_of(r.lineage)
    rewarder = None
    if sp.reward_model.kind == "learned":
        from loraloop.judge.reward import LearnedRewarder

        rewarder = LearnedRewarder(ws.judge(r.lineage), base_dir, params.judge.max_length, sp.reward_model.batch_size)
    say(run(sp, samples or r.samples, out or r.scored, pairs or r.pairs, rewarder))
