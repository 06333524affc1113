"""leakage: does a lineage's adapter carry its character's tone into other characters? Every round's
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

import click

from .chat import prompt_ids
from .cli import PATH, params_of, say
from .io import read_json, replacing, write_json
from .model import round_info
from .params import Lineage, Params
from .paths import LINEAGES, METRICS, MODELS, leakage_file, round_paths
from .prompts import prompts_from_split
from .rules import tone


def own_keywords(lineage: Lineage, other: Lineage) -> list[str]:
    """The lineage's tone keywords that the other lineage's characters do not use themselves."""
    mine = {k for c in lineage.characters for k in lineage.rules.tone_keywords.get(c, [])}
    theirs = {k.lower() for c in other.characters for k in other.rules.tone_keywords.get(c, [])}
    return sorted(k for k in mine if k.lower() not in theirs)


def probes(params: Params, lineage: Lineage, views: Path) -> dict[str, dict]:
    """Per other lineage (one with none of this lineage's characters: a variant shares its tone by
    design): its eval prompts under its own system prompts, and the keywords that must not appear."""
    out = {}
    for name in params.lineages:
        other = params.lineage(name)
        if set(other.characters) & set(lineage.characters):
            continue
        keywords = own_keywords(lineage, other)
        if not keywords:
            continue
        prompts = prompts_from_split(
            views / name, "eval", params.eval.leakage_prompts, f"{params.seed}:leakage", other.system_prompts
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


def measure(params: Params, base_dir: Path, round_dir: Path, checks: dict, desc: str) -> dict:
    from .generate import generate
    from .model import load_round, load_tokenizer

    tok = load_tokenizer(base_dir)
    model = load_round(base_dir, round_dir)
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
            desc=f"{desc} on {name}",
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


def run(params: Params, base_dir: Path, rounds_dir: Path, views: Path, out_file: Path) -> dict:
    old = read_json(out_file) if out_file.is_file() else {}
    base_hash = read_json(base_dir / "base.json")["hash"]
    result = {}
    for r in params.round_list:
        lineage = params.lineage(r.lineage)
        checks = probes(params, lineage, views)
        round_dir = round_paths(r.id, r.lineage, models=rounds_dir).model
        key = input_key(params, base_hash, round_info(round_dir).get("adapter_hash"), checks)
        if old.get(r.id, {}).get("key") == key:
            result[r.id] = old[r.id]
            continue
        measured = (
            measure(params, base_dir, round_dir, checks, f"leakage@{r.id}")
            if checks
            else {"n": 0, "tone_leakage_rate": None, "by_lineage": {}}
        )
        result[r.id] = {"lineage": r.lineage, "key": key, **measured}
    with replacing(out_file) as tmp:
        write_json(tmp, result)
    return {rid: v["tone_leakage_rate"] for rid, v in result.items()}


@click.command()
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--rounds-dir", type=PATH, default=MODELS, show_default=True)
@click.option("--views", type=PATH, default=LINEAGES, show_default=True, help="The lineages' dataset views.")
@click.option("--out", type=PATH, default=leakage_file(METRICS), show_default=True)
@click.pass_context
def cli(ctx, base_dir, rounds_dir, views, out):
    """Measure every round's tone leakage into the other lineages' characters."""
    say(run(params_of(ctx), base_dir, rounds_dir, views, out))
