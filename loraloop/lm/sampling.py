"""On-policy samples of a round: the previous round's model answers train-split prompts (and the
prompts of the newest negatives), `samples_per_prompt` times each, with loraloop's sampler (hf)
or vLLM. Each sample records what made it: seed, decoding settings, engine, base and adapter."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..data.prompts import negative_prompts, prompts_from_split
from ..files import write_jsonl
from ..params import Params, SampleParams
from ..workspace import Base, Round


def generate_hf(base_dir: Path, policy: Round, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    from .generate import answer

    return answer(
        base_dir,
        policy.adapter,
        prompts,
        batch_size=sp.batch_size,
        max_new_tokens=sp.max_new_tokens,
        temperature=sp.temperature,
        top_p=sp.top_p,
        seed=seed,
        desc=desc,
    )


def generate_vllm(base_dir: Path, policy: Round, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    from .vllm_engine import generate_vllm

    print(f"{desc}: {len(prompts)} prompts", file=sys.stderr)
    return generate_vllm(base_dir, policy.adapter, policy.info["id"], prompts, sp, seed)


def sample_jobs(params: Params, r: Round) -> tuple[list[dict], int]:
    """Each prompt `samples_per_prompt` times in a row (sample_index tells the copies apart, and
    each has its own seed), and the number of distinct prompts."""
    sp = params.sample
    system_prompts = params.lineage(r.lineage).system_prompts
    prompts = prompts_from_split(r.view, "train", sp.num_prompts, f"{params.seed}:sample:{r.id}", system_prompts)
    prompts += negative_prompts(r.view, sp.max_negatives, system_prompts)
    return [{**p, "sample_index": k} for p in prompts for k in range(sp.samples_per_prompt)], len(prompts)


def run(params: Params, r: Round, base: Base, out_file: Path | None = None) -> dict:
    """Samples of round `r` from its prev round's model to out_file (default: r.samples), with the
    round's own sample keys (rounds.<round>.sample) over the section's."""
    params = params.for_round(r.id)
    sp, policy = params.sample, r.prev
    jobs, n_prompts = sample_jobs(params, r)
    t0 = time.perf_counter()
    engine = generate_vllm if sp.engine == "vllm" else generate_hf
    gen = engine(base.dir, policy, jobs, sp, params.seed, f"sample@{r.id}")
    seconds = time.perf_counter() - t0
    made = {
        "round": r.id,
        "policy": policy.info["id"],
        "base_hash": base.hash,
        "adapter_hash": policy.adapter_hash,
        "engine": sp.engine,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "max_new_tokens": sp.max_new_tokens,
    }
    rows = ({**job, "response": text, "seed": s, **made} for job, text, s in zip(jobs, gen.texts, gen.seeds))
    write_jsonl(out_file or r.samples, rows)
    return {
        "prompts": n_prompts,
        "samples": len(jobs),
        "tokens": gen.n_tokens,
        "tokens_per_s": gen.n_tokens / seconds if seconds else 0.0,
    }
