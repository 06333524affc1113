"""The `loraloop` command. Each subcommand is defined in the module that does its work and is
imported only when it runs, so a stage runs this file and its own module's imports and no more:
exactly what its deps in dvc.yaml list (tests/test_deps.py checks that).

Every subcommand validates the whole params.yaml before it does any work, and takes its input
and output paths explicitly (the defaults are the paths dvc.yaml uses)."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import click

from .params import DataError, Params, ParamsError, load_params
from .paths import DATA, LINEAGES, MODELS

PATH = click.Path(path_type=Path)

# subcommand -> "module:command"
COMMANDS = {
    "base": "stages.base:cli",
    "collect": "stages.collect:cli",
    "scrub": "stages.scrub:cli",
    "version": "stages.version:cli",
    "sample": "stages.sample:cli",
    "score": "stages.score:cli",
    "train": "stages.train:cli",
    "eval": "stages.eval:cli",
    "package": "stages.package:cli",
    "report": "stages.report:cli",
    "view": "stages.view:cli",
    "leakage": "stages.leakage:cli",
    "check-params": "stages.tools:check_params",
    "scrub-text": "stages.tools:scrub_text",
    "ab-score": "stages.tools:ab_score",
    "release": "stages.tools:release_group",
    "route": "stages.tools:route",
    "stage-times": "stages.tools:stage_times",
    "plots": "stages.tools:plots",
    "chat": "stages.chat_cli:cli",
    "s3-local": "stages.s3_local:cli",
    "forget": "stages.forget:cli",
    "serve": "stages.serve:cli",
    "monitor": "stages.monitor:cli",
    "status": "stages.status:cli",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        t0 = time.perf_counter()
        try:
            return self._invoke(ctx)
        finally:
            record_stage_time(time.perf_counter() - t0)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ParamsError, DataError) as exc:  # a wrong round id, a leaked record: a message, not a traceback
            raise click.ClickException(str(exc)) from None
        except FileNotFoundError as exc:  # an input a stage needs is not there: name it
            if exc.filename is None:  # our own message, which names the path
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(
                f"{exc.filename}: {exc.strerror} (run the stage that makes it first, e.g. `dvc repro`)"
            ) from None


STAGE_TIMES = ".dvc/tmp/stage-times.jsonl"  # `loraloop stage-times` prints and clears it


def record_stage_time(seconds: float) -> None:
    """Under `dvc repro` (which names the stage in DVC_STAGE), append the stage's wall time."""
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if stage and root and (Path(root) / ".dvc/tmp").is_dir():
        with (Path(root) / STAGE_TIMES).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "seconds": round(seconds, 1)}) + "\n")


@click.group(cls=LazyGroup)
@click.option(
    "--params",
    "params_file",
    type=PATH,
    default=Path("params.yaml"),
    show_default=True,
    help="The params file to read.",
)
@click.pass_context
def main(ctx: click.Context, params_file: Path) -> None:
    """loraloop: conversation logs to LoRA adapters, one DVC round at a time."""
    ctx.obj = {"params": params_file}


def params_of(ctx: click.Context) -> Params:
    """params.yaml, validated (a problem in it stops the command with the key and what is wrong)."""
    return load_params(ctx.find_root().obj["params"])


def round_options(f):
    """--round and the directories a round's commands read and write (dvc.yaml's by default)."""
    f = click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)(f)
    f = click.option(
        "--data",
        "version_dir",
        type=PATH,
        default=None,
        help="The lineage's dataset view. Default: data/lineages/<lineage>",
    )(f)
    f = click.option("--rounds-dir", type=PATH, default=MODELS, show_default=True, help="Rounds' models.")(f)
    f = click.option(
        "--rounds-data",
        type=PATH,
        default=DATA,
        show_default=True,
        help="Rounds' samples, scores, pairs and eval answers.",
    )(f)
    f = click.option("--round", "round_id", required=True, help="Round id from params.yaml, e.g. tutor-r1.")(f)
    return f


def lineage_view(version_dir: Path | None, lineage: str) -> Path:
    """--data, or the lineage's view that dvc.yaml's view stage writes."""
    return version_dir if version_dir is not None else LINEAGES / lineage


def say(result) -> None:
    click.echo(json.dumps(result, ensure_ascii=False, sort_keys=True, indent=2, default=str))


if __name__ == "__main__":
    main()
