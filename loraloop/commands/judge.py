"""`loraloop ab-score`: a round's win rate from a filled-in blinded A/B file."""

from __future__ import annotations

import click

from ..options import PATH, say


@click.command("ab-score")
@click.argument("file", type=PATH)
@click.option("--key", "key_file", type=PATH, default=None, help="Default: ab_key.json beside FILE.")
def ab_score(file, key_file):
    """Win rate of a round from a filled-in A/B file (preferred: A, B, tie; blank = skipped)."""
    from ..judge import ab

    try:
        say(ab.score(file, key_file or file.parent / "ab_key.json"))
    except (ab.LabelError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
