"""The `loraloop` commands around the pipeline, not stages of it: check params, try the PII
rules on text, score a filled-in A/B file, roll a release back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from .cli import PATH, params_of, say
from .params import RELEASE_NAME


@click.command("check-params")
@click.pass_context
def check_params(ctx):
    """Validate params.yaml and exit."""
    p = params_of(ctx)
    click.echo(f"{ctx.find_root().obj['params']}: ok ({len(p.rounds)} rounds: {', '.join(p.rounds)})")


@click.command("scrub-text")
def scrub_text():
    """Scrub UTF-8 lines from stdin to stdout, one for one (try the PII rules on your own text)."""
    from .pii import mask

    for line in sys.stdin:
        body = line.rstrip("\n")
        sys.stdout.write(mask(body)[0] + ("\n" if line.endswith("\n") else ""))


@click.command("ab-score")
@click.argument("file", type=PATH)
@click.option("--key", "key_file", type=PATH, default=None, help="Default: ab_key.json beside FILE.")
def ab_score(file, key_file):
    """Win rate of a round from a filled-in A/B file (preferred: A, B, tie; blank = skipped)."""
    from . import ab

    try:
        say(ab.score(file, key_file or file.parent / "ab_key.json"))
    except (ab.LabelError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group("release")
def release_group():
    """Inspect and move releases."""


def release_dir(root: Path, name: str) -> Path:
    """root/name, for a release name as params.yaml's package.name allows it (no path in it)."""
    if not RELEASE_NAME.match(name):
        raise click.BadParameter(f"{name!r} is not a release name (letters, digits, '.', '_', '-')", param_hint="NAME")
    path = root / name
    if not (path / "history.json").is_file():
        raise click.ClickException(f"{path}: no release history here (is NAME package.name?)")
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


@release_group.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="A released version (default: the one before the current).")
@click.option("--root", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@DVC_COMMIT
def release_rollback(name, to_version, root, routing, dvc_commit):
    """Point NAME's release and routing back to an earlier version and withdraw the current one
    (package will not release its adapter again until `loraloop release restore`)."""
    from . import release

    try:
        old, new = release.rollback(release_dir(root, name), routing, to_version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {old} -> {new}; {old} is withdrawn (undo with: loraloop release rollback {name} --to {old})")
    record_in_dvc(dvc_commit)


@release_group.command("restore")
@click.argument("name")
@click.argument("version")
@click.option("--root", type=PATH, default=Path("models/release"), show_default=True)
@DVC_COMMIT
def release_restore(name, version, root, dvc_commit):
    """Let package release a withdrawn VERSION's adapter again (it does not route to it: use
    `loraloop release rollback NAME --to VERSION` for that)."""
    from . import release

    try:
        release.restore(release_dir(root, name), version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {version} is no longer withdrawn; package may release it again")
    record_in_dvc(dvc_commit)
