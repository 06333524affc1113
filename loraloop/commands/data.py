"""The data commands outside the pipeline: `loraloop scrub-text` (try the PII rules on your own
text) and `loraloop forget` (honour a deletion request in every stored version)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..options import PATH


@click.command("scrub-text")
def scrub_text():
    """Scrub UTF-8 lines from stdin to stdout, one for one (try the PII rules on your own text)."""
    from ..data.pii import mask

    for line in sys.stdin:
        body = line.rstrip("\n")
        sys.stdout.write(mask(body)[0] + ("\n" if line.endswith("\n") else ""))


@click.command("forget")
@click.argument("ids", nargs=-1, required=True)
@click.option("--purge", "do_purge", is_flag=True, help="Delete the files found from the local cache and the remote.")
@click.option("--remote", default=None, help="DVC remote to purge (default: the project's default remote).")
@click.option("--cache", type=PATH, default=Path(".dvc/cache"), show_default=True)
def forget(ids, do_purge, remote, cache):
    """List the versions whose stored files hold records of these users (user ids or record ids);
    with --purge, delete those files from the local DVC cache and the remote."""
    from ..data.forget import FORGOTTEN, find, purge, record_forgotten

    if not Path("dvc.lock").is_file():
        raise click.ClickException("run this in a loraloop project (no dvc.lock here)")
    found = [v for v in find(list(ids), cache) if v.affected or v.missing]
    for v in found:
        click.echo(f"{v.label} ({v.rev[:10]}): {len(v.affected)} file(s) hold these records")
        for path in sorted(v.affected):
            click.echo(f"  {path}")
        if v.adapters:
            click.echo(f"  trained on them (retrain to remove the users from weights): {', '.join(v.adapters)}")
        if v.missing:
            click.echo(f"  not in the local cache, not checked (dvc fetch --all-tags first): {', '.join(v.missing)}")
    md5s = {md5 for v in found for md5 in v.affected.values()}
    if not md5s:
        click.echo("no stored version holds records of these ids")
        return
    if not do_purge:
        click.echo(
            f"{len(md5s)} stored file(s); rerun with --purge to delete them from the cache and the remote. "
            "Add the ids to collect.deletions so new versions leave them out."
        )
        return
    local, on_remote = purge(md5s, cache, remote)
    record_forgotten(list(ids), md5s, found)
    click.echo(
        f"purged {local} file(s) from the local cache and {on_remote} from the remote; "
        f"{FORGOTTEN} records which versions can no longer be restored (commit it)"
    )
