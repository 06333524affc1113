"""`make gpu-check` in its CPU mode, as on a machine without CUDA: the gpu tests skip, bench/gpu.py
runs its tiny shape with every part this machine can run, and the two result files say so."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_cpu_mode_and_writes_its_results(tmp_path):
    if torch.cuda.is_available():
        import pytest

        pytest.skip("a CUDA machine runs the real check (make gpu-check)")
    out = tmp_path / "out"
    args = f"--site {tmp_path / 'site'} --wheels {tmp_path / 'none'} --budget 400"
    done = subprocess.run(
        ["make", "-s", "gpu-check", f"GPU_OUT={out}", f"GPU_ARGS={args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check = json.loads((out / "gpu-check.json").read_text())
    assert check["shape"] == "tiny" and check["versions"]["cuda"] is None
    assert check["tests"]["exit_status"] == 0 and check["tests"]["skipped"] >= 5 and "failed" not in check["tests"]
    results, not_run = check["bench"]["results"], check["bench"]["not_run"]
    assert set(not_run) == {"qlora"}, not_run  # every other part ran here
    for side in ("loraloop sft", "loraloop rho1", "loraloop dpo", "TRL padding_free", "TRL packing"):
        assert results[side]["tokens_per_s"] > 0 and results[side]["peak_mb"] > 0, side
    assert results["loraloop rho1"]["reference_s"] > 0 and results["loraloop sft"]["reference_s"] is None
    # fp32 on a CPU, greedy: the sampler makes exactly generate's tokens at each prompt count.
    for n, s in results["sample"]["by_prompts"].items():
        assert s["same"] == s["prompts"] == int(n) and s["tokens"] > 0
    # Drafting with heads at random, fp32 on a CPU, greedy: the sampler's tokens at each batch size.
    drafting = results["speculative"]["by_batch"]
    assert set(drafting) == {"1", "4"}
    for s in drafting.values():
        assert s["same"] == s["prompts"] and s["tokens_per_forward"] >= 1 and len(s["acceptance"]) == 2
    assert drafting["1"]["step_cost"] > 0
    text = (out / "gpu-check.txt").read_text()
    assert "no CUDA device (CPU mode)" in text and "speed ratio vs TRL's best" in text and "MFU" in text
    assert "a drafting step costs" in text
