"""scrub: mask personal data, apply the quality rules, drop duplicates and partition the kept
records by character (loraloop/data/scrub.py)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop.data.scrub import CharacterConflict, run
from loraloop.options import PATH, params_of, say


@click.command()
@click.option("--in", "in_file", type=PATH, default=Path("data/collected/records.jsonl"), show_default=True)
@click.option("--out", type=PATH, default=Path("data/scrubbed"), show_default=True)
@click.option("--metrics", type=PATH, default=Path("metrics/data.json"), show_default=True)
@click.pass_context
def cli(ctx, in_file, out, metrics):
    """Mask personal data, apply quality rules, drop duplicates, partition by character."""
    try:
        stats = run(params_of(ctx).scrub, in_file, out, metrics, collect_counts=in_file.parent / "counts.json")
    except CharacterConflict as exc:
        raise click.ClickException(str(exc)) from None
    say({k: stats[k] for k in ("read", "kept", "rejected", "reasons", "pii_masked")})
