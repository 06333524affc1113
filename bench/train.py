"""Tokens/s and peak memory of train@rN against TRL's SFTTrainer: same base model, LoRA config,
tokenized examples (assistant-only masks), max length, batch size, learning rate and steps.

    python bench/train.py [--steps 8] [--batch-size 8] [--max-length 192]

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


def bench_params(args):
    import yaml

    from stages.params import Params

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


def side_ours(args) -> dict:
    import tempfile

    from stages import train

    params = bench_params(args)
    with tempfile.TemporaryDirectory() as tmp:
        res = train.run(
            params,
            "tutor-r1",
            ROOT / "models/base",
            ROOT / "data/lineages/tutor",
            ROOT / "models/rounds/base",
            ROOT / "data/rounds/tutor/tutor-r1/scored.jsonl",
            Path(tmp) / "out",
            None,
            Path(tmp) / "ckpt",
        )
    return {"tokens": res["tokens"], "tokens_per_s": res["tokens_per_s"], "peak_mb": peak_memory_mb()}


def side_trl(args) -> dict:
    import random

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from stages import lm_loss, train
    from stages.model import load_base, load_tokenizer

    params = bench_params(args)
    tp = params.train
    torch.manual_seed(params.seed)
    tok = load_tokenizer(ROOT / "models/base")
    rng = random.Random(f"{params.seed}:train:tutor-r1")
    mix = train.build_mix(
        params,
        params.lineage("tutor").system_prompts,
        ROOT / "data/rounds/tutor/tutor-r1/scored.jsonl",
        ROOT / "data/lineages/tutor",
        rng,
    )
    examples, _ = lm_loss.tokenize(tok, mix, tp.max_length)
    # Pre-tokenized, with our assistant-token mask as TRL's completion mask: both sides learn the same tokens.
    data = Dataset.from_list(
        [{"input_ids": e["ids"], "completion_mask": [int(m) for m in e["mask"]]} for e in examples]
    )
    lp = tp.lora
    config = SFTConfig(
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
        seed=params.seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )
    trainer = SFTTrainer(
        model=load_base(ROOT / "models/base"),
        args=config,
        train_dataset=data,
        processing_class=tok,
        peft_config=LoraConfig(
            r=lp.r,
            lora_alpha=lp.alpha,
            lora_dropout=lp.dropout,
            target_modules=lp.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    counted = {"tokens": 0}
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
    return {"tokens": counted["tokens"], "tokens_per_s": counted["tokens"] / seconds, "peak_mb": peak_memory_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        result = side_ours(args) if args.side == "ours" else side_trl(args)
        child.report(result)
        return
    results = {}
    for side in ("ours", "trl"):
        argv = [
            "--side",
            side,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
        ]
        results[side] = child.run(__file__, argv, side)
    import torch

    print(
        f"steps={args.steps} batch_size={args.batch_size} max_length={args.max_length} "
        f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()}"
    )
    for side, name in (("ours", "loraloop train"), ("trl", "TRL SFTTrainer")):
        r = results[side]
        print(
            f"{name:15s} {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} tokens)  peak memory {r['peak_mb']:,.0f} MB"
        )
    print(
        f"speed ratio: {results['ours']['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}x   "
        f"memory ratio (trl / ours): {results['trl']['peak_mb'] / results['ours']['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
