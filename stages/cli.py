"""The `loraloop` command: one subcommand per DVC stage, plus a few tools around them.

Every subcommand validates the whole params.yaml before it does any work, and takes its input
and output paths explicitly (the defaults are the paths dvc.yaml uses)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .params import ParamsError, load_params

PATH = click.Path(path_type=Path)


def _params(ctx: click.Context):
    try:
        return load_params(ctx.obj["params"])
    except ParamsError as exc:
        raise click.ClickException(str(exc)) from None


def _say(result) -> None:
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True, indent=2, default=str))


@click.group()
@click.option("--params", "params_file", type=PATH, default=Path("params.yaml"), show_default=True,
              help="The params file to read.")
@click.pass_context
def main(ctx: click.Context, params_file: Path) -> None:
    """loraloop: conversation logs to LoRA adapters, one DVC round at a time."""
    ctx.obj = {"params": params_file}


@main.command("check-params")
@click.pass_context
def check_params(ctx):
    """Validate params.yaml and exit."""
    p = _params(ctx)
    click.echo(f"{ctx.obj['params']}: ok ({len(p.rounds)} rounds: {', '.join(p.rounds)})")


@main.command()
@click.option("--out", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--rounds-dir", type=PATH, default=Path("models/rounds"), show_default=True)
@click.pass_context
def base(ctx, out, rounds_dir):
    """Materialize the base model as safetensors, pinned by content hash."""
    from . import base as stage

    info = stage.run(_params(ctx).base, out, rounds_dir)
    _say({k: v for k, v in info.items() if k != "files"})


@main.command()
@click.option("--out", type=PATH, default=Path("data/collected"), show_default=True)
@click.option("--source", type=PATH, default=None,
              help="Ingest this one file (or datasets directory) instead of params.yaml's sources; needs no params.yaml.")
@click.option("--kind", type=click.Choice(["conversations", "feedback", "gold", "anchor"]), default="conversations",
              show_default=True, help="With --source: what the file holds.")
@click.option("--character-id", default=None, help="With --source: character for records that name none.")
@click.option("--no-opt-in-required", is_flag=True, help="With --source: accept records without opt_in: true.")
@click.pass_context
def collect(ctx, out, source, kind, character_id, no_opt_in_required):
    """Normalize raw records; reject malformed ones with a reason, file and line.

    Exits 0 whenever it ran, whatever it rejected: see OUT/counts.json and OUT/rejects.jsonl."""
    from . import collect as stage
    from .params import CollectParams, SourceParams

    if source is not None:
        params = CollectParams(sources=[SourceParams(path=str(source), kind=kind, character_id=character_id,
                                                     require_opt_in=not no_opt_in_required)])
    else:
        params = _params(ctx).collect
    try:
        counts = stage.run(params, out)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _say({k: counts[k] for k in ("read", "kept", "rejected", "reasons")})


@main.command()
@click.option("--in", "in_file", type=PATH, default=Path("data/collected/records.jsonl"), show_default=True)
@click.option("--out", type=PATH, default=Path("data/scrubbed"), show_default=True)
@click.option("--metrics", type=PATH, default=Path("metrics/data.json"), show_default=True)
@click.pass_context
def scrub(ctx, in_file, out, metrics):
    """Mask personal data, apply quality rules, drop duplicates, partition by character."""
    from . import scrub as stage

    try:
        stats = stage.run(_params(ctx).scrub, in_file, out, metrics, collect_counts=in_file.parent / "counts.json")
    except stage.CharacterConflict as exc:
        raise click.ClickException(str(exc)) from None
    _say({k: stats[k] for k in ("read", "kept", "rejected", "reasons", "pii_masked")})


@main.command("scrub-text")
def scrub_text():
    """Scrub UTF-8 lines from stdin to stdout, one for one (try the PII rules on your own text)."""
    from .pii import mask

    for line in sys.stdin:
        body = line.rstrip("\n")
        sys.stdout.write(mask(body)[0] + ("\n" if line.endswith("\n") else ""))


@main.command()
@click.option("--in", "in_dir", type=PATH, default=Path("data/scrubbed"), show_default=True)
@click.option("--out", type=PATH, default=Path("data/version"), show_default=True)
@click.option("--metrics", type=PATH, default=Path("metrics/data.json"), show_default=True)
@click.option("--collect-rejects", type=PATH, default=Path("data/collected/rejects.jsonl"), show_default=True)
@click.pass_context
def version(ctx, in_dir, out, metrics, collect_rejects):
    """Split into train/eval/dpo per character; write the manifest and the changelog."""
    from . import version as stage

    manifest = stage.run(_params(ctx).version, in_dir, out, data_metrics=metrics,
                         reject_files=[collect_rejects, in_dir / "rejects.jsonl"])
    _say(manifest["records"])


def _round_options(f):
    f = click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)(f)
    f = click.option("--data", "version_dir", type=PATH, default=Path("data/version"), show_default=True)(f)
    f = click.option("--rounds-dir", type=PATH, default=Path("models/rounds"), show_default=True)(f)
    f = click.option("--round", "round_id", required=True, help="Round id from params.yaml, e.g. r1.")(f)
    return f


@main.command()
@_round_options
@click.option("--out", type=PATH, default=None, help="Default: data/rounds/<round>/samples.jsonl")
@click.pass_context
def sample(ctx, round_id, rounds_dir, version_dir, base_dir, out):
    """Sample on-policy completions from the previous round's model."""
    from . import sample as stage

    p = _params(ctx)
    prev = p.round(round_id).prev
    out = out or Path("data/rounds") / round_id / "samples.jsonl"
    _say(stage.run(p, round_id, base_dir, version_dir, rounds_dir / prev, out))


@main.command()
@click.option("--round", "round_id", required=True)
@click.option("--samples", type=PATH, default=None, help="Default: data/rounds/<round>/samples.jsonl")
@click.option("--out", type=PATH, default=None, help="Default: data/rounds/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: data/rounds/<round>/pairs.jsonl")
@click.pass_context
def score(ctx, round_id, samples, out, pairs):
    """Score samples with the rules; mark the best share for training; pair best vs worst."""
    from . import score as stage

    p = _params(ctx)
    p.round(round_id)
    d = Path("data/rounds") / round_id
    _say(stage.run(p.score, samples or d / "samples.jsonl", out or d / "scored.jsonl", pairs or d / "pairs.jsonl"))


@main.command()
@_round_options
@click.option("--scored", type=PATH, default=None, help="Default: data/rounds/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: data/rounds/<round>/pairs.jsonl")
@click.option("--checkpoints", type=PATH, default=None, help="Default: checkpoints/<round> (untracked)")
@click.pass_context
def train(ctx, round_id, rounds_dir, version_dir, base_dir, scored, pairs, checkpoints):
    """Train the round's LoRA adapter (under `accelerate launch` when train.launcher says so)."""
    p = _params(ctx)
    prev = p.round(round_id).prev
    if p.train.launcher == "accelerate" and not os.environ.get(LAUNCHED):
        sys.exit(_accelerate_launch(p.train, sys.argv[1:]))
    from . import train as stage

    d = Path("data/rounds") / round_id
    result = stage.run(p, round_id, base_dir, version_dir, rounds_dir / prev, scored or d / "scored.jsonl",
                       rounds_dir / round_id, pairs or d / "pairs.jsonl", checkpoints or Path("checkpoints") / round_id)
    if result:  # only the main process reports
        _say(result)


LAUNCHED = "LORALOOP_LAUNCHED"


def _accelerate_launch(tp, argv: list[str]) -> int:
    """This same command again under `accelerate launch`, with the config file from params."""
    import subprocess

    config = Path(tp.accelerate_config)
    if not config.is_file():
        raise click.ClickException(f"train.accelerate_config: {config} not found (see configs/accelerate/)")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(tp.num_processes), "-m", "stages.cli", *argv]
    click.echo(f"launching: {' '.join(cmd)}", err=True)
    return subprocess.call(cmd, env={**os.environ, LAUNCHED: "1"})


@main.command("eval")
@_round_options
@click.option("--metrics-dir", type=PATH, default=Path("metrics"), show_default=True)
@click.pass_context
def eval_(ctx, round_id, rounds_dir, version_dir, base_dir, metrics_dir):
    """Evaluate a round (or `--round base`) on the eval split."""
    from . import eval as stage

    p = _params(ctx)
    prev = None if round_id == "base" else p.round(round_id).prev
    result = stage.run(
        p, round_id, base_dir, version_dir, rounds_dir / round_id,
        prev_metrics=metrics_dir / f"eval_{prev}.json" if prev else None,
        base_metrics=metrics_dir / "eval_base.json" if prev else None,
        out_file=metrics_dir / f"eval_{round_id}.json",
        samples_file=Path("data/rounds") / round_id / "eval_samples.jsonl",
        prev_samples=Path("data/rounds") / prev / "eval_samples.jsonl" if prev else None,
    )
    _say(result)


@main.command()
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--rounds-dir", type=PATH, default=Path("models/rounds"), show_default=True)
@click.option("--metrics-dir", type=PATH, default=Path("metrics"), show_default=True)
@click.option("--data", "version_dir", type=PATH, default=Path("data/version"), show_default=True)
@click.option("--out", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@click.option("--report", "report_file", type=PATH, default=Path("reports/package.json"), show_default=True)
@click.pass_context
def package(ctx, base_dir, rounds_dir, metrics_dir, version_dir, out, routing, report_file):
    """Release the latest round that passed its gates and beats the current release."""
    from . import package as stage

    _say(stage.run(_params(ctx), base_dir, rounds_dir, metrics_dir, version_dir, metrics_dir / "data.json",
                   out, routing, report_file))


@main.command()
@click.option("--metrics-dir", type=PATH, default=Path("metrics"), show_default=True)
@click.option("--rounds-dir", type=PATH, default=Path("models/rounds"), show_default=True)
@click.option("--plots-dir", type=PATH, default=None, help="Also write the plot files here (the DVC stage does).")
@click.pass_context
def report(ctx, metrics_dir, rounds_dir, plots_dir):
    """Print the per-round evaluation table."""
    from .report import table, write_plots

    p = _params(ctx)
    if plots_dir is not None:
        write_plots(p, metrics_dir, rounds_dir, plots_dir)
    click.echo(table(p, metrics_dir))


@main.command("ab-score")
@click.argument("file", type=PATH)
@click.option("--key", "key_file", type=PATH, default=None, help="Default: ab_key.json beside FILE.")
def ab_score(file, key_file):
    """Win rate of a round from a filled-in A/B file (preferred: A, B, tie; blank = skipped)."""
    from . import ab

    try:
        _say(ab.score(file, key_file or file.parent / "ab_key.json"))
    except (ab.LabelError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group("release")
def release_group():
    """Inspect and move releases."""


@release_group.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", default=None, help="Any released version (default: the one before the current).")
@click.option("--root", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@click.option("--dvc-commit/--no-dvc-commit", default=True, show_default=True,
              help="Record the change in dvc.lock (`dvc commit package`) when run inside a DVC project.")
def release_rollback(name, to_version, root, routing, dvc_commit):
    """Point NAME's release and routing back to an earlier version (recorded, reversible)."""
    import subprocess

    from . import release

    try:
        old, new = release.rollback(root / name, routing, to_version)
    except (RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {old} -> {new} (undo with: loraloop release rollback {name} --to {old})")
    if dvc_commit and Path("dvc.yaml").is_file():
        subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", "package"], check=True)


@main.command()
@click.option("--release", "release_name", default=None, help="Chat with a release (models/release/NAME).")
@click.option("--round", "round_id", default=None, help="Chat with a round's adapter (or `base`).")
@click.option("--character", default=None, help="Character whose system prompt to use (default: the release's first).")
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.pass_context
def chat(ctx, release_name, round_id, character, base_dir, max_new_tokens, temperature):
    """Talk to base + adapter in the terminal (empty line or Ctrl-D ends)."""
    from .chat_cli import run

    if (release_name is None) == (round_id is None):
        raise click.UsageError("give exactly one of --release NAME or --round rN")
    run(_params(ctx), base_dir, release_name, round_id, character, max_new_tokens, temperature)


@main.group("s3-local")
def s3_local_group():
    """An S3 server on loopback (moto) as this project's DVC remote, to try push/pull without AWS."""


@s3_local_group.command("start")
@click.option("--port", default=5555, show_default=True)
@click.option("--bucket", default="loraloop-artifacts", show_default=True)
def s3_local_start(port, bucket):
    """Start the server and make it the default remote in .dvc/config.local (untracked)."""
    from . import s3_local

    url = s3_local.start(port, bucket)
    click.echo(f"S3 on {url}, bucket {bucket}; remote 'loopback' is the default in .dvc/config.local.\n"
               "Try: dvc push && dvc pull.  Stop: loraloop s3-local stop "
               "(then `dvc remote default --local --unset` to go back to the tracked remote)")


@s3_local_group.command("stop")
def s3_local_stop():
    """Stop the loopback S3 server (its contents are in memory and are lost)."""
    from . import s3_local

    click.echo("stopped" if s3_local.stop() else "not running")


if __name__ == "__main__":
    main()
