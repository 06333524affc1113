"""collect: read the raw sources of params.yaml's collect.sources (or one --source file),
normalize every record to the schema and reject the rest with a reason (loraloop/data/collect.py)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop.data import formats
from loraloop.data.collect import run
from loraloop.options import PATH, params_of, say
from loraloop.params import CollectParams, SourceParams


@click.command()
@click.option("--out", type=PATH, default=Path("data/collected"), show_default=True)
@click.option(
    "--source",
    type=PATH,
    default=None,
    help="Ingest this one file (or datasets directory) instead of params.yaml's sources; needs no params.yaml.",
)
@click.option(
    "--kind",
    type=click.Choice(["conversations", "feedback", "gold", "anchor"]),
    default="conversations",
    show_default=True,
    help="With --source: what the file holds.",
)
@click.option("--character-id", default=None, help="With --source: character for records that name none.")
@click.option("--no-opt-in-required", is_flag=True, help="With --source: accept records without opt_in: true.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *formats.SHAPES, "magpie"]),
    default="auto",
    show_default=True,
    help="With --source: the records' shape (auto decides per record).",
)
@click.pass_context
def cli(ctx, out, source, kind, character_id, no_opt_in_required, fmt):
    """Normalize raw records; reject malformed ones with a reason, file and line.

    Exits 0 whenever it ran, whatever it rejected: see OUT/counts.json and OUT/rejects.jsonl."""
    if source is not None:
        src = SourceParams(
            path=str(source), kind=kind, character_id=character_id, format=fmt, require_opt_in=not no_opt_in_required
        )
        params = CollectParams(sources=[src])
    else:
        params = params_of(ctx).collect
    try:
        counts = run(params, out)
    except (FileNotFoundError, ValueError) as exc:
        listed = "" if source is not None else f" (listed in {ctx.find_root().obj['params']} collect.sources)"
        raise click.ClickException(f"{exc}{listed}") from None
    say({k: counts[k] for k in ("read", "kept", "rejected", "reasons", "shapes")})
    for line in counts["hints"]:  # a source that kept nothing for a reason an option fixes
        click.echo(f"hint: {line}", err=True)
