"""eval@<round> (and eval_base@<lineage>): generate on the lineage's held-out eval prompts with the
round's model and report its metrics under the lineage's rules and gates, with deltas against the
previous round and the base."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import click

from . import ab
from .chat import prompt_ids
from .cli import PATH, lineage_view, params_of, round_options, say
from .generate import generate
from .io import read_json, replacing, write_json, write_jsonl
from .lm_loss import CountedTokenLoss, split_loss
from .metrics import check_gates, deltas
from .model import load_round, load_tokenizer
from .params import Lineage, Params, RuleParams
from .paths import METRICS, round_paths
from .prompts import prompts_from_split, reference_conversations
from .rules import score_text


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def turn_depth(messages: list[dict]) -> int:
    """How many student turns the reply follows: 1 for an opening answer."""
    return sum(m["role"] == "user" for m in messages)


def metrics_of(prompts: list[dict], texts: list[str], rules: RuleParams) -> dict:
    """Tutor metrics over the replies, from the same rules score uses: a rate is the share of
    replies that break (or meet) a rule, a mean is over the rule's [0, 1] values."""
    n = len(texts)
    if n == 0:
        return {"n": 0}
    scored = [score_text(t, rules, p["messages"], p["character_id"], p.get("tools")) for p, t in zip(prompts, texts)]
    values = [v for v, _ in scored]
    col = lambda rule: [v[rule] for v in values if rule in v]  # noqa: E731
    depths = [turn_depth(p["messages"]) for p in prompts]
    deep = [v["followup_question"] for v, d in zip(values, depths) if d >= 2]
    return {
        "n": n,
        "question_ratio": _mean(col("question_ratio")),
        "followup_rate": _mean(col("followup_question")),
        "mean_response_chars": _mean([len(t) for t in texts]),
        "mean_turn_depth": _mean(depths),
        "followup_rate_deep": _mean(deep),  # follow-ups at student turn 2 and later
        "balance": _mean(col("balance")),
        "politeness": _mean(col("politeness")),
        "verbosity": _mean(col("verbosity")),
        "language_compliance": _mean(col("language")),
        "meta_leak_rate": _mean([1.0 - x for x in col("meta_leakage")]),
        "repetition_rate": _mean([1.0 - x for x in col("repetition")]),
        "banned_word_rate": _mean([1.0 - x for x in col("banned_words")]),
        "tone_keyword_rate": _mean(col("tone")),
        # Over the replies that call a tool (None when none did).
        "tool_call_valid_rate": _mean(col("tool_call_valid")) if col("tool_call_valid") else None,
        "mean_score": _mean([s for _, s in scored]),
    }


def eval_config(params: Params, lineage: Lineage) -> str:
    """A short hash of everything that defines the metrics' scale: rules, prompts, decoding. Package
    compares a round with the current release only when both were measured under the same one."""
    rules = lineage.rules.model_dump(mode="json")
    ep = params.eval.model_dump(mode="json", exclude={"gates", "ab_prompts", "batch_size", "leakage_prompts"})
    parts = {
        "rules": rules,
        "eval": ep,
        "seed": params.seed,
        "system_prompts": lineage.system_prompts,
        "max_length": params.train.max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run(
    params: Params,
    lineage: Lineage,
    round_id: str,
    base_dir: Path,
    version_dir: Path,
    round_dir: Path,
    prev_metrics: Path | None,
    base_metrics: Path | None,
    out_file: Path,
    samples_file: Path,
    prev_samples: Path | None = None,
) -> dict:
    """`prev_samples`: the previous round's eval answers; with them, write the blinded A/B set
    (ab.csv, ab_key.json) next to this round's samples."""
    ep = params.eval
    # The same seed for every round: all rounds answer the same prompts.
    prompts = prompts_from_split(version_dir, "eval", ep.num_prompts, f"{params.seed}:eval", lineage.system_prompts)
    tok = load_tokenizer(base_dir)
    model = load_round(base_dir, round_dir)
    texts = generate(
        model,
        tok,
        [prompt_ids(tok, p["messages"], p.get("tools")) for p in prompts],
        batch_size=ep.batch_size,
        max_new_tokens=ep.max_new_tokens,
        temperature=ep.temperature,
        top_p=1.0,
        seed=params.seed,
        desc=f"eval@{round_id}",
    ).texts
    metrics = metrics_of(prompts, texts, lineage.rules)
    # Teacher-forced loss on the eval split's own assistant turns: how far the round drifted
    # from the data, next to how it behaves.
    held_out = reference_conversations(lineage.system_prompts, version_dir, "eval", ep.num_prompts)
    metrics["eval_loss"] = split_loss(CountedTokenLoss(model), tok, held_out, params.train.max_length, ep.batch_size)
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    failed = check_gates(metrics, lineage.gates)
    result = {
        "round": round_id,
        "lineage": lineage.name,
        **metrics,
        "passed": not failed,
        "failed_gates": failed,
        "eval_config": eval_config(params, lineage),
        # Which prompts: new eval data changes them, and then only the lift over the base (measured
        # on the same prompts) compares with a release measured on the old ones.
        "eval_prompts": hashlib.sha256(
            json.dumps([p["messages"] for p in prompts], sort_keys=True).encode()
        ).hexdigest()[:16],
    }
    if prev_metrics is not None:
        result["delta_vs_prev"] = deltas(metrics, read_json(prev_metrics))
    if base_metrics is not None:
        result["delta_vs_base"] = deltas(metrics, read_json(base_metrics))
    ab_files = [samples_file.parent / "ab.csv", samples_file.parent / "ab_key.json"] if prev_samples else []
    with replacing(samples_file, out_file, *ab_files) as (samples_tmp, out_tmp, *ab_tmp):
        write_jsonl(samples_tmp, ({**p, "response": t} for p, t in zip(prompts, texts)))
        if ab_tmp:
            prev_round = read_json(prev_metrics)["round"]
            ab.make(round_id, samples_tmp, prev_round, prev_samples, *ab_tmp, ep.ab_prompts, params.seed)
        write_json(out_tmp, result)
    return result


@click.command()
@round_options
@click.option("--lineage", default=None, help="With --round base: the lineage whose prompts and rules judge the base.")
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, version_dir, base_dir, lineage, metrics_dir):
    """Evaluate a round (or `--round base --lineage NAME`) on its lineage's eval split."""
    p = params_of(ctx)
    if round_id == "base":
        if lineage is None:
            raise click.UsageError(f"--round base needs --lineage (one of {', '.join(p.lineages)})")
        prev = None
    else:
        r = p.round(round_id)
        if lineage not in (None, r.lineage):
            raise click.UsageError(f"round {round_id} belongs to lineage {r.lineage}, not {lineage}")
        lineage = r.lineage
        prev = round_paths(r.prev, lineage, rounds_data, rounds_dir, metrics_dir)
    here = round_paths(round_id, lineage, rounds_data, rounds_dir, metrics_dir)
    result = run(
        p,
        p.lineage(lineage),
        round_id,
        base_dir,
        lineage_view(version_dir, lineage),
        here.model,
        prev_metrics=prev.metrics if prev else None,
        base_metrics=round_paths("base", lineage, rounds_data, rounds_dir, metrics_dir).metrics if prev else None,
        out_file=here.metrics,
        samples_file=here.eval_samples,
        prev_samples=prev.eval_samples if prev else None,
    )
    say(result)
