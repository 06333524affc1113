"""sample@rN: on-policy completions from the previous round's model on train-split prompts,
`samples_per_prompt` each, with the hf engine (CPU/GPU) or vLLM (GPU)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .cli import PATH, lineage_view, params_of, round_options, say
from .io import read_json, write_jsonl
from .model import round_info
from .params import Params, SampleParams
from .paths import round_paths
from .prompts import negative_prompts, prompts_from_split
from .vllm_lora import max_lora_rank


def generate_hf(base_dir: Path, prev_dir: Path, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    from .generate import answer

    return answer(
        base_dir,
        prev_dir,
        prompts,
        batch_size=sp.batch_size,
        max_new_tokens=sp.max_new_tokens,
        temperature=sp.temperature,
        top_p=sp.top_p,
        seed=seed,
        desc=desc,
    )


def generate_vllm(base_dir: Path, prev_dir: Path, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    """vLLM with the round's adapter as a LoRA request. Imported only here: the package is
    optional and GPU-only."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise RuntimeError(
            f"sample.engine: vllm needs the vllm package ({exc}); install it on a CUDA machine "
            "(pip install vllm) or set sample.engine: hf"
        ) from None
    import torch

    from .chat import prompt_ids
    from .generate import Generation
    from .model import load_tokenizer

    if not torch.cuda.is_available():
        raise RuntimeError("sample.engine: vllm needs a CUDA GPU; this machine has none (set sample.engine: hf)")
    info = round_info(prev_dir)
    tok = load_tokenizer(base_dir)
    lora = None
    llm_args = dict(model=str(base_dir), tokenizer=str(base_dir), seed=seed, trust_remote_code=False)
    if info["adapter"] is not None:
        adapter_dir = Path(prev_dir) / info["adapter"]
        rank = read_json(adapter_dir / "adapter_config.json")["r"]
        llm_args.update(enable_lora=True, max_lora_rank=max_lora_rank([rank]), max_loras=1)
        lora = LoRARequest(info["id"], 1, str(adapter_dir))
    llm = LLM(**llm_args)
    seeds = [seed + i for i in range(len(prompts))]
    settings = [
        SamplingParams(temperature=sp.temperature, top_p=sp.top_p, max_tokens=sp.max_new_tokens, seed=s) for s in seeds
    ]
    inputs = [{"prompt_token_ids": prompt_ids(tok, p["messages"], p.get("tools"))} for p in prompts]
    outs = llm.generate(inputs, settings, lora_request=lora, use_tqdm=True)
    return Generation(
        texts=[o.outputs[0].text.strip() for o in outs],
        seeds=seeds,
        n_tokens=sum(len(o.outputs[0].token_ids) for o in outs),
    )


def run(params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path, out_file: Path) -> dict:
    sp = params.sample
    lineage = params.lineage(params.round(round_id).lineage)
    prompts = prompts_from_split(
        version_dir, "train", sp.num_prompts, f"{params.seed}:sample:{round_id}", lineage.system_prompts
    )
    prompts += negative_prompts(version_dir, sp.max_negatives, lineage.system_prompts)
    # Each prompt k times in a row; sample_index tells the copies apart, and each has its own seed.
    jobs = [{**p, "sample_index": k} for p in prompts for k in range(sp.samples_per_prompt)]
    prev = round_info(prev_dir)
    t0 = time.perf_counter()
    engine = generate_vllm if sp.engine == "vllm" else generate_hf
    gen = engine(base_dir, prev_dir, jobs, sp, params.seed, f"sample@{round_id}")
    seconds = time.perf_counter() - t0
    base_hash = read_json(base_dir / "base.json")["hash"]
    settings = {
        "engine": sp.engine,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "max_new_tokens": sp.max_new_tokens,
    }
    write_jsonl(
        out_file,
        (
            {
                **job,
                "response": text,
                "seed": s,
                "round": round_id,
                "policy": prev["id"],
                "base_hash": base_hash,
                "adapter_hash": prev.get("adapter_hash"),
                **settings,
            }
            for job, text, s in zip(jobs, gen.texts, gen.seeds)
        ),
    )
    return {
        "prompts": len(prompts),
        "samples": len(jobs),
        "tokens": gen.n_tokens,
        "tokens_per_s": gen.n_tokens / seconds if seconds else 0.0,
    }


@click.command()
@round_options
@click.option("--out", type=PATH, default=None, help="Default: <rounds-data>/<round>/samples.jsonl")
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, version_dir, base_dir, out):
    """Sample on-policy completions from the previous round's model."""
    p = params_of(ctx)
    r = p.round(round_id)
    prev = round_paths(r.prev, r.lineage, rounds_data, rounds_dir)
    out = out or round_paths(round_id, r.lineage, rounds_data, rounds_dir).samples
    say(run(p, round_id, base_dir, lineage_view(version_dir, r.lineage), prev.model, out))
