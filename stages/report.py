"""report: the per-round metrics table `make demo` ends with, and the plot files dvc.yaml declares
(reports/plots/{trajectory,train_loss,eval_loss}/<lineage>.csv; loraloop/judge/report.py)."""

from __future__ import annotations

import click

from loraloop.judge import report
from loraloop.options import PATH, params_of
from loraloop.workspace import METRICS, ROUNDS, Workspace


@click.command()
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.option("--plots-dir", type=PATH, default=None, help="Also write the plot files here (the DVC stage does).")
@click.pass_context
def cli(ctx, metrics_dir, rounds_dir, plots_dir):
    """Print the per-round evaluation table."""
    ws = Workspace(params_of(ctx), rounds=rounds_dir, metrics=metrics_dir)
    if plots_dir is not None:
        report.write_plots(ws, plots_dir)
    click.echo(report.table(ws))
    tools = report.tool_table(ws)
    if tools:
        click.echo(f"\ntool use on the gold tool conversations:\n{tools}")
    judges = report.judge_table(ws)
    if judges:
        click.echo(f"\nreward models on held-out conversations (the rule score beside):\n{judges}")
    persona = report.persona_line(ws)
    if persona:
        click.echo(f"\n{persona}")
    for warning in report.warnings(ws):
        click.echo(f"warning: {warning}", err=True)
