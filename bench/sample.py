"""Tokens/s of loraloop's batched sampler against one-prompt-at-a-time `generate`, same prompts.

    python bench/sample.py [--base models/base] [--prompts 64] [--max-new-tokens 128]

Needs a materialized base and data version (`make demo`). Both sides decode greedily with the same
max_new_tokens from the same prompts (train split, the tutor system prompt, cut at a random
assistant turn as sample@rN cuts them), and the greedy texts are compared, so the speed is not
bought with different output; the ratio is tokens/s batched over tokens/s one at a time. Both
sides get a short warm-up first, so neither pays the process's one-time costs in its timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.chat import prompt_ids  # noqa: E402
from stages.generate import generate  # noqa: E402
from stages.model import load_base, load_tokenizer  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.prompts import prompts_from_split  # noqa: E402


def one_at_a_time(model, tok, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], int]:
    texts, n = [], 0
    with torch.inference_mode():
        for p in tqdm(prompts, desc="one at a time", unit="prompt", disable=len(prompts) < 8):
            ids = torch.tensor([p], device=model.device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = out[0, ids.shape[1] :]
            n += len(new)
            texts.append(tok.decode(new, skip_special_tokens=True).strip())
    return texts, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=ROOT / "models/base")
    ap.add_argument("--lineage", default="tutor")
    ap.add_argument("--data", type=Path, default=None, help="Default: data/lineages/<lineage>")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    data = args.data or ROOT / "data/lineages" / args.lineage
    convs = prompts_from_split(data, "train", args.prompts, "bench", params.lineage(args.lineage).system_prompts)
    tok = load_tokenizer(args.base)
    model = load_base(args.base)
    prompts = [prompt_ids(tok, c["messages"]) for c in convs]

    # Warm both sides up first (thread pools, kernels, first touches of the weights), so neither
    # pays the process's one-time costs inside its timing.
    generate(
        model,
        tok,
        prompts[:8],
        batch_size=8,
        max_new_tokens=8,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        desc="warm-up",
        progress=False,
    )
    one_at_a_time(model, tok, prompts[:2], 8)

    t0 = time.perf_counter()
    gen = generate(
        model,
        tok,
        prompts,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        desc="batched",
    )
    n_batched = gen.n_tokens
    batched = n_batched / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    texts, n_single = one_at_a_time(model, tok, prompts, args.max_new_tokens)
    single = n_single / (time.perf_counter() - t0)
    same = sum(a == b for a, b in zip(gen.texts, texts))
    print(
        f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, "
        f"device={model.device}, threads={torch.get_num_threads()}"
    )
    print(f"same greedy text batched and one at a time: {same}/{len(prompts)}")
    print(f"loraloop batched sampler: {batched:,.1f} tokens/s ({n_batched} tokens)")
    print(f"one prompt at a time:     {single:,.1f} tokens/s ({n_single} tokens)")
    print(f"ratio: {batched / single:.1f}x")


if __name__ == "__main__":
    main()
