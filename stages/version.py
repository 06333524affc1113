"""version: split the scrubbed records into train/eval/dpo per character, with a manifest and a
changelog against the committed version (loraloop/data/version.py)."""

from __future__ import annotations

from pathlib import Path

import click

from loraloop.data.version import run
from loraloop.options import PATH, params_of, say


@click.command()
@click.option("--in", "in_dir", type=PATH, default=Path("data/scrubbed"), show_default=True)
@click.option("--out", type=PATH, default=Path("data/version"), show_default=True)
@click.option("--metrics", type=PATH, default=Path("metrics/data.json"), show_default=True)
@click.option("--collect-rejects", type=PATH, default=Path("data/collected/rejects.jsonl"), show_default=True)
@click.pass_context
def cli(ctx, in_dir, out, metrics, collect_rejects):
    """Split into train/eval/dpo per character; write the manifest and the changelog."""
    manifest = run(
        params_of(ctx).version,
        in_dir,
        out,
        data_metrics=metrics,
        reject_files=[collect_rejects, in_dir / "rejects.jsonl"],
    )
    say(manifest["records"])
