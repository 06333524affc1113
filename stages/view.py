"""view@<lineage>: the lineage's characters' split files, copied from the dataset version. A
lineage's stages read only this view, so new data for another character leaves it (and them)
unchanged, and a record of another character cannot reach them."""

from __future__ import annotations

import click

from loraloop.data.splits import write_view
from loraloop.options import PATH, params_of, say
from loraloop.workspace import VERSION, VIEWS


@click.command()
@click.option("--lineage", required=True, help="A lineage from params.yaml.")
@click.option("--data", "version_dir", type=PATH, default=VERSION, show_default=True)
@click.option("--out", type=PATH, default=None, help="Default: data/lineages/<lineage>")
@click.pass_context
def cli(ctx, lineage, version_dir, out):
    """Copy a lineage's characters' splits out of the dataset version."""
    lin = params_of(ctx).lineage(lineage)
    say(write_view(lineage, lin.characters, version_dir, out or VIEWS / lineage))
