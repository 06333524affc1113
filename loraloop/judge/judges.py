"""The learned judges, trained on what the loop collected.

- judge@<lineage>: the lineage's reward model (learned.py) on the labelled replies of its view
  and its filled-in A/B sheets (labels.py), with the base's hidden states and the rules' values as
  features (features.py); score uses it with `score.reward_model.kind: learned`. Out:
  models/judges/<lineage>/ (the model as numbers and JSON, and the label rejects),
  metrics/<lineage>/judge.json (held-out figures beside the rules'), and the calibration points
  under reports/judges/<lineage>/.
- persona (one stage for the fleet): the persona classifier (persona.py) over every lineage's
  characters and the base's own replies ("none of them"). The leakage stage applies it to each
  round's eval answers (persona_match) and to its answers to other lineages' prompts
  (persona_leakage), so a new character retrains it without re-evaluating any round. Out:
  models/persona/ and metrics/persona.json."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from ..data.splits import load_split
from ..files import replacing, write_json, write_jsonl
from ..params import DataError, Lineage, Params
from ..workspace import Base
from . import learned, persona
from .features import RULES, FeatureCache, hidden_features, item_rule_values, rule_features
from .labels import Example, from_ab_sheets, from_view
from .rules import weighted_total

REJECTS = "rejects.jsonl"


def labelled(params: Params, lineage: Lineage, view: Path) -> tuple[list[Example], list[dict]]:
    """The lineage's labelled replies and the A/B rows refused (file, line, reason)."""
    sheets = Path(params.judge.ab_dir) / lineage.name
    only = lineage.characters[0] if len(lineage.characters) == 1 else None
    ab, rejects = from_ab_sheets(sheets, only)
    return from_view(view, lineage.characters) + ab, rejects


def as_items(examples: list[Example]) -> list[tuple]:
    return [(e.context, e.reply, e.character_id, e.tools) for e in examples]


def persona_data(train: list[dict], base_texts: list[str]) -> tuple[list, list, list]:
    """Every assistant reply of the version's train split, labelled with its character, and the
    base's own replies as `none`."""
    texts, labels, groups = [], [], []
    for row in train:
        for m in row["messages"]:
            if m["role"] == "assistant" and isinstance(m.get("content"), str) and m["content"].strip():
                texts.append(m["content"])
                labels.append(row["character_id"])
                groups.append(row["id"])
    for i, text in enumerate(base_texts):
        if text.strip():
            texts.append(text)
            labels.append(persona.NONE)
            groups.append(f"base:{i}")
    return texts, labels, groups


def base_prompts(train: list[dict], n: int, seed: int) -> list[list[dict]]:
    """n opening user turns of the version's train split (every character's), the same ones each
    run: what the base answers without any character's system prompt."""
    openings = {}
    for row in train:
        first = next((m for m in row["messages"] if m["role"] == "user"), None)
        if first is not None and isinstance(first.get("content"), str):
            key = hashlib.sha256(f"{seed}:{row['id']}".encode()).hexdigest()
            openings[key] = [{"role": "user", "content": first["content"]}]
    return [openings[k] for k in sorted(openings)[:n]]


def base_replies(params: Params, model, tok, train: list[dict]) -> list[str]:
    """The base's replies to base_prompts, sampled as sample samples (seeded, so the same each run):
    the varied replies of a model that is no character describe "none" better than one greedy path."""
    from ..lm.chat import prompt_ids
    from ..lm.generate import generate

    prompts = base_prompts(train, params.judge.base_replies, params.seed)
    if not prompts:
        return []
    return generate(
        model,
        tok,
        [prompt_ids(tok, p) for p in prompts],
        batch_size=params.eval.batch_size,
        max_new_tokens=params.eval.max_new_tokens,
        temperature=params.sample.temperature,
        top_p=params.sample.top_p,
        seed=params.seed,
        desc="persona: base replies",
    ).texts


def train_reward(params: Params, lineage: Lineage, base: Base, examples: list[Example], cache: FeatureCache) -> tuple:
    """The reward model on the examples (the base loaded only when there are labels enough)."""
    items = as_items(examples)
    values = item_rule_values(items, lineage.rules)
    weights = lineage.rules.weights.model_dump()
    rules, rule_scores = rule_features(values), [weighted_total(v, weights) for v in values]
    y = np.array([e.label for e in examples])
    hidden = np.zeros((len(items), 0), dtype=np.float32)
    if min(int((y == 1).sum()), int((y == 0).sum())) >= params.judge.min_per_class:
        from ..lm.model import load_base, load_tokenizer

        jp = params.judge
        model, tok = load_base(base.dir).eval(), load_tokenizer(base.dir)
        hidden = hidden_features(model, tok, base.hash, items, jp.max_length, jp.batch_size, cache)
    groups, pairs = [e.group for e in examples], [e.pair for e in examples]
    return learned.train(hidden, rules, rule_scores, y, groups, pairs, params.judge, params.seed)


def run(
    params: Params,
    lineage: Lineage,
    view: Path,
    base: Base,
    out_dir: Path,
    metrics_file: Path,
    plots_dir: Path,
    cache_file: Path,
) -> dict:
    """judge@<lineage>: the reward model, its report and its calibration points."""
    examples, rejects = labelled(params, lineage, view)
    cache = FeatureCache(cache_file)
    reward_model, reward = train_reward(params, lineage, base, examples, cache)
    cache.save()
    sources: dict[str, dict] = {}
    for e in examples:
        sources.setdefault(e.source, {"good": 0, "bad": 0})["good" if e.label else "bad"] += 1
    meta = {"lineage": lineage.name, "base": base.hash, "max_length": params.judge.max_length, "rules": RULES}
    with replacing(out_dir, metrics_file, plots_dir) as (out_tmp, metrics_tmp, plots_tmp):
        learned.save(out_tmp, reward_model, reward, meta)
        write_jsonl(out_tmp / REJECTS, rejects)
        summary = {
            "lineage": lineage.name,
            "label_sources": sources,
            "label_rejects": len(rejects),
            "reward": {k: v for k, v in reward.items() if k != "calibration"},
        }
        write_json(metrics_tmp, summary)
        write_calibration(plots_tmp, reward.get("calibration", []))
    return {
        "reward": reward["held_out"]["roc_auc"] if reward["available"] else reward["reason"],
        "rule_baseline": reward["rule_baseline"]["roc_auc"] if reward["available"] else None,
        "label_rejects": len(rejects),
    }


def run_persona(params: Params, version: Path, base: Base, out_dir: Path, metrics_file: Path) -> dict:
    """persona: one classifier over every character of the dataset version and the base's replies
    (params.yaml's lineages do not enter: a gate or a prompt edited reruns nothing here)."""
    from ..lm.model import load_base, load_tokenizer

    characters = sorted(d.name for d in (Path(version) / "splits").iterdir() if d.is_dir())
    if persona.NONE in characters:
        raise DataError(
            f"{version}/splits/{persona.NONE}: {persona.NONE!r} is the persona classifier's word for the base's "
            "own replies, not a character id; rename the character"
        )
    model, tok = load_base(base.dir).eval(), load_tokenizer(base.dir)
    train = load_split(version, "train")
    texts, labels, groups = persona_data(train, base_replies(params, model, tok, train))
    fitted, report = persona.train(texts, labels, groups, [*characters, persona.NONE], params.judge, params.seed)
    with replacing(out_dir, metrics_file) as (out_tmp, metrics_tmp):
        persona.save(out_tmp, fitted, report, {"base": base.hash})
        write_json(metrics_tmp, report)
    return {"accuracy": report["held_out"]["accuracy"]} if report["available"] else {"unavailable": report["reason"]}


def write_calibration(plots_dir: Path, points: list[dict]) -> None:
    """One CSV per judge (learned, rules): predicted probability against the observed share of
    good replies on the held-out labels; `dvc plots` draws each file as a line."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for judge in ("learned", "rules"):
        with (plots_dir / f"{judge}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["predicted", "observed", "n"])
            w.writeheader()
            for p in points:
                if p["judge"] == judge:
                    w.writerow(
                        {k: round(p[k], 6) if isinstance(p[k], float) else p[k] for k in ("predicted", "observed", "n")}
                    )
