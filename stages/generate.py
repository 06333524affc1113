"""Batched generation: prompts sorted by length and left-padded, so a batch wastes little compute."""

from __future__ import annotations

import torch
from tqdm import tqdm


@torch.inference_mode()
def generate(model, tok, prompts: list[list[int]], *, batch_size: int, max_new_tokens: int,
             temperature: float, top_p: float, seed: int, desc: str,
             progress: bool = True) -> tuple[list[str], int]:
    """Completions in the order of `prompts`, and the number of tokens generated.
    The seed is reset per batch so a batch's output depends only on its own prompts."""
    model.eval()
    dev = next(model.parameters()).device
    pad = tok.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    texts: list[str | None] = [None] * len(prompts)
    n_tokens = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=dev)
        attn = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=dev)
        torch.manual_seed(seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id, **sampling)
        new = out[:, width:]
        for row, i in enumerate(idx):
            toks = new[row]
            ended = (toks == tok.eos_token_id).nonzero()
            length = int(ended[0]) + 1 if len(ended) else len(toks)
            n_tokens += length
            texts[i] = tok.decode(toks[:length], skip_special_tokens=True).strip()
        bar.update(len(idx))
        bar.set_postfix(tokens=n_tokens)
    bar.close()
    return texts, n_tokens


def answer(base_dir, round_dir, prompts: list[dict], **settings) -> tuple[list[str], int]:
    """A round's model (base + its adapter) answering prompt conversations; `settings` as generate()."""
    from .chat import prompt_ids
    from .model import load_round, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_round(base_dir, round_dir)
    return generate(model, tok, [prompt_ids(tok, p["messages"]) for p in prompts], **settings)
