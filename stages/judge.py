"""judge@<lineage>: the lineage's reward model, trained on its users' labels (feedback, corrections,
preference pairs, thumbs down, filled-in A/B sheets) and reported on held-out conversations beside
the rule score (loraloop/judge/judges.py)."""

from __future__ import annotations

import click

from loraloop.judge.judges import run
from loraloop.options import PATH, params_of, say
from loraloop.workspace import BASE, JUDGE_FEATURES, JUDGE_PLOTS, JUDGES, METRICS, VIEWS, Base


@click.command()
@click.option("--lineage", required=True, help="A lineage from params.yaml.")
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option(
    "--data", "view_dir", type=PATH, default=None, help="The lineage's view. Default: data/lineages/<lineage>"
)
@click.option("--out", type=PATH, default=None, help="Default: models/judges/<lineage>")
@click.option("--metrics", "metrics_file", type=PATH, default=None, help="Default: metrics/<lineage>/judge.json")
@click.option("--plots", "plots_dir", type=PATH, default=None, help="Default: reports/judges/<lineage>")
@click.option(
    "--features", "cache_file", type=PATH, default=None, help="Default: data/judges/<lineage>/features.safetensors"
)
@click.pass_context
def cli(ctx, lineage, base_dir, view_dir, out, metrics_file, plots_dir, cache_file):
    """Train a lineage's reward model on what the loop collected."""
    params = params_of(ctx)
    say(
        run(
            params,
            params.lineage(lineage),
            view_dir or VIEWS / lineage,
            Base(base_dir),
            out or JUDGES / lineage,
            metrics_file or METRICS / lineage / "judge.json",
            plots_dir or JUDGE_PLOTS / lineage,
            cache_file or JUDGE_FEATURES / lineage / "features.safetensors",
        )
    )
