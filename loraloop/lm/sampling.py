"""On-policy samples of a round: the previous round's model answers train-split prompts (and the
prompts of the newest negatives), `samples_per_prompt` times each, with loraloop's sampler (hf)
or vLLM. Each sample records what made it: seed, decoding settings, engine, base and adapter."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..data.prompts import negative_prompts, prompts_from_split
from ..files import write_jsonl
from ..params import Params, SampleParams
from ..workspace import Base, Round

if TYPE_CHECKING:
    from .generate import Generation

CHUNK = 2048  # samples the hf engine makes and writes at a time: a round's memory is bounded by it


def heads_of(policy: Round, sp: SampleParams) -> Path | None:
    """The policy's multi-token heads when this sampling drafts with them (sample.speculative):
    `on` wherever the policy has heads; `auto` where it has them, prompts go one at a time
    (batch_size 1) and a GPU runs them: at larger batches the batched sampler is faster, and on a
    CPU drafting did not pay (README: Multi-token heads). Never with vLLM (its own drafter)."""
    from .mtp import HEADS_FILE

    path = Path(policy.adapter) / HEADS_FILE if policy.adapter is not None else None
    if path is None or not path.is_file() or sp.engine != "hf" or sp.speculative == "off":
        return None
    if sp.speculative == "auto":
        import torch

        return path if sp.batch_size == 1 and torch.cuda.is_available() else None
    return path


def generate_hf(base_dir: Path, policy: Round, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    """Generations of CHUNK prompts at a time (the model loaded once), in order."""
    from .generate import answer_in_chunks

    n_chunks = -(-len(prompts) // CHUNK)
    settings = dict(max_new_tokens=sp.max_new_tokens, temperature=sp.temperature, top_p=sp.top_p, desc=desc)
    heads = heads_of(policy, sp)
    if heads is not None:
        chunks = answer_speculative(base_dir, policy.adapter, heads, prompts, CHUNK, seed, sp.batch_size, **settings)
    else:
        chunks = answer_in_chunks(base_dir, policy.adapter, prompts, CHUNK, seed, batch_size=sp.batch_size, **settings)
    for i, gen in enumerate(chunks):
        if n_chunks > 1:
            print(f"{desc}: chunk {i + 1}/{n_chunks} done", file=sys.stderr)
        yield gen


def answer_speculative(
    base_dir: Path,
    adapter: Path,
    heads_file: Path,
    prompts: list[dict],
    chunk: int,
    seed: int,
    batch_size: int,
    **settings,
) -> Iterator[Generation]:
    """lm/generate.py answer_in_chunks, drafting with the adapter's heads: a Generation per `chunk`
    prompts, each prompt's SpecStats in its `speculative`; prompt i samples with seed `seed + i`
    (`settings`: max_new_tokens, temperature, top_p, desc)."""
    from . import mtp
    from .chat import prompt_ids
    from .generate import Generation, stop_ids
    from .model import load_model, load_tokenizer
    from .speculative import generate_speculative

    tok = load_tokenizer(base_dir)
    model = load_model(base_dir, adapter)
    model.eval()
    heads, stop = mtp.load(heads_file), stop_ids(model, tok)
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        ids = [prompt_ids(tok, p["messages"], p.get("tools")) for p in part]
        seeds, each = [seed + start + i for i in range(len(part))], []
        made, _ = generate_speculative(
            model, heads, ids, stop=stop, seeds=seeds, each=each, batch_size=batch_size, **settings
        )
        texts = [tok.decode(m, skip_special_tokens=True).strip() for m in made]
        yield Generation(texts=texts, seeds=seeds, n_tokens=sum(map(len, made)), speculative=each)


def generate_vllm(base_dir: Path, policy: Round, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    """One generation of every prompt: vLLM manages its own memory, and starts once."""
    from .vllm_engine import generate_vllm

    print(f"{desc}: {len(prompts)} prompts", file=sys.stderr)
    yield generate_vllm(base_dir, policy.adapter, policy.info["id"], prompts, sp, seed)


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
    from .spec_stats import SpecStats

    n_tokens, done, drafting = 0, 0, None

    def rows():  # written as each chunk is made
        nonlocal n_tokens, done, drafting
        for gen in engine(base.dir, policy, jobs, sp, params.seed, f"sample@{r.id}"):
            n_tokens += gen.n_tokens
            spec = gen.speculative or [None] * len(gen.texts)
            for job, text, s, st in zip(jobs[done : done + len(gen.texts)], gen.texts, gen.seeds, spec):
                # Only a drafted sample says so: samples made without heads keep their bytes.
                yield {**job, "response": text, "seed": s, **made, **({"speculative": st.summary()} if st else {})}
                if st is not None:
                    drafting = drafting or SpecStats.for_heads(len(st.drafted))
                    drafting.add(st)
            done += len(gen.texts)

    write_jsonl(out_file or r.samples, rows())
    seconds = time.perf_counter() - t0
    return {
        "prompts": n_prompts,
        "samples": len(jobs),
        "tokens": n_tokens,
        "tokens_per_s": n_tokens / seconds if seconds else 0.0,
        "speculative": drafting.summary() if drafting else None,
    }
