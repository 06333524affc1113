"""A round at the roadmap's size: every stage of the pipeline at N on-policy samples, on a tiny random
model built from the embedded base's config with its real tokenizer (tests/tiny_model.py), so that
loraloop's own costs show rather than the model's FLOPs.

    python bench/scale.py [--sizes 1000,10000,20000] [--anchor 5000] [--steps 500] [--per-prompt 4]

For each N: a project copy whose data/raw holds N / per-prompt / 0.85 synthetic tutor conversations
(the demo's generator) and `--anchor` anchor examples, whose one round samples N completions
(N / per-prompt prompts, per-prompt each), scores them, trains `--steps` steps on the mix and is
evaluated, packaged and reported: `dvc repro` runs it all, and each stage records its wall time and
peak memory (.dvc/tmp/stage-times.jsonl, as `make demo` does). Prints a table per stage and the
growth exponents of time and memory from a log-log fit over the sizes. Targets: every stage linear
or better (time exponent <= 1.1), the data stages' memory flat in N, sample/score/train memory
bounded by the batch. Near-duplicate removal is off here (the generator's templates would fold
the corpus to a few thousand conversations); bench/data.py measures it at 1M conversations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from make_demo_data import conversation  # noqa: E402

EVAL_FRACTION = 0.15


def write_raw(raw: Path, n_conversations: int, n_anchor: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    raw.mkdir(parents=True)
    with (raw / "tutor.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n_conversations):
            conv = conversation(rng, i)
            conv["messages"][0]["content"] += f" (question {i})"  # every prompt its own
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    with (raw / "anchor.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n_anchor):
            f.write(
                json.dumps(
                    {
                        "instruction": f"Give me study tip number {i}.",
                        "response": f"Tip {i}: take a short break every half hour. What do you study next?",
                    }
                )
                + "\n"
            )


def shrink(params: dict, tiny: Path, n: int, steps: int, per_prompt: int) -> dict:
    params["base"] = {"source": "local", "path": str(tiny), "hub_id": None, "revision": None}
    params["collect"]["sources"] = [
        {"path": "data/raw/tutor.jsonl", "kind": "conversations", "dataset_source": "app_logs"},
        {
            "path": "data/raw/anchor.jsonl",
            "kind": "anchor",
            "format": "magpie",
            "dataset_source": "anchor",
            "character_id": "tutor",
            "require_opt_in": False,
        },
    ]
    params["collect"]["deletions"] = []
    params["scrub"]["near_dup_threshold"] = None
    params["lineages"] = {"tutor": params["lineages"]["tutor"]}
    params["rounds"] = {"tutor-r1": {"lineage": "tutor", "prev": "base"}}
    # top_p 1: a random model's next-token distribution is flat, so any nucleus is most of the
    # vocabulary and every step would sort it (a trained model's mostly fits in the top 256).
    params["sample"].update(
        num_prompts=n // per_prompt, samples_per_prompt=per_prompt, batch_size=64, max_new_tokens=32, max_negatives=0
    )
    params["sample"]["top_p"] = 1.0
    params["train"].update(steps=steps, batch_size=4, max_length=256, checkpoint_every=steps, eval_examples=16)
    params["eval"].update(num_prompts=16, batch_size=16, max_new_tokens=32, gates={})
    params["version"]["eval_fraction"] = EVAL_FRACTION
    return params


def project(dst: Path, tiny: Path, n: int, anchor: int, steps: int, per_prompt: int) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        if rel.startswith(("data/raw/", "tests/", "bench/", "dvc.lock")) or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    write_raw(dst / "data/raw", math.ceil(n / per_prompt / (1 - EVAL_FRACTION)) + 64, anchor)
    params = shrink(yaml.safe_load((ROOT / "params.yaml").read_text()), tiny, n, steps, per_prompt)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    commit = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], commit):  # dvclive wants a commit
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


def run_round(repo: Path) -> dict[str, dict]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dvc repro failed in {repo}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  dvc repro: {time.perf_counter() - t0:.0f} s")
    rows = [json.loads(line) for line in (repo / ".dvc/tmp/stage-times.jsonl").read_text().splitlines()]
    return {r["stage"].split("@")[0] if r["stage"] != "eval_base@tutor" else "eval_base": r for r in rows}


def exponent(xs: list[float], ys: list[float]) -> float:
    """The slope of log y against log x (least squares)."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,20000", help="on-policy samples per round, comma-separated")
    ap.add_argument("--anchor", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--per-prompt", type=int, default=4, help="samples per prompt")
    ap.add_argument("--keep", type=Path, default=None, help="build the projects under here and keep them")
    args = ap.parse_args()
    import tiny_model

    sizes = [int(n) for n in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        tiny = tiny_model.build(where / "tiny")
        for n in sizes:
            print(
                f"N = {n:,} samples ({n // args.per_prompt:,} prompts x {args.per_prompt}), {args.anchor:,} anchor, "
                f"{args.steps} steps"
            )
            repo = project(where / f"n{n}", tiny, n, args.anchor, args.steps, args.per_prompt)
            results[n] = run_round(repo)
    stages = [s for s in results[sizes[0]] if all(s in results[n] for n in sizes)]
    head = "".join(f"{f'N={n:,}':>22}" for n in sizes)
    print(f"\n{'stage':10}{head}   time exp  memory exp")
    for s in stages:
        cells = "".join(f"{results[n][s]['seconds']:8.2f} s {results[n][s]['peak_mb']:7,} MB" for n in sizes)
        t = exponent(sizes, [results[n][s]["seconds"] for n in sizes])
        m = exponent(sizes, [results[n][s]["peak_mb"] for n in sizes])
        longest = max(results[n][s]["seconds"] for n in sizes)
        flag = "  (under 1 s: start-up, no fit)" if longest < 1 else "" if t <= 1.1 else "  <- over 1.1"
        print(f"{s:10}{cells}   {t:8.2f}  {m:10.2f}{flag}")
    print(
        "targets: time exponent <= 1.1 for every stage; memory flat in N for the data stages, bounded by the "
        "batch for sample, score and train"
    )


if __name__ == "__main__":
    main()
