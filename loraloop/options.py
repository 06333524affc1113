"""What every command shares, the DVC stages (stages/) and the others (loraloop/commands/):
params.yaml read and validated once, the options of the round commands, the workspace they
build, printing a result, and the record of each stage's wall time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .params import Params, load_params
from .workspace import BASE, METRICS, ROUNDS, ROUNDS_DATA, Workspace

PATH = click.Path(path_type=Path)


def params_of(ctx: click.Context) -> Params:
    """params.yaml, validated (a problem in it stops the command with the key and what is wrong)."""
    return load_params(ctx.find_root().obj["params"])


def round_options(f):
    """--round and the directories a round's commands read and write (dvc.yaml's by default)."""
    f = click.option("--base", "base_dir", type=PATH, default=BASE, show_default=True)(f)
    f = click.option(
        "--data",
        "view_dir",
        type=PATH,
        default=None,
        help="The lineage's dataset view. Default: data/lineages/<lineage>",
    )(f)
    f = click.option("--rounds-dir", type=PATH, default=ROUNDS, show_default=True, help="Rounds' models.")(f)
    f = click.option(
        "--rounds-data",
        type=PATH,
        default=ROUNDS_DATA,
        show_default=True,
        help="Rounds' samples, scores, pairs and eval answers.",
    )(f)
    f = click.option("--round", "round_id", required=True, help="Round id from params.yaml, e.g. tutor-r1.")(f)
    return f


def round_workspace(
    ctx: click.Context, base_dir: Path, rounds_dir: Path, rounds_data: Path, view_dir: Path | None, metrics=METRICS
) -> Workspace:
    """The workspace a round command's options name."""
    return Workspace(params_of(ctx), base_dir, rounds_dir, rounds_data, metrics, view=view_dir)


def say(result) -> None:
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True, indent=2, default=str))


STAGE_TIMES = ".dvc/tmp/stage-times.jsonl"  # `loraloop stage-times` prints and clears it


def record_stage_time(seconds: float) -> None:
    """Under `dvc repro` (which names the stage in DVC_STAGE), append the stage's wall time and its
    process's peak resident memory."""
    import resource

    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if stage and root and (Path(root) / ".dvc/tmp").is_dir():
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        with (Path(root) / STAGE_TIMES).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "seconds": round(seconds, 3), "peak_mb": round(peak_mb)}) + "\n")
