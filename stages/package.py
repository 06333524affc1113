"""package: per lineage, release the latest round that passed its gates (tone leakage included)
and beats the version in service on the primary metric, or keep it and say why; routing.json
maps every lineage's routes to its release (loraloop/release/)."""

from __future__ import annotations

import click

from loraloop.options import PATH, params_of, say
from loraloop.release import package
from loraloop.workspace import BASE, METRICS, PACKAGE_REPORT, RELEASES, ROUNDS, ROUTING, VERSION, Workspace


@click.command()
@click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)
@click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True)
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.option("--data", "version_dir", type=PATH, default=VERSION, show_default=True)
@click.option("--out", type=PATH, default=RELEASES, show_default=True)
@click.option("--routing", type=PATH, default=ROUTING, show_default=True)
@click.option("--report", "report_file", type=PATH, default=PACKAGE_REPORT, show_default=True)
@click.pass_context
def cli(ctx, base_dir, rounds_dir, metrics_dir, version_dir, out, routing, report_file):
    """Release the latest round that passed its gates and beats the current release."""
    ws = Workspace(params_of(ctx), base_dir, rounds_dir, metrics=metrics_dir, version=version_dir)
    say(package.run(ws, out, routing, report_file))
