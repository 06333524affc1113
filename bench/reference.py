"""Seconds per training step of DPO (and Rho-1) with the reference's values computed once before
the loop (train.reference_logps: precompute) against a reference forward in every step (per_step),
and what the one-time computation costs.

    python bench/reference.py [--method dpo|rho1] [--steps 8] [--batch-size 8] [--max-length 192]

Needs `make demo` outputs (models/base, data/lineages/tutor, data/rounds/tutor/tutor-r2/{scored,pairs}.jsonl).
Round tutor-r2 continuing tutor-r1's adapter against reference `start`. Each mode runs in its own process; the step
time is the training loop's (setup and model loading excluded), the one-time cost is the
precompute inside setup. Both modes train the same adapter bytes (tests/test_reference.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import child  # noqa: E402  (bench/child.py, beside this script)


def bench_params(args, mode: str):
    import yaml

    from loraloop.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    method = {"method": "dpo"} if args.method == "dpo" else {"method": "sft", "token_weighting": "rho1"}
    raw["train"].update(
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        init="prev",
        reference="start",
        reference_logps=mode,
        checkpoint_every=0,
        eval_examples=0,
        grad_accum=1,
        **method,
    )
    return Params.model_validate(raw)


def side(args, mode: str) -> dict:
    from loraloop.train import loop, setup
    from loraloop.train.data import Inputs
    from loraloop.workspace import Workspace

    params = bench_params(args, mode)
    ws = Workspace(params)
    with tempfile.TemporaryDirectory() as tmp:
        precompute = []
        original = setup.precompute_reference

        def timed(*a, **k):
            t = time.perf_counter()
            original(*a, **k)
            precompute.append(time.perf_counter() - t)

        setup.precompute_reference = timed
        r = setup.setup(params, Inputs.of(ws.round("tutor-r2")), ws.base, Path(tmp) / "ckpt")
        t0 = time.perf_counter()
        tokens = sum(loop.optimizer_step(r, step)[1] for step in range(args.steps))
        seconds = time.perf_counter() - t0
    return {
        "step_s": seconds / args.steps,
        "tokens": tokens,
        "precompute_s": sum(precompute),
        "examples": len(r.examples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["dpo", "rho1"], default="dpo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--mode", choices=["precompute", "per_step"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child.report(side(args, args.mode))
        return
    results = {}
    for mode in ("per_step", "precompute"):
        argv = [
            "--mode",
            mode,
            "--method",
            args.method,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
        ]
        results[mode] = child.run(__file__, argv, mode)
    import torch

    print(
        f"method={args.method} reference=start steps={args.steps} batch_size={args.batch_size} "
        f"max_length={args.max_length} device={'cuda' if torch.cuda.is_available() else 'cpu'} "
        f"examples={results['precompute']['examples']}"
    )
    for mode in ("per_step", "precompute"):
        r = results[mode]
        print(f"{mode:10s} {r['step_s']:7.3f} s/step  one-time reference {r['precompute_s']:6.2f} s")
    per, pre = results["per_step"], results["precompute"]
    saved = per["step_s"] - pre["step_s"]
    ratio = per["step_s"] / pre["step_s"]
    print(f"saving per step: {saved:.3f} s ({saved / per['step_s']:.0%}), speed ratio {ratio:.2f}x")
    if saved > 0:
        print(f"the one-time reference pass is repaid after {pre['precompute_s'] / saved:.1f} steps")


if __name__ == "__main__":
    main()
