"""Leakage and persona: does a lineage's adapter carry its character into other characters, and
does it sound like its own? Every round's adapter answers another lineage's eval prompts under
that lineage's system prompt; the tone_leakage_rate is the share of replies that use the round's
own tone keywords (those the other lineage does not use itself), the persona_leakage the share the
fleet's persona classifier (the persona stage) takes for one of the round's own characters. The
persona_match is the share of the round's eval answers it takes for the character they were for.
Package applies gates on all three from eval.gates or a lineage's gates.

The persona figures are computed from stored replies on every run (no generation), so a persona
classifier retrained for a new character re-judges every round without re-evaluating any.

One stage for the fleet, since it reads every lineage's prompts; a round whose inputs did not
change keeps its entry from the last run (metrics/leakage.json persists), so a new round costs
only its own generations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.prompts import prompts_from_split
from ..files import read_json, read_jsonl, replacing, write_json
from ..lm.chat import prompt_ids
from ..params import Lineage, Params
from ..workspace import Base, Round, Workspace
from .gates import LATER
from .persona import META as PERSONA_META
from .persona import Persona
from .rules import tone


def own_keywords(lineage: Lineage, other: Lineage) -> list[str]:
    """The lineage's tone keywords that the other lineage's characters do not use themselves."""
    mine = {k for c in lineage.characters for k in lineage.rules.tone_keywords.get(c, [])}
    theirs = {k.lower() for c in other.characters for k in other.rules.tone_keywords.get(c, [])}
    return sorted(k for k in mine if k.lower() not in theirs)


def probes(ws: Workspace, lineage: Lineage) -> dict[str, dict]:
    """Per other lineage (one with none of this lineage's characters: a variant shares its tone by
    design): its eval prompts under its own system prompts, and the keywords that must not appear."""
    params, out = ws.params, {}
    for name in params.lineages:
        other = params.lineage(name)
        if set(other.characters) & set(lineage.characters):
            continue
        prompts = prompts_from_split(
            ws.view(name), "eval", params.eval.leakage_prompts, f"{params.seed}:leakage", other.system_prompts
        )
        out[name] = {"keywords": own_keywords(lineage, other), "prompts": prompts}
    return out


def input_key(params: Params, base_hash: str, adapter_hash: str | None, checks: dict) -> str:
    ep = params.eval
    parts = {
        "base": base_hash,
        "adapter": adapter_hash,
        "checks": checks,
        "decoding": [ep.max_new_tokens, ep.temperature, params.seed],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def measure(params: Params, base: Base, r: Round, checks: dict) -> dict:
    """The round's model on each other lineage's probe prompts: its replies, and how many carry
    its tone words."""
    from ..lm.generate import generate
    from ..lm.model import load_model, load_tokenizer

    tok = load_tokenizer(base.dir)
    model = load_model(base.dir, r.adapter)
    by_lineage, hits, n_tone = {}, 0, 0
    for name, check in checks.items():
        texts = generate(
            model,
            tok,
            [prompt_ids(tok, p["messages"], p.get("tools")) for p in check["prompts"]],
            batch_size=params.eval.batch_size,
            max_new_tokens=params.eval.max_new_tokens,
            temperature=params.eval.temperature,
            top_p=1.0,
            seed=params.seed,
            desc=f"leakage@{r.id} on {name}",
        ).texts
        keywords = check["keywords"]
        leaked = [t for t in texts if keywords and tone(t, keywords)]
        by_lineage[name] = {
            "n": len(texts),
            "rate": len(leaked) / len(texts) if keywords and texts else None,
            "keywords": keywords,
            "replies": texts,  # to read what leaked
        }
        hits, n_tone = hits + len(leaked), n_tone + (len(texts) if keywords else 0)
    n = sum(v["n"] for v in by_lineage.values())
    return {"n": n, "tone_leakage_rate": hits / n_tone if n_tone else None, "by_lineage": by_lineage}


def persona_of(ws: Workspace) -> Persona | None:
    """The fleet's persona classifier, when the persona stage could train one."""
    if not (ws.persona / PERSONA_META).is_file():
        return None
    judge = Persona(ws.persona)
    return judge if judge.available else None


def persona_figures(judge: Persona | None, entry: dict, r: Round, characters: list[str]) -> dict:
    """persona_match on the round's eval answers, persona_leakage on its replies to the other
    lineages' prompts (None without a classifier or without replies)."""
    if judge is None:
        return {"persona_match": None, "persona_leakage": None}
    answers = list(read_jsonl(r.eval_samples)) if Path(r.eval_samples).is_file() else []
    said = judge.predict([a["response"] for a in answers])
    match = sum(s == a["character_id"] for s, a in zip(said, answers)) / len(answers) if answers else None
    replies = [t for v in entry.get("by_lineage", {}).values() for t in v["replies"]]
    return {"persona_match": match, "persona_leakage": judge.share(replies, characters)}


def run(ws: Workspace, out_file: Path) -> dict:
    """Every round's leakage and persona figures into out_file (and each lineage's base's persona
    match, as base@<lineage>); a round whose inputs did not change keeps its replies."""
    old = read_json(out_file) if out_file.is_file() else {}
    result = {r: old[r] for r in ws.params.retired if r in old}  # retired rounds keep what was measured
    judge = persona_of(ws)
    for name in ws.params.lineages:
        match = persona_figures(judge, {}, ws.round("base", name), [])["persona_match"]
        result[f"base@{name}"] = {"lineage": name, "persona_match": match}
    for spec in ws.params.round_list:
        r = ws.round(spec.id)
        lineage = ws.params.lineage(r.lineage)
        checks = probes(ws, lineage)
        key = input_key(ws.params, ws.base.hash, r.adapter_hash, checks)
        if old.get(r.id, {}).get("key") == key:
            entry = old[r.id]
        else:
            none = {"n": 0, "tone_leakage_rate": None, "by_lineage": {}}
            entry = {"lineage": r.lineage, "key": key, **(measure(ws.params, ws.base, r, checks) if checks else none)}
        result[r.id] = {**entry, **persona_figures(judge, entry, r, lineage.characters)}
    with replacing(out_file) as tmp:
        write_json(tmp, result)
    return {k: {m: v.get(m) for m in sorted(LATER) if m in v} for k, v in result.items()}
