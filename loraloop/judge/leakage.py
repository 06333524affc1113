"""Leakage: does a lineage's adapter carry its character's tone into other characters? Every round's
adapter answers another lineage's eval prompts under that lineage's system prompt; the
tone_leakage_rate is the share of replies that use the round's own tone keywords (those the other
lineage does not use itself). Package applies a `tone_leakage_rate` gate from eval.gates or a
lineage's gates.

One stage for the fleet, since it reads every lineage's prompts; a round whose inputs did not
change keeps its entry from the last run (metrics/leakage.json persists), so a new round costs
only its own generations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..data.prompts import prompts_from_split
from ..files import read_json, replacing, write_json
from ..lm.chat import prompt_ids
from ..params import Lineage, Params
from ..workspace import Base, Round, Workspace
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
        keywords = own_keywords(lineage, other)
        if not keywords:
            continue
        prompts = prompts_from_split(
            ws.view(name), "eval", params.eval.leakage_prompts, f"{params.seed}:leakage", other.system_prompts
        )
        out[name] = {"keywords": keywords, "prompts": prompts}
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
    """The round's model on each other lineage's probe prompts: how many replies carry its tone."""
    from ..lm.generate import generate
    from ..lm.model import load_model, load_tokenizer

    tok = load_tokenizer(base.dir)
    model = load_model(base.dir, r.adapter)
    by_lineage, hits, n = {}, 0, 0
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
        leaked = [t for t in texts if tone(t, check["keywords"])]
        by_lineage[name] = {
            "n": len(texts),
            "rate": len(leaked) / len(texts),
            "keywords": check["keywords"],
            "replies": texts,  # to read what leaked
        }
        hits, n = hits + len(leaked), n + len(texts)
    return {"n": n, "tone_leakage_rate": hits / n, "by_lineage": by_lineage}


def run(ws: Workspace, out_file: Path) -> dict:
    """Every round's tone leakage into out_file; a round whose inputs did not change keeps its entry."""
    old = read_json(out_file) if out_file.is_file() else {}
    result = {r: old[r] for r in ws.params.retired if r in old}  # retired rounds keep what was measured
    for spec in ws.params.round_list:
        r = ws.round(spec.id)
        checks = probes(ws, ws.params.lineage(r.lineage))
        key = input_key(ws.params, ws.base.hash, r.adapter_hash, checks)
        if old.get(r.id, {}).get("key") == key:
            result[r.id] = old[r.id]
            continue
        none = {"n": 0, "tone_leakage_rate": None, "by_lineage": {}}
        measured = measure(ws.params, ws.base, r, checks) if checks else none
        result[r.id] = {"lineage": r.lineage, "key": key, **measured}
    with replacing(out_file) as tmp:
        write_json(tmp, result)
    return {round_id: v["tone_leakage_rate"] for round_id, v in result.items()}
