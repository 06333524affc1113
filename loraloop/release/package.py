"""Packaging: per lineage, release the round choose.py picks into its release directory (archive,
install or canary, history, changelog, model card) or record why not; then routing.json maps
every lineage's routes to its release.

The release directories are a DVC `persist` output: they survive reruns, so they hold the current
release to compare against and the archive of every version (registry.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..files import read_json, replacing, sha256_tree, write_json
from ..lm.vllm_lora import adapter_config, problems
from ..params import Lineage, Params
from ..workspace import Workspace
from . import registry
from .choose import Candidates, choose, leakage_gates
from .metadata import build_metadata


def candidates(ws: Workspace, lineage: Lineage, leakage: dict) -> Candidates:
    """The lineage's rounds as package weighs them: evaluations with the leakage stage's figures, adapters, and
    (with package.vllm_servable) what vLLM would refuse in each."""
    rounds = [ws.round(round_id) for round_id in ws.params.rounds_of(lineage.name)]
    evals = {r.id: read_json(r.metrics) for r in rounds}
    leakage_gates(evals, leakage, lineage.gates)
    unservable = {}
    if ws.params.package.vllm_servable:
        for r in rounds:
            adapter = r.model / "adapter"
            unservable[r.id] = problems(adapter_config(adapter)) if (adapter / "adapter_config.json").is_file() else []
    return Candidates(
        evals=evals,
        adapters={r.id: r.info["adapter_hash"] for r in rounds},
        unservable=unservable,
        base_eval={**read_json(ws.round("base", lineage.name).metrics), **base_persona(leakage, lineage.name)},
        base_hash=ws.base.hash,
        history={r: read_json(p) for r in ws.params.retired_of(lineage.name) if (p := ws.round(r).metrics).is_file()},
    )


def base_persona(leakage: dict, lineage: str) -> dict:
    """The base's persona_match under the lineage's prompts, as the leakage stage measured it."""
    value = leakage.get(f"base@{lineage}", {}).get("persona_match")
    return {} if value is None else {"persona_match": value}


def write_plots(params: Params, lineage: Lineage, evaluation: dict, out: Path) -> list[str]:
    """The lineage's metrics by round (the primary metric and the gated ones), as SVG and PNG for
    the model card."""
    from ..judge.charts import line_chart, write_png, write_svg

    names = [params.package.primary_metric] + [g for g in lineage.gates if g != params.package.primary_metric]
    names = [n for n in names if all(isinstance(ev.get(n), (int, float)) for ev in evaluation.values())]
    rows = [{"round": round_id, **{n: ev[n] for n in names}} for round_id, ev in evaluation.items()]
    chart = line_chart(rows, "round", names, f"{lineage.name}: metrics by round")
    write_svg(chart, out / "trajectory.svg")
    write_png(chart, out / "trajectory.png")
    return ["plots/trajectory.svg", "plots/trajectory.png"]


def merge_into(release_dir: Path, base_dir: Path) -> None:
    """base + adapter folded into one model, for servers that take a single model."""
    from peft import PeftModel

    from ..lm.model import load_base, load_tokenizer

    merged = PeftModel.from_pretrained(load_base(base_dir), release_dir / "adapter").merge_and_unload()
    merged.save_pretrained(release_dir / "merged", safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(release_dir / "merged")


def run(ws: Workspace, out_root: Path, routing_file: Path, report_file: Path) -> dict:
    """Decide for every lineage, then update the release directories, routing and report together:
    the work happens on copies that replace them only when all of it succeeded."""
    params = ws.params
    lineages = [params.lineage(name) for name in params.lineages]
    rels = [out_root / lin.release for lin in lineages]
    leakage = read_json(ws.leakage) if ws.leakage.is_file() else {}
    with replacing(*rels, routing_file, report_file) as temps:
        *works, routing_tmp, report_tmp = temps
        if routing_file.is_file():
            shutil.copy2(routing_file, routing_tmp)
        else:
            write_json(routing_tmp, {})
        decisions = {}
        for lin, rel, work in zip(lineages, rels, works):
            if rel.is_dir():
                shutil.copytree(rel, work)
            work.mkdir(parents=True, exist_ok=True)
            decisions[lin.name] = release_round(ws, lin, work, leakage)
            if params.package.merge and registry.current(work) is not None:
                merge_into(work, ws.base.dir)
            registry.update_routing(routing_tmp, work, named=rel)  # the release's real place, not the copy
        write_json(report_tmp, decisions)
    return decisions


def decision(released: bool, version: str | None, round_id: str | None, rel: Path, why: str) -> dict:
    ro = registry.rollout(rel)
    return {
        "released": released,
        "version": version,
        "round": round_id,
        "stable": ro["stable"],
        "canary": ro["canary"],
        "reason": why,
    }


def next_version(params: Params, lineage: Lineage, rel: Path, cur: dict | None, base_hash: str, ev: dict) -> str:
    """The next minor of package.major; a new base is a new major version: v0.x -> v1.0. Tagged
    package.tag, or package.tools_tag when the round was judged on tool conversations (v0.3-tools)."""
    major, first = params.package.major, 1
    if cur is not None and cur["base_model"]["hash"] != base_hash:
        major, first = max(major, int(registry.VERSION.match(cur["version"])["major"]) + 1), 0
    tag = params.package.tag or (params.package.tools_tag if ev.get("n_tool_items") else None)
    return registry.next_version(rel, lineage.release, major, tag, first)


def release_round(ws: Workspace, lineage: Lineage, rel: Path, leakage: dict) -> dict:
    """Release the lineage's chosen round into `rel` (archive, install or canary, history,
    changelog) or record why not."""
    c = candidates(ws, lineage, leakage)
    cur = registry.serving(rel)
    round_id, why = choose(ws.params, lineage, c, cur, registry.withdrawn(rel))
    if (rel / "merged").exists():
        shutil.rmtree(rel / "merged")
    if round_id is None:
        registry.record(rel, {"action": "keep", "version": cur["version"] if cur else None, "reason": why})
        return decision(False, cur["version"] if cur else None, cur["round"] if cur else None, rel, why)
    version = next_version(ws.params, lineage, rel, cur, ws.base.hash, c.evals[round_id])
    metadata = build_metadata(ws, lineage, version, round_id, c, cur)
    archive = rel / "versions" / version
    if archive.exists():
        shutil.rmtree(archive)
    shutil.copytree(ws.round(round_id).model / "adapter", archive / "adapter")
    metadata["adapter_tree_sha256"] = sha256_tree(archive / "adapter")[0]
    metadata["plots"] = write_plots(ws.params, lineage, metadata["evaluation"], archive / "plots")
    (archive / "metadata.yaml").write_text(
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    share = install(ws.params, rel, version)
    rollout = "stable" if share is None else "canary"
    event = {"action": "release", "version": version, "round": round_id, "rollout": rollout, "reason": why}
    registry.record(rel, event)
    registry.changelog_line(rel, changelog_entry(metadata, c.evals[round_id], cur, ws.base.hash, share))
    return decision(True, version, round_id, rel, why)


def install(params: Params, rel: Path, version: str) -> float | None:
    """The new version to canary for package.canary_share of users (when a stable version serves:
    returns the share) or stable (returns None)."""
    share, stable = params.package.canary_share, registry.rollout(rel)["stable"]
    if share is not None and stable is not None:
        registry.set_rollout(rel, stable, version, share)
        return share
    registry.make_stable(rel, version)
    return None


def changelog_entry(metadata: dict, ev: dict, cur: dict | None, base_hash: str, share: float | None) -> str:
    """The release's CHANGELOG.md line: when, what, from which round, to whom (a canary's `share`),
    what changed, its metrics."""
    shown = ", ".join(f"{k}={ev[k]:.3f}" for k in ev if isinstance(ev[k], float))
    where = f" (canary for {share:.0%} of users)" if share is not None else ""
    base_note = ""
    if cur is not None and cur["base_model"]["hash"] != base_hash:
        base_note = f"; base model changed ({cur['base_model']['hash'][:12]} -> {base_hash[:12]}), new major version"
    negatives = metadata["data"]["negatives"]
    neg_note = f"; trained against {negatives} negatives" if negatives else ""
    made = f"{metadata['created_at']} {metadata['version']} from {metadata['round']}"
    return f"{made}{where}{base_note}{neg_note}: {shown}"
