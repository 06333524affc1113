"""`loraloop release promote|rollback|restore` (move releases, recorded in dvc.lock) and
`loraloop route` (which version serves a user)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from ..options import PATH, params_of
from ..params import RELEASE_NAME
from ..workspace import PACKAGE_REPORT, RELEASES, ROUTING


@click.group("release")
def release_group():
    """Inspect and move releases."""


def release_dir(root: Path, name: str) -> Path:
    """root/name, for a release name as params.yaml's lineages.<name>.release allows it (no path in it)."""
    if not RELEASE_NAME.match(name):
        raise click.BadParameter(f"{name!r} is not a release name (letters, digits, '.', '_', '-')", param_hint="NAME")
    path = root / name
    if not (path / "history.json").is_file():
        raise click.ClickException(f"{path}: no release history here (is NAME a lineage's release?)")
    return path


def record_in_dvc(dvc_commit: bool) -> None:
    """The changed release directory into dvc.lock (`dvc commit package`) inside a DVC project, so
    the next `dvc repro` keeps it and `git commit` + `dvc push` share it."""
    if dvc_commit and Path("dvc.yaml").is_file():
        subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", "package"], check=True)


DVC_COMMIT = click.option(
    "--dvc-commit/--no-dvc-commit",
    default=True,
    show_default=True,
    help="Record the change in dvc.lock (`dvc commit package`) when run inside a DVC project.",
)


@release_group.command("promote")
@click.argument("name")
@click.option("--share", type=float, required=True, help="Share of users on it: (0, 1); 1 makes it stable.")
@click.option("--version", "version", default=None, help="A released version (default: the newest).")
@click.option("--root", type=PATH, default=RELEASES, show_default=True)
@click.option("--routing", type=PATH, default=ROUTING, show_default=True)
@DVC_COMMIT
def release_promote(name, share, version, root, routing, dvc_commit):
    """Serve NAME's newest released version to a share of users (canary), or to all (--share 1)."""
    from ..release import registry

    rel = release_dir(root, name)
    try:
        version = registry.promote(rel, routing, share, version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    ro = registry.rollout(rel)
    shown = "stable" if ro["stable"] == version else f"canary for {ro['canary_share']:.0%} (stable: {ro['stable']})"
    click.echo(f"{name}: {version} is {shown} (back with: loraloop release rollback {name})")
    record_in_dvc(dvc_commit)


@release_group.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="A released version (default: the previous stable).")
@click.option("--root", type=PATH, default=RELEASES, show_default=True)
@click.option("--routing", type=PATH, default=ROUTING, show_default=True)
@DVC_COMMIT
def release_rollback(name, to_version, root, routing, dvc_commit):
    """Back to the previous stable: drop the canary, or with none, route to the stable before the
    current one. The version left is withdrawn (package will not release its adapter again until
    `loraloop release restore`)."""
    from ..release import registry

    try:
        old, new = registry.rollback(release_dir(root, name), routing, to_version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {old} -> {new}; {old} is withdrawn (undo with: loraloop release rollback {name} --to {old})")
    record_in_dvc(dvc_commit)


@release_group.command("restore")
@click.argument("name")
@click.argument("version")
@click.option("--root", type=PATH, default=RELEASES, show_default=True)
@DVC_COMMIT
def release_restore(name, version, root, dvc_commit):
    """Let package release a withdrawn VERSION's adapter again (it does not route to it: use
    `loraloop release rollback NAME --to VERSION` for that)."""
    from ..release import registry

    try:
        registry.restore(release_dir(root, name), version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {version} is no longer withdrawn; package may release it again")
    record_in_dvc(dvc_commit)


@click.command("route")
@click.argument("route_id", metavar="CHARACTER")
@click.option("--user", "user_id", required=True, help="The user's id: the same user always gets the same version.")
@click.option("--routing", type=PATH, default=ROUTING, show_default=True)
@click.option("--report", "report_file", type=PATH, default=PACKAGE_REPORT, show_default=True)
@click.pass_context
def route(ctx, route_id, user_id, routing, report_file):
    """The version and adapter serving USER as CHARACTER (a route id in routing.json)."""
    from ..files import read_json
    from ..release.routing import missing_route
    from ..release.routing import route as route_of

    table = read_json(routing)
    if route_id not in table:
        decisions = read_json(report_file) if report_file.is_file() else {}
        # A serving host may hold routing.json alone.
        params = params_of(ctx) if Path(ctx.find_root().obj["params"]).is_file() else None
        raise click.ClickException(missing_route(route_id, table, params, decisions))
    entry = route_of(table, route_id, user_id)
    click.echo(f"{entry['version']}\t{entry['adapter']}")
