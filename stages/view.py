"""view@<lineage>: the lineage's characters' split files, copied from the dataset version. A
lineage's stages read only this view, so new data for another character leaves it (and them)
unchanged, and a record of another character cannot reach them."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .cli import PATH, params_of, say
from .io import replacing
from .paths import LINEAGES
from .splits import SPLITS, load_split


def run(characters: list[str], version_dir: Path, out_dir: Path) -> dict:
    counts = {}
    with replacing(out_dir) as tmp:
        for character in characters:
            src = Path(version_dir) / SPLITS / character
            if not src.is_dir():
                raise FileNotFoundError(
                    f"{src}: the dataset version has no data for character {character!r} "
                    f"(characters with data: {sorted(p.name for p in (Path(version_dir) / SPLITS).iterdir())})"
                )
            shutil.copytree(src, tmp / SPLITS / character)
        for split in ("train", "eval", "dpo", "negatives"):
            counts[split] = len(load_split(tmp, split, characters))  # checks every record's owner
    return {"characters": characters, **counts}


@click.command()
@click.option("--lineage", required=True, help="A lineage from params.yaml.")
@click.option("--data", "version_dir", type=PATH, default=Path("data/version"), show_default=True)
@click.option("--out", type=PATH, default=None, help="Default: data/lineages/<lineage>")
@click.pass_context
def cli(ctx, lineage, version_dir, out):
    """Copy a lineage's characters' splits out of the dataset version."""
    lin = params_of(ctx).lineage(lineage)
    say(run(lin.characters, version_dir, out or LINEAGES / lineage))
