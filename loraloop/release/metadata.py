"""A released version's metadata.yaml: what it is (base, adapter, tokenizer by hash), how it was
trained, on what data, how it was judged (every round of its lineage and the base), and what
changed since the version before it."""

from __future__ import annotations

from ..data.manifest import records_by_source
from ..files import read_json, sha256_file
from ..judge.gates import deltas
from ..judge.tool_eval import TOOL_METRICS
from ..params import Lineage
from ..workspace import Workspace
from .choose import Candidates
from .registry import now_utc


def changes_since(cur: dict | None, ev: dict, manifest_sha256: str, base_hash: str) -> dict | None:
    """What changed from the version in service `cur` (None for a first release)."""
    if cur is None:
        return None
    old = cur["evaluation"][cur["round"]]
    return {
        "from_version": cur["version"],
        "data_changed": cur["data"]["manifest_sha256"] != manifest_sha256,
        "metric_deltas": deltas(ev, old),
        "evaluation": old,  # the previous version's own numbers, for the model card's table
        "base_changed": cur["base_model"]["hash"] != base_hash,
        "by_source_before": cur["data"].get("by_source"),
    }


def data_section(ws: Workspace, lineage: Lineage, manifest_sha256: str) -> dict:
    """The dataset version the lineage's characters trained on: counts, sources, scrub's counts."""
    manifest = read_json(ws.version / "manifest.json")
    counts = {c: n for c, n in manifest["counts"].items() if c in lineage.characters}
    return {
        "manifest_sha256": manifest_sha256,
        "counts": counts,
        "by_source": records_by_source(counts),
        "negatives": sum(n.get("negatives", {}).get("total", 0) for n in counts.values()),
        "sources": [s.model_dump() for s in ws.params.collect.sources],
        "scrub": read_json(ws.data_metrics)["scrub"],
    }


def build_metadata(ws: Workspace, lineage: Lineage, version: str, round_id: str, c: Candidates, cur) -> dict:
    """The metadata of `version`, the release of round `round_id`; `cur`: the version in service."""
    params, base = ws.params, ws.base.info
    info = ws.round(round_id).info
    manifest_sha256 = sha256_file(ws.version / "manifest.json")
    return {
        "name": lineage.release,
        "lineage": lineage.name,
        "version": version,
        "created_at": now_utc(),
        "round": round_id,
        "characters": lineage.characters,
        "routes": lineage.routes,
        "system_prompts": lineage.system_prompts,
        "primary_metric": params.package.primary_metric,
        "base_model": {k: v for k, v in base.items() if k != "files"},
        "tokenizer_sha256": ws.base.tokenizer_sha256,
        "adapter_sha256": info["adapter_hash"],
        "training": {
            "method": info["train"].get("method", "sft"),
            "init": info["init"],
            # What DPO / Rho-1 optimized against (the base, or the adapter the round started
            # from), by hash; None for plain SFT.
            "reference": info.get("reference"),
            "params": params.for_round(round_id).train.model_dump(),
            "stats": info["train"],
        },
        "data": data_section(ws, lineage, manifest_sha256),
        "changes_from_previous": changes_since(cur, c.evals[round_id], manifest_sha256, ws.base.hash),
        **tool_use(c.evals[round_id]),
        **judges(ws, lineage, info),
        "evaluation": {"base": c.base_eval, **c.history, **c.evals},
    }


def judges(ws: Workspace, lineage: Lineage, info: dict) -> dict:
    """The lineage's reward model as measured on held-out conversations, the rule score beside
    (metrics/<lineage>/judge.json), the persona classifier's accuracy (metrics/persona.json), and
    the judge that scored the round's samples, if one did."""
    path, persona_file = ws.metrics / lineage.name / "judge.json", ws.metrics / "persona.json"
    if not path.is_file():
        return {}
    j = read_json(path)["reward"]
    reward = {k: j.get(k) for k in ("available", "reason", "labels", "held_out", "rule_baseline")}
    p = read_json(persona_file) if persona_file.is_file() else {"available": False, "reason": "not trained"}
    persona = {k: p.get(k) for k in ("available", "reason", "held_out")}
    return {"judges": {"reward": reward, "persona": persona, "scored_by": info.get("judge")}}


def tool_use(ev: dict) -> dict:
    """For a lineage judged on gold tool conversations: tool_accuracy (the round's
    tool_call_accuracy) and every tool metric with what it was measured on."""
    if not ev.get("n_tool_items"):
        return {}
    keys = (*TOOL_METRICS, "n_tool_items", "n_tool_calls")
    return {"tool_accuracy": ev.get("tool_call_accuracy"), "tool_use": {k: ev.get(k) for k in keys}}
