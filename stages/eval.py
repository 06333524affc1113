"""eval@rN: generate on held-out eval prompts with the round's model and report tutor metrics,
with deltas against the previous round and the base."""

from __future__ import annotations

from pathlib import Path

from . import ab
from .generate import answer
from .io import read_json, write_json, write_jsonl
from .params import Params
from .prompts import prompts_from_split
from .rules import followup_question, question_ratio, score_text


def metrics_of(texts: list[str], params: Params) -> dict:
    n = len(texts)
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "question_ratio": sum(question_ratio(t) for t in texts) / n,
        "followup_rate": sum(followup_question(t) for t in texts) / n,
        "mean_response_chars": sum(len(t) for t in texts) / n,
        "mean_score": sum(score_text(t, params.score)[1] for t in texts) / n,
    }


def check_gates(metrics: dict, gates: dict) -> list[dict]:
    """The gates a round fails, each with the value and its bounds."""
    failed = []
    for name, gate in gates.items():
        if name not in metrics:
            raise KeyError(f"params.yaml eval.gates.{name}: no such metric (have {sorted(metrics)})")
        value = metrics[name]
        if (gate.min is not None and value < gate.min) or (gate.max is not None and value > gate.max):
            failed.append({"metric": name, "value": value, "min": gate.min, "max": gate.max})
    return failed


def deltas(now: dict, then: dict) -> dict:
    return {k: now[k] - then[k] for k in now if k != "n" and k in then and isinstance(now[k], float)}


def run(params: Params, round_id: str, base_dir: Path, version_dir: Path, round_dir: Path,
        prev_metrics: Path | None, base_metrics: Path | None, out_file: Path, samples_file: Path,
        prev_samples: Path | None = None) -> dict:
    """`prev_samples`: the previous round's eval answers; with them, write the blinded A/B set
    (ab.csv, ab_key.json) next to this round's samples."""
    ep = params.eval
    # The same seed for every round: all rounds answer the same prompts.
    prompts = prompts_from_split(version_dir, "eval", ep.num_prompts, f"{params.seed}:eval", params.system_prompts)
    texts, _ = answer(
        base_dir, round_dir, prompts, batch_size=ep.batch_size, max_new_tokens=ep.max_new_tokens,
        temperature=ep.temperature, top_p=1.0, seed=params.seed, desc=f"eval@{round_id}",
    )
    write_jsonl(samples_file, ({**p, "response": t} for p, t in zip(prompts, texts)))
    if prev_samples is not None:
        ab.make(round_id, samples_file, read_json(prev_metrics)["round"], prev_samples,
                samples_file.parent / "ab.csv", samples_file.parent / "ab_key.json", ep.ab_prompts, params.seed)
    metrics = metrics_of(texts, params)
    failed = check_gates(metrics, ep.gates)
    result = {"round": round_id, **metrics, "passed": not failed, "failed_gates": failed}
    if prev_metrics is not None:
        result["delta_vs_prev"] = deltas(metrics, read_json(prev_metrics))
    if base_metrics is not None:
        result["delta_vs_base"] = deltas(metrics, read_json(base_metrics))
    write_json(out_file, result)
    return result
