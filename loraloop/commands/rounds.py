"""`loraloop round new|retire|list`: declare a round from base, a round or a released version, and
take finished rounds out of the DAG into their lineage's archive (loraloop/history.py)."""

from __future__ import annotations

from pathlib import Path

import click

from ..params import NAME, RETIRED, ParamsError


@click.group("round")
def round_group():
    """Declare, retire and list a lineage's rounds."""


def params_file(ctx: click.Context) -> Path:
    return Path(ctx.find_root().obj["params"])


@round_group.command("retire")
@click.argument("round_ids", nargs=-1, required=True)
@click.pass_context
def retire(ctx, round_ids):
    """Take ROUND_IDS out of params.yaml and dvc.lock into retired/<lineage>.dvc (their models and
    data under DVC at the same paths, their metrics in git). Each round's prev must retire with it
    or before it."""
    from ..history import archive_file
    from ..history import retire as retire_rounds

    pf = params_file(ctx)
    rows = retire_rounds(pf.parent, pf, list(round_ids))
    for row in rows:
        click.echo(f"retired {row['round']} ({row['lineage']}, from {row['prev']}, adapter {row['adapter_hash'][:12]})")
    files = sorted({str(archive_file(Path("."), row["lineage"])) for row in rows})
    click.echo(
        f"record it: git add {pf.name} dvc.lock {' '.join(files)} and the .gitignore files `git status` "
        "names, then git commit; `dvc push` sends the archive. dvc repro reruns leakage, package and report "
        "(params.yaml's rounds changed)."
    )


@round_group.command("new")
@click.argument("round_id")
@click.option("--from", "source", required=True, help="base, a round id (active or retired), or release:<version>.")
@click.option("--lineage", default=None, help="The lineage (needed with --from base).")
@click.pass_context
def new(ctx, round_id, source, lineage):
    """Declare ROUND_ID in params.yaml, starting from SOURCE."""
    from ..history import add_round, bring_back, resolve_start
    from ..options import params_of

    if not NAME.match(round_id) or round_id == "base":
        raise click.BadParameter("a round id is letters, digits, '_' and '-' (e.g. tutor-r3)", param_hint="ROUND_ID")
    params = params_of(ctx)
    if round_id in params.rounds or round_id in params.retired:
        raise ParamsError(f"{round_id} is already a round here; give the new round another id")
    pf = params_file(ctx)
    lineage, spec = resolve_start(pf.parent, params, source, lineage)
    if bring_back(pf.parent, pf, params, spec.prev):
        click.echo(f"{spec.prev} unpacked from {RETIRED}/{lineage}/ to its stage paths ({RETIRED}/{lineage}.dvc)")
    add_round(pf, round_id, spec)
    params_of(ctx)  # the file still validates
    start = f" (release {spec.start.release}, adapter {spec.start.adapter_hash[:12]})" if spec.start else ""
    click.echo(f"{pf}: rounds.{round_id} = {{lineage: {lineage}, prev: {spec.prev}}}{start}; `dvc repro` runs it")


@round_group.command("list")
@click.pass_context
def list_rounds(ctx):
    """Every lineage's rounds, retired and active, each with the round it starts from."""
    from ..options import params_of

    params = params_of(ctx)
    for lineage in params.lineages:
        for round_id in params.history_of(lineage):
            r = params.round(round_id)
            click.echo(f"{lineage}\t{round_id}\t{'retired' if r.retired else 'active'}\tfrom {r.prev}")
