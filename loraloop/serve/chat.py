"""`loraloop chat`: a terminal conversation with base + adapter, to try a release or a round."""

from __future__ import annotations

import sys

from ..data.prompts import in_character
from ..lm.chat import prompt_ids
from ..lm.cpu_matmul import cpu_linears
from ..lm.generate import generate
from ..release.registry import current
from ..workspace import RELEASES, Workspace


class ChatError(RuntimeError):
    """Nothing to chat with: no such release, round or character."""


def load_chat_model(ws: Workspace, release_name: str | None, round_id: str | None):
    """(model, system prompts by character, label) of a release's stable version or a round."""
    from ..lm.model import load_base, load_model

    params = ws.params
    if release_name is not None:
        rel = RELEASES / release_name
        meta = current(rel)
        if meta is None:
            raise ChatError(f"{rel}: no release yet (run `dvc repro package`)")
        from peft import PeftModel

        prompts = meta.get("system_prompts") or params.lineage_of_release(release_name).system_prompts
        return PeftModel.from_pretrained(load_base(ws.base.dir), rel / "adapter"), prompts, meta["version"]
    if round_id != "base":
        r = ws.round(round_id)
        return load_model(ws.base.dir, r.adapter), params.lineage(r.lineage).system_prompts, round_id
    prompts = {}  # the base speaks as any character: the first lineage's prompt for each
    for name in reversed(list(params.lineages)):
        prompts.update(params.lineage(name).system_prompts)
    return load_model(ws.base.dir), prompts, round_id


def run(ws: Workspace, release_name, round_id, character, max_new_tokens: int, temperature: float) -> None:
    """A conversation on the terminal: a line in, the reply out, until an empty line or EOF."""
    from ..lm.model import load_tokenizer

    model, prompts, label = load_chat_model(ws, release_name, round_id)
    character = character or min(prompts, default=None)
    if character is not None and character not in prompts:
        raise ChatError(f"{label} has no character {character!r} (has {', '.join(sorted(prompts))})")
    tok = load_tokenizer(ws.base.dir)
    params, interactive = ws.params, sys.stdin.isatty()
    print(f"chatting with {label} as {character!r}; an empty line or Ctrl-D ends", file=sys.stderr)
    # Weights packed for decode once for the conversation, not per turn (see cpu_linears).
    with cpu_linears(model):
        history: list[dict] = []
        turn = 0
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
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
            print(f"{character or 'assistant'}> {reply}", flush=True)
            turn += 1
