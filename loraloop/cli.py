"""The `loraloop` command. A DVC stage's subcommand lives in stages/<stage>.py, every other one
in loraloop/commands/; each is imported only when it runs, so a stage runs this file and its own
module's imports and no more: exactly what its code/<kind>.json lists, the one code dep dvc.yaml
gives it (loraloop/code_deps.py; tests/test_deps.py checks it). Nothing imports this module.

Every subcommand validates the whole params.yaml before it does any work, and takes its input
and output paths explicitly (the defaults are the paths dvc.yaml uses)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import click

from .options import PATH, record_stage_time
from .params import DataError, ParamsError

# subcommand -> "module:command"
STAGES = {name: f"stages.{name}:cli" for name in ("base", "collect", "scrub", "version", "view")}
STAGES.update({name: f"stages.{name}:cli" for name in ("judge", "persona", "sample", "score", "critic", "train")})
STAGES.update({name: f"stages.{name}:cli" for name in ("eval", "leakage")})
STAGES.update({name: f"stages.{name}:cli" for name in ("package", "report", "code", "params")})
COMMANDS = {
    **STAGES,
    "check-params": "loraloop.commands.pipeline:check_params",
    "stage-times": "loraloop.commands.pipeline:stage_times",
    "plots": "loraloop.commands.pipeline:plots",
    "scrub-text": "loraloop.commands.data:scrub_text",
    "forget": "loraloop.commands.data:forget",
    "ab-score": "loraloop.commands.judge:ab_score",
    "release": "loraloop.commands.release:release_group",
    "round": "loraloop.commands.rounds:round_group",
    "route": "loraloop.commands.release:route",
    "serve": "loraloop.commands.serve:serve",
    "monitor": "loraloop.commands.serve:monitor",
    "status": "loraloop.commands.serve:status",
    "chat": "loraloop.commands.serve:chat",
    "s3-local": "loraloop.commands.s3_local:cli",
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
        except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            if exc.filename is None:  # a path option naming the wrong kind of thing: name it
                raise
            raise click.ClickException(f"{exc.filename}: {exc.strerror} (check the path options)") from None


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


if __name__ == "__main__":
    main()
