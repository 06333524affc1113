"""Tokens/s and peak memory of train@rN against TRL's SFTTrainer in each configuration TRL offers
for speed: same base model, LoRA config, tokenized examples (assistant-only masks), max length,
batch size, learning rate and steps. TRL runs at its defaults (random batches padded to their
longest), grouped by length, padding-free (grouped; rows concatenated, attention kept apart by
position ids) and packed (best-fit decreasing, padding-free); a configuration TRL refuses on this
device is printed with its reason. The last line is the ratio against TRL's fastest.

Utilization: LoRA training costs about 4 x N FLOPs per token (N = the base's parameters: forward
and the input gradients, no weight gradients for frozen weights) plus attention (6 x layers x
attention width x the mean of len^2 / mean len per token, causal); it is printed against this CPU's
(or GPU's) fp32 matmul peak, measured in the same run with a large torch.mm.

    python bench/train.py [--steps 8] [--batch-size 8] [--max-length 192] [--trl defaults,group_by_length,...]
                          [--before] [--repeat N]

--before also runs loraloop's loop without this round's speed changes (PEFT's LoRA forward, torch's
cross-entropy), for the before/after ratio in the same run; --repeat N runs every side N times in
turn and keeps each side's best (the machine's speed drifts between runs).

Needs `make demo` outputs (models/base, data/lineages/tutor, data/rounds/tutor/tutor-r1/scored.jsonl) and the bench
extra (`pip install -e '.[bench]'`, which pins trl). Each side runs in its own process so its peak
RSS (or peak CUDA memory on a GPU) is its own; tokens are the non-padding tokens each side fed the
model, and the time is each side's training loop (model loading excluded on both sides).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import child  # noqa: E402  (bench/child.py, beside this script)
import flops  # noqa: E402


def bench_params(args):
    import yaml

    from loraloop.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        init="fresh",
        checkpoint_every=0,
        eval_examples=0,
        grad_accum=1,
    )
    return Params.model_validate(raw)


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def without_speedups() -> None:
    """loraloop's loop as it was before this round of speed work: PEFT's own LoRA forward and
    torch's cross-entropy (for the before/after line, measured in the same run)."""
    import torch.nn.functional as F

    from loraloop.lm import lean_lora
    from loraloop.lm import loss as lm_loss

    lean_lora.install = lambda model: 0
    lm_loss.cross_entropy = lambda logits, target: F.cross_entropy(logits, target, reduction="none")


def side_ours(args) -> dict:
    import dataclasses
    import tempfile

    from loraloop.train import loop as train
    from loraloop.workspace import Workspace

    if args.side == "before":
        without_speedups()

    params = bench_params(args)
    ws = Workspace(params)
    with tempfile.TemporaryDirectory() as tmp:
        r = dataclasses.replace(ws.round("tutor-r1"), model=Path(tmp) / "out")
        res = train.run(params, r, ws.base, Path(tmp) / "ckpt")
    return {"tokens": res["tokens"], "tokens_per_s": res["tokens_per_s"], "peak_mb": peak_memory_mb()}


# TRL's configurations for speed, from its defaults to its best. Each adds to SFTConfig.
TRL_CONFIGS = {
    "defaults": {},
    "group_by_length": {"train_sampling_strategy": "group_by_length"},
    # Our examples come truncated to max_length; TRL enforces it only when packing.
    "padding_free": {"train_sampling_strategy": "group_by_length", "padding_free": True, "max_length": None},
    "packing": {"packing": True, "packing_strategy": "bfd"},
}


def tokenized_mix(params, tok) -> list[dict]:
    """train@tutor-r1's training mix, tokenized as loraloop's loop tokenizes it."""
    import random

    from loraloop.lm import loss as lm_loss
    from loraloop.train.data import build_mix

    mix = build_mix(
        params,
        params.lineage("tutor").system_prompts,
        ROOT / "data/rounds/tutor/tutor-r1/scored.jsonl",
        ROOT / "data/lineages/tutor",
        random.Random(f"{params.seed}:train:tutor-r1"),
    )
    return lm_loss.tokenize(tok, mix, params.train.max_length)[0]


def trl_sft(model, tok, examples: list[dict], tp, trl_config: str, seed: int) -> dict:
    """TRL's SFTTrainer on pre-tokenized examples ({"ids", "mask"}: our assistant-token mask as its
    completion mask, so both sides learn the same tokens), LoRA as train.lora, the schedule of
    train: its tokens, tokens/s over its training loop, peak memory, and `marks`: (seconds, tokens
    so far) at the end of each step, for a benchmark that leaves out the first steps."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from loraloop.train.model import lora_config

    data = Dataset.from_list(
        [{"input_ids": e["ids"], "completion_mask": [int(m) for m in e["mask"]]} for e in examples]
    )
    settings = dict(
        output_dir=str(ROOT / "bench/.trl_out"),
        max_steps=tp.steps,
        per_device_train_batch_size=tp.batch_size,
        learning_rate=tp.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(tp.steps * tp.warmup_fraction)),
        max_grad_norm=tp.grad_clip,
        weight_decay=0.0,
        max_length=tp.max_length,
        completion_only_loss=True,
        gradient_checkpointing=False,  # ours does not recompute activations either
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        seed=seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )

    counted, marks = {"tokens": 0}, []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), counted["tokens"]))

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**{**settings, **TRL_CONFIGS[trl_config]}),
        train_dataset=data,
        processing_class=tok,
        peft_config=lora_config(tp.lora),  # the same LoRA loraloop trains
        callbacks=[Clock()],
    )
    collate = trainer.data_collator

    def counting(batch):
        out = collate(batch)
        counted["tokens"] += (
            int(out["attention_mask"].sum()) if "attention_mask" in out else int(out["input_ids"].numel())
        )
        return out

    trainer.data_collator = counting  # train() builds its dataloader from this attribute
    t0 = time.perf_counter()
    metrics = trainer.train().metrics
    seconds = metrics.get("train_runtime", time.perf_counter() - t0)
    marks = [(t - t0, n) for t, n in marks]
    result = {"tokens": counted["tokens"], "tokens_per_s": counted["tokens"] / seconds, "peak_mb": peak_memory_mb()}
    return {**result, "marks": marks}


def side_trl(args) -> dict:
    import torch

    from loraloop.lm.model import load_base, load_tokenizer

    params = bench_params(args)
    torch.manual_seed(params.seed)
    tok = load_tokenizer(ROOT / "models/base")
    examples = tokenized_mix(params, tok)
    return trl_sft(load_base(ROOT / "models/base"), tok, examples, params.train, args.trl_config, params.seed)


def flops_per_token(args) -> float:
    """Training FLOPs per token fed: 4 x N for the weights (forward and input gradients), plus
    causal attention at the mix's lengths (forward and its two backward products: 3 x forward)."""
    from loraloop.lm.model import load_tokenizer

    base = ROOT / "models/base"
    lengths = [len(e["ids"]) for e in tokenized_mix(bench_params(args), load_tokenizer(base))]
    return 4 * flops.n_params(base) + 3 * flops.attention_flops(base, lengths) / sum(lengths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--trl", default=",".join(TRL_CONFIGS), help="TRL configurations to run, comma-separated")
    ap.add_argument("--before", action="store_true", help="also run loraloop without its lean LoRA / cross-entropy")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; each side's best counts")
    ap.add_argument("--side", choices=["ours", "before", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--trl-config", choices=list(TRL_CONFIGS), default="defaults", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        child.report(side_trl(args) if args.side == "trl" else side_ours(args))
        return
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    sides = {"loraloop train": ["--side", "ours"]}
    if args.before:
        sides["loraloop (before)"] = ["--side", "before"]
    sides.update({f"TRL {name}": ["--side", "trl", "--trl-config", name] for name in args.trl.split(",")})
    results, refused = {}, {}
    for _ in range(args.repeat):  # rounds of every side in turn, so a slow spell of the machine hits all
        for label, argv in sides.items():
            if label in refused:
                continue
            try:
                r = child.run(__file__, [*argv, *common], label, exit_on_error=not label.startswith("TRL"))
            except child.SideFailed as exc:
                refused[label] = exc.reason
                continue
            if label not in results or r["tokens_per_s"] > results[label]["tokens_per_s"]:
                results[label] = r
    import torch

    peak = flops.matmul_peak_gflops()
    per_token = flops_per_token(args)
    print(
        f"steps={args.steps} batch_size={args.batch_size} max_length={args.max_length} "
        f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()}"
    )
    print(f"fp32 matmul peak {peak:,.1f} GFLOP/s; training costs {per_token / 1e6:,.0f} MFLOP per token")
    for name, r in results.items():
        share = r["tokens_per_s"] * per_token / 1e9 / peak
        print(
            f"{name:22s} {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} tokens)  "
            f"{share:6.1%} of peak  peak memory {r['peak_mb']:,.0f} MB"
        )
    for name, reason in refused.items():
        print(f"{name:22s} not run here: {reason}")
    ours = results.pop("loraloop train")
    before = results.pop("loraloop (before)", None)
    if before is not None:
        gain = ours["tokens_per_s"] / before["tokens_per_s"]
        print(f"speed ratio after / before the lean LoRA and cross-entropy: {gain:.2f}x")
    if not results:
        sys.exit("no TRL configuration ran")
    default = results.get("TRL defaults")
    best_name, best = max(results.items(), key=lambda kv: kv[1]["tokens_per_s"])
    if default is not None:
        print(f"speed ratio vs TRL defaults: {ours['tokens_per_s'] / default['tokens_per_s']:.2f}x")
    print(
        f"speed ratio vs TRL's best ({best_name}): {ours['tokens_per_s'] / best['tokens_per_s']:.2f}x   "
        f"memory ratio ({best_name} / ours): {best['peak_mb'] / ours['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
