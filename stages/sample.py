"""sample@rN: on-policy completions from the previous round's model on train-split prompts."""

from __future__ import annotations

import time
from pathlib import Path

from .generate import answer
from .io import read_json, write_jsonl
from .model import round_info
from .params import Params
from .prompts import prompts_from_split


def run(params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path, out_file: Path) -> dict:
    sp = params.sample
    prompts = prompts_from_split(version_dir, "train", sp.num_prompts, f"{params.seed}:sample:{round_id}",
                                 params.system_prompts)
    prev = round_info(prev_dir)
    seed = params.seed
    t0 = time.perf_counter()
    texts, n_tokens = answer(
        base_dir, prev_dir, prompts, batch_size=sp.batch_size, max_new_tokens=sp.max_new_tokens,
        temperature=sp.temperature, top_p=sp.top_p, seed=seed, desc=f"sample@{round_id}",
    )
    seconds = time.perf_counter() - t0
    base_hash = read_json(base_dir / "base.json")["hash"]
    settings = {"seed": seed, "temperature": sp.temperature, "top_p": sp.top_p, "max_new_tokens": sp.max_new_tokens}
    write_jsonl(out_file, (
        {**p, "response": text, "round": round_id, "policy": prev["id"], "base_hash": base_hash,
         "adapter_hash": prev.get("adapter_hash"), **settings}
        for p, text in zip(prompts, texts)
    ))
    return {"prompts": len(prompts), "tokens": n_tokens, "tokens_per_s": n_tokens / seconds if seconds else 0.0}
