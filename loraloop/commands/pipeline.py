"""The commands about the pipeline itself: validate params.yaml, the stage times of the last
`dvc repro`, and `dvc plots show` as a page that renders offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from ..options import PATH, STAGE_TIMES, params_of
from ..workspace import VERSION


@click.command("check-params")
@click.pass_context
def check_params(ctx):
    """Validate params.yaml, compare its characters with the data's, and exit."""
    from ..data.manifest import character_warnings
    from ..files import read_json

    p = params_of(ctx)
    lineages = "; ".join(f"{name}: {', '.join(p.rounds_of(name)) or 'no rounds'}" for name in p.lineages)
    retired = f", {len(p.retired)} retired" if p.retired else ""
    click.echo(
        f"{ctx.find_root().obj['params']}: ok ({len(p.lineages)} lineages, {len(p.rounds)} rounds{retired}; {lineages})"
    )
    manifest = VERSION / "manifest.json"
    for warning in character_warnings(p, read_json(manifest) if manifest.is_file() else None):
        click.echo(f"warning: {warning}", err=True)


@click.command("stage-times")
@click.option("--keep", is_flag=True, help="Do not clear the record after printing it.")
def stage_times(keep):
    """The wall time and peak memory of each stage the last `dvc repro` runs ran, slowest first,
    and the total time."""
    path = Path(STAGE_TIMES)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    if not rows:
        click.echo("no stage times recorded (they are recorded while `dvc repro` runs stages)")
        return
    width = max(len(r["stage"]) for r in rows)
    for r in sorted(rows, key=lambda r: -r["seconds"]):
        peak = f"  {r['peak_mb']:7,} MB peak" if "peak_mb" in r else ""
        click.echo(f"{r['stage']:<{width}}  {r['seconds']:7.1f} s{peak}")
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
    from ..judge.charts import offline_template

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
    click.echo(f"{(out / 'index.html').resolve()} (renders offline)")
