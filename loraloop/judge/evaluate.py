"""Evaluating a round (and a lineage's base round): greedy answers to the lineage's held-out eval
prompts, their metrics under the lineage's rules and gates, the eval-split loss, and deltas
against the previous round and the base."""

from __future__ import annotations

import hashlib
import json
import math

from ..data.prompts import prompts_from_split, reference_conversations, tool_items
from ..data.splits import load_split
from ..files import read_json, replacing, write_json, write_jsonl
from ..lm.chat import prompt_ids
from ..lm.generate import generate
from ..lm.loss import CountedTokenLoss, split_loss
from ..lm.model import load_model, load_tokenizer
from ..params import Lineage, Params, RuleParams
from ..workspace import Base, Round
from . import ab
from .gates import check_gates, deltas
from .rules import score_text
from .tool_eval import TOOL_METRICS, tool_metrics


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
        "n_deep": len(deep),  # the replies followup_rate_deep is over
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
        "n_tool_calls": len(col("tool_call_valid")),
        "mean_score": _mean([s for _, s in scored]),
    }


def eval_config(params: Params, lineage: Lineage) -> str:
    """A short hash of everything that defines the metrics' scale: rules, prompts, decoding. Package
    compares a round with the current release only when both were measured under the same one."""
    rules = lineage.rules.model_dump(mode="json")
    # What does not change a metric's scale: gates, how many A/B, leakage or tool items.
    unscaled = {"gates", "ab_prompts", "batch_size", "leakage_prompts", "tool_prompts"}
    ep = params.eval.model_dump(mode="json", exclude=unscaled)
    parts = {
        "rules": rules,
        "eval": ep,
        "seed": params.seed,
        "system_prompts": lineage.system_prompts,
        "max_length": params.train.max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def answer(params: Params, model, tok, prompts: list[dict], desc: str) -> list[str]:
    """The model's answers to the prompts, decoded as eval decodes (greedy by default)."""
    ep = params.eval
    return generate(
        model,
        tok,
        [prompt_ids(tok, p["messages"], p.get("tools")) for p in prompts],
        batch_size=ep.batch_size,
        max_new_tokens=ep.max_new_tokens,
        temperature=ep.temperature,
        top_p=1.0,
        seed=params.seed,
        desc=desc,
    ).texts


def answer_eval_prompts(params: Params, lineage: Lineage, r: Round, model, tok) -> tuple[list[dict], list[str]]:
    """The lineage's eval prompts (the same seed for every round: all rounds answer the same ones)
    and the round's greedy answers."""
    prompts = prompts_from_split(r.view, "eval", params.eval.num_prompts, f"{params.seed}:eval", lineage.system_prompts)
    return prompts, answer(params, model, tok, prompts, f"eval@{r.id}")


def answer_tool_items(params: Params, lineage: Lineage, r: Round, model, tok) -> tuple[list[dict], list[str]]:
    """The lineage's gold tool items (eval.tool_prompts of them, the same for every round) and the
    round's answers."""
    rows = load_split(r.view, "eval", lineage.characters)
    items = tool_items(rows, params.eval.tool_prompts, f"{params.seed}:tools", lineage.system_prompts)
    return items, answer(params, model, tok, items, f"eval tools@{r.id}") if items else []


def held_out_loss(params: Params, lineage: Lineage, r: Round, model, tok) -> float:
    """Teacher-forced loss on the eval split's own assistant turns: how far the round drifted from
    the data, next to how it behaves."""
    held_out = reference_conversations(lineage.system_prompts, r.view, "eval", params.eval.num_prompts)
    return split_loss(CountedTokenLoss(model), tok, held_out, params.train.max_length, params.eval.batch_size)


def prompts_hash(prompts: list[dict]) -> str:
    """Which prompts: new eval data changes them, and then only the lift over the base (measured on
    the same prompts) compares with a release measured on the old ones."""
    return hashlib.sha256(json.dumps([p["messages"] for p in prompts], sort_keys=True).encode()).hexdigest()[:16]


def run(params: Params, r: Round, base: Base) -> dict:
    """Round `r` (or a lineage's base round) on its lineage's eval prompts: metrics, gates, deltas
    against the previous round and the base, its answers, and a blinded A/B set against the
    previous round's answers."""
    lineage = params.lineage(r.lineage)
    tok = load_tokenizer(base.dir)
    model = load_model(base.dir, r.adapter)
    prompts, texts = answer_eval_prompts(params, lineage, r, model, tok)
    metrics = metrics_of(prompts, texts, lineage.rules)
    items, tool_texts = answer_tool_items(params, lineage, r, model, tok)
    if items:  # the gold tool items judge tool calls; the eval prompts' own count stays beside
        metrics.update(tool_metrics(items, tool_texts))
    else:
        metrics.update({k: None for k in TOOL_METRICS[1:]} | {"n_tool_items": 0})
    metrics["eval_loss"] = held_out_loss(params, lineage, r, model, tok)
    metrics["perplexity"] = math.exp(metrics["eval_loss"])
    failed = check_gates(metrics, lineage.gates)
    result = {
        "round": r.id,
        "lineage": lineage.name,
        **metrics,
        "passed": not failed,
        "failed_gates": failed,
        "eval_config": eval_config(params, lineage),
        "eval_prompts": prompts_hash(prompts),
    }
    if r.prev is not None:
        result["delta_vs_prev"] = deltas(metrics, read_json(r.prev.metrics))
        result["delta_vs_base"] = deltas(metrics, read_json(r.root.metrics))
    ab_files = list(r.ab_files) if r.prev is not None else []
    with replacing(r.eval_samples, r.tool_samples, r.metrics, *ab_files) as (samples_tmp, tools_tmp, out_tmp, *ab_tmp):
        write_jsonl(samples_tmp, ({**p, "response": t} for p, t in zip(prompts, texts)))
        write_jsonl(tools_tmp, ({**p, "response": t} for p, t in zip(items, tool_texts)))
        if ab_tmp:
            ab.make(r.id, samples_tmp, r.prev.id, r.prev.eval_samples, *ab_tmp, params.eval.ab_prompts, params.seed)
        write_json(out_tmp, result)
    return result
