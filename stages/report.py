"""report: the per-round metrics table `make demo` ends with, and the plot files dvc.yaml declares
(reports/plots/{trajectory,train_loss,eval_loss}/<lineage>.csv; loraloop/judge/report.py). With
--exps, outside the pipeline: the DVC experiments of this commit as an ablation table
(loraloop/judge/ablation.py)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop.judge import ablation, report
from loraloop.options import PATH, params_of
from loraloop.workspace import METRICS, ROUNDS, Workspace


@click.command()
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.option("--plots-dir", type=PATH, default=None, help="Also write the plot files here (the DVC stage does).")
@click.option("--exps", is_flag=True, help="The DVC experiments of this commit against it, as an ablation table.")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    default=ablation.METRICS,
    show_default=True,
    help="With --exps: a metric of each lineage's last round to compare (repeat for more).",
)
@click.option("--exps-dir", type=PATH, default=Path("reports/exps"), show_default=True)
@click.pass_context
def cli(ctx, metrics_dir, rounds_dir, plots_dir, exps, metrics, exps_dir):
    """Print the per-round evaluation table (or, with --exps, the experiments' ablation table)."""
    if exps:
        return experiments(params_of(ctx), tuple(metrics), exps_dir)
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


def experiments(params, metrics: tuple[str, ...], out_dir) -> None:
    try:
        all_runs = ablation.runs(ablation.exp_show(Path.cwd()))
    except ablation.NoExperiments as exc:
        raise click.ClickException(str(exc)) from None
    cols = ablation.columns(params, metrics)
    header, rows = ablation.table(all_runs, cols)
    click.echo(report.aligned(header, rows))
    if len(all_runs) == 1:
        click.echo("no finished experiments yet: `dvc exp run --queue -S ...`, then `dvc queue start`", err=True)
    for path in ablation.write_plot(all_runs, cols, out_dir):
        click.echo(f"wrote {path}", err=True)
