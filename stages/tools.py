"""The `loraloop` commands around the pipeline, not stages of it: check params, try the PII
rules on text, score a filled-in A/B file, promote and roll back releases, route a user."""

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
    lineages = "; ".join(f"{name}: {', '.join(p.rounds_of(name)) or 'no rounds'}" for name in p.lineages)
    click.echo(f"{ctx.find_root().obj['params']}: ok ({len(p.lineages)} lineages, {len(p.rounds)} rounds; {lineages})")


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
@click.option("--root", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@DVC_COMMIT
def release_promote(name, share, version, root, routing, dvc_commit):
    """Serve NAME's newest released version to a share of users (canary), or to all (--share 1)."""
    from . import release

    rel = release_dir(root, name)
    try:
        version = release.promote(rel, routing, share, version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    ro = release.rollout(rel)
    shown = "stable" if ro["stable"] == version else f"canary for {ro['canary_share']:.0%} (stable: {ro['stable']})"
    click.echo(f"{name}: {version} is {shown} (back with: loraloop release rollback {name})")
    record_in_dvc(dvc_commit)


@release_group.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="A released version (default: the previous stable).")
@click.option("--root", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@DVC_COMMIT
def release_rollback(name, to_version, root, routing, dvc_commit):
    """Back to the previous stable: drop the canary, or with none, route to the stable before the
    current one. The version left is withdrawn (package will not release its adapter again until
    `loraloop release restore`)."""
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


@click.command("route")
@click.argument("route_id", metavar="CHARACTER")
@click.option("--user", "user_id", required=True, help="The user's id: the same user always gets the same version.")
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
def route(route_id, user_id, routing):
    """The version and adapter serving USER as CHARACTER (a route id in routing.json)."""
    from . import release
    from .io import read_json

    try:
        entry = release.route(read_json(routing), route_id, user_id)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    click.echo(f"{entry['version']}\t{entry['adapter']}")


@click.command("stage-times")
@click.option("--keep", is_flag=True, help="Do not clear the record after printing it.")
def stage_times(keep):
    """The wall time of each stage the last `dvc repro` runs ran, slowest first, and the total."""
    import json

    from .cli import STAGE_TIMES

    path = Path(STAGE_TIMES)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    if not rows:
        click.echo("no stage times recorded (they are recorded while `dvc repro` runs stages)")
        return
    width = max(len(r["stage"]) for r in rows)
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        click.echo(f"{r['stage']:<{width}}  {r['seconds']:7.1f} s")
    click.echo(f"{'all stages':<{width}}  {sum(r['seconds'] for r in rows):7.1f} s")
    if not keep:
        path.unlink()


@click.command("plots")
@click.option("--out", type=PATH, default=Path("dvc_plots"), show_default=True, help="Where the page goes.")
@click.option(
    "--template", type=PATH, default=Path(".dvc/tmp/offline_plots.html"), show_default=True, help="Template cache."
)
@click.argument("targets", nargs=-1)
def plots(out, template, targets):
    """`dvc plots show` with Vega inlined, so the page renders without network (TARGETS: as dvc's)."""
    from .charts import offline_template

    offline_template(template)
    cmd = [
        sys.executable,
        "-m",
        "dvc",
        "plots",
        "show",
        "--html-template",
        str(template.resolve()),
        "--out",
        str(out),
        *targets,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed:\n{res.stderr.strip() or res.stdout.strip()}")
    click.echo(f"{out / 'index.html'} (renders offline)")
