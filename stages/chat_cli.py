"""`loraloop chat`: a terminal conversation with base + adapter, to try a release or a round."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .chat import prompt_ids, with_system
from .generate import generate
from .params import Params
from .prompts import system_prompt_for
from .release import current


def _load(params: Params, base_dir: Path, release_name: str | None, round_id: str | None):
    from .model import load_base, load_round

    if release_name is not None:
        rel = Path("models/release") / release_name
        meta = current(rel)
        if meta is None:
            raise click.ClickException(f"{rel}: no release yet (run `dvc repro package`)")
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(base_dir), rel / "adapter"), meta["characters"], meta["version"]
    rounds_dir = Path("models/rounds")
    if round_id != "base":
        params.round(round_id)
    return load_round(base_dir, rounds_dir / round_id), sorted(params.system_prompts), round_id


def run(params: Params, base_dir: Path, release_name, round_id, character, max_new_tokens, temperature) -> None:
    from .model import load_tokenizer

    model, characters, label = _load(params, base_dir, release_name, round_id)
    character = character or (characters[0] if characters else None)
    system = system_prompt_for(params.system_prompts, character) if character else None
    tok = load_tokenizer(base_dir)
    interactive = sys.stdin.isatty()
    click.echo(f"chatting with {label} as {character!r}; an empty line or Ctrl-D ends", err=True)
    history: list[dict] = []
    turn = 0
    while True:
        if interactive:
            click.echo("you> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        history.append({"role": "user", "content": line.strip()})
        (reply,) = generate(model, tok, [prompt_ids(tok, with_system(system, history))], batch_size=1,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.95,
                            seed=params.seed + turn, desc="", progress=False).texts
        history.append({"role": "assistant", "content": reply})
        click.echo(f"{character or 'assistant'}> {reply}")
        turn += 1
