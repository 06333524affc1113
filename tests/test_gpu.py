"""CUDA paths, run where a GPU is (`make gpu-check` on the lent machine), skipped without one: bf16
training against fp32, the sampler and drafting with multi-token heads against `generate` on
CUDA, a QLoRA step, a single-process
`accelerate launch`, and the DVC pipeline's sample and train stages on the GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import project_repo, run_round, sh, small_params

from loraloop.files import read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def losses(round_dir: Path) -> list[float]:
    rows = (round_dir / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[1]) for r in rows]


def test_bf16_training_follows_fp32(project, monkeypatch):
    """The same round trained in bf16 (what a GPU gets) and in fp32 on the GPU: the loss curves
    agree within bf16's precision, and both adapters learned."""
    from loraloop.lm import model as lm_model

    p = small_params(init="fresh", steps=4)
    bf16 = run_round(p, project, "tutor-r1", out_name="r1_bf16")
    monkeypatch.setattr(lm_model, "compute_dtype", lambda: torch.float32)
    fp32 = run_round(p, project, "tutor-r1", out_name="r1_fp32")
    a, b = losses(bf16), losses(fp32)
    assert len(a) == len(b) == 4
    assert all(abs(x - y) <= 0.02 * abs(y) + 0.02 for x, y in zip(a, b)), (a, b)
    assert read_json(bf16 / "ROUND.json")["train"]["tokens"] == read_json(fp32 / "ROUND.json")["train"]["tokens"]


def test_the_sampler_on_cuda_equals_generate_one_prompt_at_a_time(tiny_base):
    """Greedy, fp32 on the GPU: the sampler's texts are transformers' generate's, prompt by
    prompt; in bf16 (what sample gets on a GPU) most of them still are."""
    from loraloop.data.prompts import with_system
    from loraloop.lm.chat import prompt_ids
    from loraloop.lm.generate import generate
    from loraloop.lm.model import load_base, load_tokenizer

    tok = load_tokenizer(tiny_base / "base")
    texts = ["How do I add fractions?", "What is a verb?", "Why is the sky blue?", "Help me with 7 x 8."]
    prompts = [prompt_ids(tok, with_system("Be a tutor.", [{"role": "user", "content": t}])) for t in texts * 3]
    for dtype, need in ((torch.float32, len(prompts)), (torch.bfloat16, len(prompts) // 2)):
        model = load_base(tiny_base / "base").to(dtype)
        ours = generate(
            model, tok, prompts, batch_size=5, max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0, desc=""
        ).texts
        theirs = []
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
            theirs.append(tok.decode(out[0, len(p) :], skip_special_tokens=True).strip())
        same = sum(a == b for a, b in zip(ours, theirs))
        assert same >= need, f"{dtype}: {same}/{len(prompts)} the same"


def test_drafting_on_cuda_writes_what_generate_writes(tiny_base):
    """Self-speculative decoding with heads at random, fp32 on the GPU: greedy, one prompt at a
    time and as rows of batches of three (rows leaving and joining), the tokens are transformers'
    generate's; sampled (the generators on the CPU), a batch draws what each prompt draws alone."""
    from test_generate import setup
    from test_mtp import random_heads

    from loraloop.lm import speculative

    tok, model, prompts = setup(tiny_base)
    model = model.float()
    heads = random_heads(model.config.hidden_size, 3, 0.05)
    want = []
    for p in prompts:
        ids = torch.tensor([p], device="cuda")
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        want.append(out[0, len(p) :].tolist())
    for b in (1, 3):
        made, stats = speculative.generate_speculative(model, heads, prompts, 12, {tok.eos_token_id}, batch_size=b)
        assert made == want, f"batch {b}"
        assert stats.forwards < stats.tokens
    seeds = list(range(len(prompts)))
    sampled = [
        speculative.generate_speculative(model, heads, prompts, 12, set(), 0.7, 0.9, seeds, batch_size=b)[0]
        for b in (1, 3)
    ]
    assert sampled[0] == sampled[1]


def test_a_qlora_step_runs(project):
    pytest.importorskip("bitsandbytes")
    out = run_round(small_params(quantize="4bit", init="fresh", steps=2), project, "tutor-r1", out_name="r1_qlora_gpu")
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert all(x == x for x in losses(out))  # finite


def test_accelerate_launch_on_one_gpu(project, r1, tmp_path):
    """train.launcher: accelerate with one process: the stage re-launches itself and trains on the GPU."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = yaml.safe_load((ROOT / "configs/accelerate/ddp.yaml").read_text())
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**config, "num_processes": 1, "distributed_type": "NO"}))
    raw["train"].update(steps=2, batch_size=2, max_length=128, eval_examples=2, launcher="accelerate", num_processes=1)
    raw["train"]["accelerate_config"] = str(tmp_path / "one.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(project / "models/rounds/base", tmp_path / "rounds/base")
    d = project / "rounds/tutor/tutor-r1"
    res = subprocess.run(
        [sys.executable, "-m", "loraloop.cli", "--params", str(tmp_path / "params.yaml"), "train"]
        + ["--round", "tutor-r1", "--base", str(project / "models/base"), "--data", str(project / "lineages/tutor")]
        + [
            "--rounds-dir",
            str(tmp_path / "rounds"),
            "--scored",
            str(d / "scored.jsonl"),
            "--pairs",
            str(d / "pairs.jsonl"),
        ]
        + ["--checkpoints", str(tmp_path / "ckpt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "accelerate.commands.launch" in res.stderr
    info = read_json(tmp_path / "rounds/tutor-r1/ROUND.json")
    assert (
        info["train"]["processes"] == 1 and (tmp_path / "rounds/tutor-r1/adapter/adapter_model.safetensors").is_file()
    )


def test_the_pipeline_samples_and_trains_on_the_gpu(tiny_model_dir, tmp_path):
    """`dvc repro` of the tutor's first round on the tiny model, the stages on CUDA."""

    def shrink(p):
        p["base"].update(source="local", path=str(tiny_model_dir))
        p["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=6, samples_per_prompt=2)
        p["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=6, gates={})
        p["train"].update(steps=2, batch_size=2, max_length=192, eval_examples=2)
        p["lineages"] = {"tutor": {k: v for k, v in p["lineages"]["tutor"].items() if k != "gates"}}
        p["rounds"] = {"tutor-r1": {"lineage": "tutor", "prev": "base"}}

    repo = project_repo(tmp_path / "repo", shrink)
    sh(repo, "dvc", "repro", "train@tutor-r1", "eval@tutor-r1")
    samples = list(read_jsonl(repo / "data/rounds/tutor/tutor-r1/samples.jsonl"))
    assert len(samples) == 8 and all(s["engine"] == "hf" for s in samples)
    info = read_json(repo / "models/rounds/tutor-r1/ROUND.json")
    assert info["train"]["steps"] == 2 and info["train"]["final_loss"] > 0
    assert read_json(repo / "metrics/tutor/eval_tutor-r1.json")["n"] == 4
