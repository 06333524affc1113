"""`loraloop chat`: a terminal conversation with base + adapter, to try a release or a round."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .chat import prompt_ids
from .cli import PATH, params_of
from .generate import cpu_linears, generate
from .params import Params
from .paths import MODELS
from .prompts import in_character
from .release import current


def _load(params: Params, base_dir: Path, release_name: str | None, round_id: str | None):
    from .model import load_base, load_round

    if release_name is not None:
        rel = Path("models/release") / release_name
        meta = current(rel)
        if meta is None:
            raise click.ClickException(f"{rel}: no release yet (run `dvc repro package`)")
        from peft import PeftModel

        prompts = meta.get("system_prompts") or params.lineage_of_release(release_name).system_prompts
        return PeftModel.from_pretrained(load_base(base_dir), rel / "adapter"), prompts, meta["version"]
    if round_id != "base":
        return load_round(base_dir, MODELS / round_id), params.lineage_of(round_id).system_prompts, round_id
    prompts = {}  # the base speaks as any character: the first lineage's prompt for each
    for name in reversed(list(params.lineages)):
        prompts.update(params.lineage(name).system_prompts)
    return load_round(base_dir, MODELS / round_id), prompts, round_id


def run(params: Params, base_dir: Path, release_name, round_id, character, max_new_tokens, temperature) -> None:
    from .model import load_tokenizer

    model, prompts, label = _load(params, base_dir, release_name, round_id)
    character = character or min(prompts, default=None)
    if character is not None and character not in prompts:
        raise click.ClickException(f"{label} has no character {character!r} (has {', '.join(sorted(prompts))})")
    tok = load_tokenizer(base_dir)
    interactive = sys.stdin.isatty()
    click.echo(f"chatting with {label} as {character!r}; an empty line or Ctrl-D ends", err=True)
    # Weights packed for decode once for the conversation, not per turn (see cpu_linears).
    with cpu_linears(model):
        history: list[dict] = []
        turn = 0
        while True:
            if interactive:
                click.echo("you> ", nl=False, err=True)
            line = sys.stdin.readline()
            if not line or not line.strip():
                break
            history.append({"role": "user", "content": line.strip()})
            messages = in_character(prompts, character, history) if character else history
            (reply,) = generate(
                model,
                tok,
                [prompt_ids(tok, messages)],
                batch_size=1,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=0.95,
                seed=params.seed + turn,
                desc="",
                progress=False,
            ).texts
            history.append({"role": "assistant", "content": reply})
            click.echo(f"{character or 'assistant'}> {reply}")
            turn += 1


@click.command()
@click.option("--release", "release_name", default=None, help="Chat with a release (models/release/NAME).")
@click.option("--round", "round_id", default=None, help="Chat with a round's adapter (or `base`).")
@click.option("--character", default=None, help="Character whose system prompt to use (default: the release's first).")
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.pass_context
def cli(ctx, release_name, round_id, character, base_dir, max_new_tokens, temperature):
    """Talk to base + adapter in the terminal (empty line or Ctrl-D ends)."""
    if (release_name is None) == (round_id is None):
        raise click.UsageError("give exactly one of --release NAME or --round rN")
    run(params_of(ctx), base_dir, release_name, round_id, character, max_new_tokens, temperature)
