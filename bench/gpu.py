"""GPU readiness in one run: loraloop's training loop and sampler on a model of a real base's shape,
against their peers, measured in the same run, with figures that say how close to the hardware
each side gets.

    python bench/gpu.py --shape 8b --out DIR      # the lent CUDA machine (about 5 minutes on an H200)
    python bench/gpu.py --shape tiny --out DIR    # anywhere: on a CPU this is what CI runs

The model is built from a config with random weights (bf16 on a GPU, fp32 on a CPU; nothing is
downloaded): `8b` is Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads with 8 KV heads,
intermediate 14336, vocabulary 128,256), `tiny` a two-layer one. Its tokenizer is a word-level
vocabulary of that size built in code. Parts, each in its own process with its own time budget (a
part over its budget, or one that fails, is reported with why, and the others still run):

- peak: the matmul rate of this device (bf16 on a GPU, fp32 on a CPU), for each side's MFU;
- train: LoRA SFT, loraloop's loop vs TRL's SFTTrainer (padding-free and packed; bf16, SDPA), the
  same tokenized examples (lengths up to --seq, the second half of each the completion), batch and
  steps: tokens/s after the first steps, peak memory, MFU (4 x N + attention FLOPs per token);
- methods: a DPO step and a Rho-1 step against an SFT step of loraloop's loop (seconds per step,
  and the one-time reference pass);
- sample: loraloop's sampler vs transformers' `generate` batched (left padding), greedy, at each
  --prompts count: tokens/s and how many prompts got the same tokens;
- speculative: self-speculative greedy decoding with two heads at random against the sampler at
  batch 1, 8 and 64: speeds, tokens per forward, same tokens, and at batch 1 a drafting step's
  cost against a plain step's (what a round's own acceptance turns into a speed-up);
- qlora: with bitsandbytes on CUDA, the base saved and loaded 4-bit through train.quantize's own
  loader, then LoRA SFT steps: tokens/s and peak memory against bf16.

It writes DIR/gpu.json (every figure) and DIR/gpu.txt (what it printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import child  # noqa: E402  (bench/child.py, beside this script)

SHAPES = {
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=2048,
        max_position_embeddings=1024,
    ),
}
# What each part does at a shape: sequence length, batch, steps (the first `warmup` untimed),
# prompt counts and lengths and new tokens for the sampler, batch sizes for drafting with heads.
PLANS = {
    "8b": dict(
        seq=2048, batch=4, steps=10, warmup=2, prompts=[64, 256], tail=(32, 256), new_tokens=128, drafting=[1, 8, 64]
    ),
    "tiny": dict(seq=128, batch=4, steps=4, warmup=1, prompts=[8, 16], tail=(4, 24), new_tokens=12, drafting=[1, 4]),
}
TRL_SIDES = ("padding_free", "packing")


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype():
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def build_model(shape: str):
    """The shape's Llama with random weights, on this device in its dtype, SDPA attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, attn_implementation="sdpa")
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 1, 2
    torch.manual_seed(0)
    with torch.device(device()):
        model = LlamaForCausalLM(config).to(dtype())
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    return model


def build_tokenizer(vocab_size: int):
    """A real tokenizer over a word-level vocabulary the size of the model's: <pad>, <eos>, <bos>,
    then t3 ... (what the random weights would need no more than)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def examples(plan: dict, vocab_size: int, n: int, seed: int = 0) -> list[dict]:
    """n tokenized examples, lengths from half of --seq to --seq, the second half of each counted
    (the assistant's), as loraloop's loop and TRL both take them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(plan["seq"] // 2, plan["seq"])
        ids = [rng.randrange(3, vocab_size) for _ in range(length)]
        out.append({"ids": ids, "mask": [i >= length // 2 for i in range(length)], "weight": 1.0, "kind": "anchor"})
    return out


def train_params(plan: dict, **overrides):
    from loraloop.params import TrainParams

    base = dict(steps=plan["steps"], batch_size=plan["batch"], max_length=plan["seq"], lr=2e-4, warmup_fraction=0.1)
    return TrainParams(**{**base, **overrides})


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_params(tp):
    """A params.yaml around these train settings (the loop reads its settings from Params)."""
    from loraloop.params import Params

    return Params.model_validate(
        {
            "collect": {"sources": [{"path": "unused.jsonl"}]},
            "lineages": {"bench": {"system_prompts": {"bench": "You are a benchmark."}, "rules": {}}},
            "rounds": {"bench-r1": {"lineage": "bench", "prev": "base"}},
            "train": tp.model_dump(),
        }
    )


def loraloop_run(model, tok, rows: list[dict], tp, ckpt_dir: Path):
    """loraloop's training run over these rows, built as setup() builds it but on a model in memory
    (no base on disk): LoRA of train.lora with the lean forward, the optimizer, the schedule, the
    reference of DPO / Rho-1 (the base, adapter off) computed before the loop."""
    import torch
    from accelerate import Accelerator
    from peft import get_peft_model

    from loraloop.lm import lean_lora
    from loraloop.lm.loss import CountedTokenLoss
    from loraloop.train.data import Inputs, schedule
    from loraloop.train.model import lora_config
    from loraloop.train.reference import precompute_reference, uses_reference
    from loraloop.train.setup import METHODS, Run
    from loraloop.workspace import Base, Workspace

    params = bench_params(tp)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = get_peft_model(model, lora_config(tp.lora))
    lean_lora.install(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tp.lr, weight_decay=0.0)
    net, opt = acc.prepare(CountedTokenLoss(model), opt)
    plan = schedule(rows, tp, random.Random(0), acc.num_processes)
    # As reference_of gives it for train.reference: base (the random base has no hash to name).
    reference = {"kind": "base", "round": "base", "base_hash": None} if uses_reference(tp) else None
    r = Run(
        params=params,
        inputs=Inputs.of(Workspace(params).round("bench-r1")),
        base=Base(ckpt_dir),
        method=METHODS[tp.method],
        acc=acc,
        tok=tok,
        examples=rows,
        truncated_away=0,
        held_out=[],
        model=model,
        net=net,
        opt=opt,
        trainable=trainable,
        plan=plan,
        reference=reference,
        key="bench",
        ckpt_dir=ckpt_dir,
    )
    t0 = time.perf_counter()
    if reference is not None and tp.reference_logps == "precompute":
        precompute_reference(r, plan)
    synchronize()
    return r, time.perf_counter() - t0


def timed_steps(r, steps: int) -> list[tuple[float, int]]:
    """Optimizer steps of loraloop's loop: (seconds since the first began, tokens so far) after each."""
    from loraloop.train.loop import optimizer_step

    marks, tokens, t0 = [], 0, time.perf_counter()
    for step in range(steps):
        tokens += optimizer_step(r, step)[1]
        synchronize()
        marks.append((time.perf_counter() - t0, tokens))
    return marks


def after_warmup(marks: list[tuple[float, int]], warmup: int) -> dict:
    """Tokens/s and seconds per step over the steps after the first `warmup`."""
    (t_a, n_a), (t_b, n_b) = (marks[warmup - 1] if warmup else (0.0, 0)), marks[-1]
    steps = len(marks) - warmup
    return {"tokens_per_s": (n_b - n_a) / (t_b - t_a), "step_s": (t_b - t_a) / steps, "timed_steps": steps}


def pairs_of(rows: list[dict]) -> list[dict]:
    """DPO pairs from SFT rows: each row's ids split in two sides of half its length, so a pair
    costs about the tokens of one SFT example."""
    out = []
    for row in rows:
        half = len(row["ids"]) // 2
        sides = [
            {"ids": ids, "mask": [i >= len(ids) // 2 for i in range(len(ids))]}
            for ids in (row["ids"][:half], row["ids"][half:])
        ]
        out.append({"chosen": sides[0], "rejected": sides[1], "ids": row["ids"], "kind": "pair"})
    return out


def side_loraloop(args) -> dict:
    """loraloop's loop at train.method `args.method` (sft, rho1: SFT with Rho-1, dpo)."""
    import tempfile

    plan = PLANS[args.shape]
    model, tok = build_model(args.shape), build_tokenizer(SHAPES[args.shape]["vocab_size"])
    rows = examples(plan, SHAPES[args.shape]["vocab_size"], plan["steps"] * plan["batch"])
    method = {"sft": {}, "rho1": {"token_weighting": "rho1"}, "dpo": {"method": "dpo"}}[args.method]
    tp = train_params(plan, **method)
    rows = pairs_of(rows) if args.method == "dpo" else rows
    with tempfile.TemporaryDirectory() as tmp:
        r, reference_s = loraloop_run(model, tok, rows, tp, Path(tmp))
        marks = timed_steps(r, plan["steps"])
    reference_s = reference_s if r.reference is not None else None
    return {**after_warmup(marks, plan["warmup"]), "reference_s": reference_s, "peak_mb": peak_memory_mb()}


def side_trl(args) -> dict:
    from train import trl_sft  # bench/train.py: TRL's SFTTrainer on pre-tokenized examples

    plan = PLANS[args.shape]
    model, tok = build_model(args.shape), build_tokenizer(SHAPES[args.shape]["vocab_size"])
    rows = examples(plan, SHAPES[args.shape]["vocab_size"], plan["steps"] * plan["batch"])
    result = trl_sft(model, tok, rows, train_params(plan), args.trl_config, seed=0)
    return {**after_warmup(result.pop("marks"), plan["warmup"]), "peak_mb": result["peak_mb"]}


def sample_prompts(plan: dict, vocab_size: int, n: int) -> list[list[int]]:
    """n prompts as sample@<round> makes them: one shared prefix (the system prompt), then tails
    of their own lengths."""
    rng = random.Random(n)
    prefix = [rng.randrange(3, vocab_size) for _ in range(64)]
    return [prefix + [rng.randrange(3, vocab_size) for _ in range(rng.randint(*plan["tail"]))] for _ in range(n)]


def side_sample(args) -> dict:
    """loraloop's sampler and `generate` batched (left padding, the whole set as one batch),
    greedy, at each prompt count; each warmed up first."""
    from sample import batched_generate  # bench/sample.py: transformers' generate at its best here

    from loraloop.lm.generate import generate

    plan, vocab = PLANS[args.shape], SHAPES[args.shape]["vocab_size"]
    model, tok = build_model(args.shape), build_tokenizer(vocab)
    out = {}
    for n in plan["prompts"]:
        prompts, new = sample_prompts(plan, vocab, n), plan["new_tokens"]
        settings = dict(batch_size=n, max_new_tokens=new, temperature=0.0, top_p=1.0, seed=0, desc="", progress=False)
        generate(model, tok, prompts[:4], **{**settings, "max_new_tokens": 4})  # warm-up
        batched_generate(model, tok, prompts[:4], 4, 4)
        made: list[list[int]] = [[] for _ in prompts]
        synchronize()
        t0 = time.perf_counter()
        generate(model, tok, prompts, on_token=lambda i, t, made=made: made[i].append(t), **settings)
        synchronize()
        ours_s = time.perf_counter() - t0
        theirs = batched_generate(model, tok, prompts, new, n)
        synchronize()
        theirs_s = time.perf_counter() - t0 - ours_s
        tokens = sum(map(len, made))
        out[str(n)] = {
            "loraloop_tokens_per_s": tokens / ours_s,
            "generate_tokens_per_s": sum(map(len, theirs)) / theirs_s,
            "same": sum(a == b for a, b in zip(made, theirs)),
            "prompts": n,
            "tokens": tokens,
        }
    return {"by_prompts": out, "peak_mb": peak_memory_mb()}


def side_speculative(args) -> dict:
    """Self-speculative greedy decoding (lm/speculative.py) against the sampler at each of the
    plan's drafting batch sizes, on the first max(batch, 8) prompts, with two heads at random (a model
    of random weights writes no text for heads to learn, so they draft what they draft). Per batch:
    both speeds, the heads' tokens per forward and how many prompts got the same tokens (bf16: a
    verifying step's sums run in another order than a plain step's); at batch 1, where every
    forward is counted, what a drafting step costs against a plain one: a round whose heads reach
    T tokens per forward then runs about T / that cost as fast (README, Multi-token heads)."""
    import torch

    from loraloop.lm.generate import generate, stop_ids
    from loraloop.lm.mtp import MTPHeads
    from loraloop.lm.speculative import generate_speculative

    plan, vocab = PLANS[args.shape], SHAPES[args.shape]["vocab_size"]
    model, tok = build_model(args.shape), build_tokenizer(vocab)
    torch.manual_seed(1)
    heads = MTPHeads(model.config.hidden_size, 2)
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.02)
    stop, new, out = stop_ids(model, tok), plan["new_tokens"], {}
    warm = sample_prompts(plan, vocab, 2)
    for b in (1, 2):
        generate_speculative(model, heads, warm, 4, stop, batch_size=b)
        generate(model, tok, warm, batch_size=b, max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0, desc="")
    for b in plan["drafting"]:
        prompts = sample_prompts(plan, vocab, max(b, 8))
        made: list[list[int]] = [[] for _ in prompts]
        settings = dict(batch_size=b, max_new_tokens=new, temperature=0.0, top_p=1.0, seed=0, desc="", progress=False)
        synchronize()
        t0 = time.perf_counter()
        generate(model, tok, prompts, on_token=lambda i, t, made=made: made[i].append(t), **settings)
        synchronize()
        plain_s = time.perf_counter() - t0
        drafted, stats = generate_speculative(model, heads, prompts, new, stop, batch_size=b)
        synchronize()
        drafting_s = time.perf_counter() - t0 - plain_s
        out[str(b)] = {
            "plain_tokens_per_s": sum(map(len, made)) / plain_s,
            "drafting_tokens_per_s": stats.tokens / drafting_s,
            "tokens_per_forward": stats.tokens_per_forward,
            "acceptance": stats.acceptance(),
            "same": sum(a == d for a, d in zip(made, drafted)),
            "prompts": len(prompts),
        }
        if b == 1:  # one forward per plain token after the prompt's; stats.forwards counts the drafting ones
            plain_step = plain_s / (sum(map(len, made)) - len(prompts))
            out[str(b)]["step_cost"] = drafting_s / stats.forwards / plain_step
    return {"by_batch": out, "peak_mb": peak_memory_mb()}


def side_qlora(args) -> dict:
    """The base saved and loaded in 4-bit through loraloop's QLoRA loader (train.quantize: 4bit),
    then LoRA SFT steps of loraloop's loop."""
    import tempfile

    import torch

    from loraloop.train.model import load_quantized_base

    plan, vocab = PLANS[args.shape], SHAPES[args.shape]["vocab_size"]
    tok = build_tokenizer(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.shape)
        model.save_pretrained(Path(tmp) / "base", safe_serialization=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = load_quantized_base(Path(tmp) / "base")
        rows = examples(plan, vocab, plan["steps"] * plan["batch"])
        r, _ = loraloop_run(model, tok, rows, train_params(plan, quantize="4bit"), Path(tmp) / "ckpt")
        marks = timed_steps(r, plan["steps"])
    return {**after_warmup(marks, plan["warmup"]), "peak_mb": peak_memory_mb()}


def side_peak(args) -> dict:
    """The device's matmul rate: bf16 on a GPU (8192^3 products), fp32 on a CPU (bench/flops.py)."""
    import flops
    import torch

    if not torch.cuda.is_available():
        return {"tflops": flops.matmul_peak_gflops() / 1e3, "dtype": "float32"}
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize()
    return {"tflops": 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12, "dtype": "bfloat16"}


def training_flops_per_token(shape: str, plan: dict) -> float:
    """4 x the linear layers' parameters (forward and input gradients; the frozen weights get no
    gradient) plus causal attention, forward and its two backward products, at the mean length."""
    s = SHAPES[shape]
    h, layers, kv = s["hidden_size"], s["num_hidden_layers"], s["num_key_value_heads"] * s["head_dim"]
    attn_proj = h * s["num_attention_heads"] * s["head_dim"] * 2 + h * kv * 2
    linear = layers * (attn_proj + 3 * h * s["intermediate_size"]) + h * s["vocab_size"]
    width = s["num_attention_heads"] * s["head_dim"]
    lengths = [len(e["ids"]) for e in examples(plan, s["vocab_size"], plan["steps"] * plan["batch"])]
    attention = 3 * 2 * layers * width * sum(n * n for n in lengths) / sum(lengths)
    return 4 * linear + attention


SIDES = {  # label -> (part, argv of the side, its budget in seconds)
    "peak": ("peak", ["--side", "peak"], 60),
    "loraloop sft": ("train", ["--side", "loraloop", "--method", "sft"], 150),
    **{f"TRL {c}": ("train", ["--side", "trl", "--trl-config", c], 180) for c in TRL_SIDES},
    "loraloop rho1": ("methods", ["--side", "loraloop", "--method", "rho1"], 150),
    "loraloop dpo": ("methods", ["--side", "loraloop", "--method", "dpo"], 150),
    "sample": ("sample", ["--side", "sample"], 240),
    "speculative": ("speculative", ["--side", "speculative"], 150),
    "qlora": ("qlora", ["--side", "qlora"], 240),
}
PARTS = ("peak", "train", "methods", "sample", "speculative", "qlora")


def can_run(part: str) -> str | None:
    """Why a part cannot run here, or None."""
    import importlib.util

    import torch

    if part == "qlora" and not (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")):
        return "needs CUDA and bitsandbytes (the [qlora] wheels)"
    return None


def run_sides(args) -> tuple[dict, dict]:
    """Every side of the chosen parts in its own process, within its budget and what is left of
    --budget: results, and why the others did not run. The record is written after each side, so
    a run stopped from outside keeps what it measured."""
    results, failed, start = {}, {}, time.perf_counter()
    for label, (part, argv, budget) in SIDES.items():
        if part not in args.parts:
            continue
        left = args.budget - (time.perf_counter() - start)
        why = can_run(part) or (None if left >= 20 else f"no time left of --budget {args.budget:.0f} s")
        if why:
            failed[label] = why
            continue
        t0 = time.perf_counter()
        try:
            results[label] = child.run(__file__, [*argv, "--shape", args.shape], label, False, min(budget, left))
        except child.SideFailed as exc:
            failed[label] = exc.reason
        print(f"  {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        write(args, results, failed, summary(args, results, failed))
    return results, failed


def write(args, results: dict, failed: dict, lines: list[str]) -> None:
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"shape": args.shape, "plan": PLANS[args.shape], "results": results, "not_run": failed}
        (args.out / "gpu.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (args.out / "gpu.txt").write_text("\n".join(lines) + "\n")


def summary(args, results: dict, failed: dict) -> list[str]:
    """What a person reads: each side's figures, MFU against the measured peak, the ratios."""
    import torch

    plan = PLANS[args.shape]
    lines = [f"shape {args.shape} on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"]
    lines[0] += f", torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    peak = results.get("peak", {}).get("tflops")
    per_token = training_flops_per_token(args.shape, plan)
    if peak:
        lines.append(
            f"matmul peak {peak:,.2f} TFLOP/s ({results['peak']['dtype']}); training {per_token / 1e9:,.2f} GFLOP/token"
        )
    for label, r in results.items():
        if "tokens_per_s" not in r:
            continue
        mfu = f"  MFU {r['tokens_per_s'] * per_token / 1e12 / peak:6.1%}" if peak else ""
        extra = f"  reference pass {r['reference_s']:.1f} s" if r.get("reference_s") is not None else ""
        lines.append(
            f"{label:22s} {r['tokens_per_s']:10,.1f} tokens/s  {r['step_s']:7.3f} s/step{mfu}  "
            f"peak memory {r['peak_mb']:,.0f} MB{extra}"
        )
    lines += ratio_lines(results)
    for n, s in results.get("sample", {}).get("by_prompts", {}).items():
        ratio = s["loraloop_tokens_per_s"] / s["generate_tokens_per_s"]
        lines.append(
            f"sampler at {n} prompts: loraloop {s['loraloop_tokens_per_s']:,.1f} tokens/s, generate batched "
            f"{s['generate_tokens_per_s']:,.1f}: {ratio:.2f}x; same tokens {s['same']}/{s['prompts']}"
        )
    lines += drafting_lines(results.get("speculative", {}))
    lines += [f"{label:22s} not run: {why}" for label, why in failed.items()]
    return lines


def drafting_lines(r: dict) -> list[str]:
    lines = []
    for b, s in r.get("by_batch", {}).items():
        ours, plain = s["drafting_tokens_per_s"], s["plain_tokens_per_s"]
        lines.append(
            f"drafting at batch {b}: {ours:,.1f} tokens/s, sampler {plain:,.1f}: {ours / plain:.2f}x at "
            f"{s['tokens_per_forward']:.2f} tokens per forward (random heads); "
            f"same tokens {s['same']}/{s['prompts']}"
        )
        if "step_cost" in s:
            c = s["step_cost"]
            lines.append(
                f"a drafting step costs {c:.2f}x a plain one at batch 1: heads reaching 1.5 / 2 / 2.5 tokens "
                f"per forward run about {1.5 / c:.2f}x / {2 / c:.2f}x / {2.5 / c:.2f}x as fast"
            )
    return lines


def ratio_lines(results: dict) -> list[str]:
    ours, lines = results.get("loraloop sft"), []
    trl = {k: v for k, v in results.items() if k.startswith("TRL")}
    if ours and trl:
        best, r = max(trl.items(), key=lambda kv: kv[1]["tokens_per_s"])
        lines.append(
            f"speed ratio vs TRL's best ({best}): {ours['tokens_per_s'] / r['tokens_per_s']:.2f}x   "
            f"memory ratio ({best} / ours): {r['peak_mb'] / ours['peak_mb']:.2f}x"
        )
    for name in ("loraloop rho1", "loraloop dpo", "qlora"):
        if ours and name in results:
            lines.append(f"{name} step cost vs SFT: {results[name]['step_s'] / ours['step_s']:.2f}x")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="8b")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=None, help="Write gpu.json and gpu.txt here.")
    ap.add_argument("--budget", type=float, default=480, help="Seconds for all parts (each side has its own too).")
    ap.add_argument(
        "--side", choices=["peak", "loraloop", "trl", "sample", "speculative", "qlora"], help=argparse.SUPPRESS
    )
    ap.add_argument("--method", choices=["sft", "rho1", "dpo"], default="sft", help=argparse.SUPPRESS)
    ap.add_argument("--trl-config", default="padding_free", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        sides = {"peak": side_peak, "loraloop": side_loraloop, "trl": side_trl, "sample": side_sample}
        child.report({**sides, "speculative": side_speculative, "qlora": side_qlora}[args.side](args))
        return
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown} (have {', '.join(PARTS)})")
    t0 = time.perf_counter()
    results, failed = run_sides(args)
    lines = summary(args, results, failed) + [f"all parts: {time.perf_counter() - t0:.0f} s"]
    print("\n".join(lines))
    write(args, results, failed, lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
