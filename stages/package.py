"""package: per lineage, release the latest round that passed its gates (tone leakage included)
and beats the version in service on the primary metric (higher is better); otherwise keep it and
say why. routing.json maps every lineage's characters to its release.

The release directory is a DVC `persist` output: it survives reruns, so it can hold the current
release to compare against and the archive of every version (see stages/release.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import yaml

from . import release
from .cli import PATH, params_of, say
from .io import read_json, replacing, sha256_file, sha256_tree, write_json
from .manifest import records_by_source
from .metrics import LATER, check_gates, deltas
from .params import Lineage, Params
from .paths import METRICS, MODELS, leakage_file, round_paths
from .vllm_lora import adapter_config, problems


def choose(
    params: Params,
    lineage: Lineage,
    evals: dict[str, dict],
    adapters: dict[str, str],
    cur: dict | None,
    withdrawn: dict[str, str] | None = None,
    unservable: dict[str, list[str]] | None = None,
    base_hash: str | None = None,
    base_eval: dict | None = None,
) -> tuple[str | None, str]:
    """The round to release and why, or None and why not. `adapters`: round id -> adapter hash;
    `withdrawn`: version -> adapter hash of the versions rolled back from (never released again);
    `unservable`: round id -> why vLLM could not serve its adapter; `base_hash`: the base the rounds
    were trained on (a release on another base does not compare: the gates decide); `base_eval`:
    the base under the same eval, for the lift when the eval prompts changed."""
    withdrawn_by_hash = {h: v for v, h in (withdrawn or {}).items()}
    metric = params.package.primary_metric
    cur_eval = cur["evaluation"][cur["round"]] if cur else None
    cur_value = cur_eval[metric] if cur else None
    why_not = []
    for rid in reversed(params.rounds_of(lineage.name)):
        ev = evals[rid]
        if metric not in ev:
            raise KeyError(f"package.primary_metric {metric!r} is not in the evaluation of {rid} (has {sorted(ev)})")
        if not ev["passed"]:
            failed = ", ".join(f"{g['metric']}={g['value']:.3f}" for g in ev["failed_gates"])
            why_not.append(f"{rid} failed gates ({failed})")
            continue
        if (unservable or {}).get(rid):
            why_not.append(f"{rid} cannot be served by vLLM: {'; '.join(unservable[rid])}")
            continue
        if cur is not None and adapters[rid] == cur["adapter_sha256"]:
            why_not.append(f"{rid} is already released as {cur['version']}")
            continue
        if adapters[rid] in withdrawn_by_hash:
            version = withdrawn_by_hash[adapters[rid]]
            why_not.append(
                f"{rid} is {version}, withdrawn by a rollback "
                f"(`loraloop release restore {lineage.release} {version}` allows it again)"
            )
            continue
        # Scores measured under other rules, prompts or decoding do not compare: then the gates decide.
        same_base = cur is None or base_hash is None or cur["base_model"]["hash"] == base_hash
        comparable = cur is not None and same_base and cur_eval.get("eval_config") == ev.get("eval_config")
        # Other eval prompts (the eval split grew): compare the lift over the base, which each side
        # measured on its own prompts.
        lift = comparable and cur_eval.get("eval_prompts") != ev.get("eval_prompts") and base_eval is not None
        value, against = ev[metric], cur_value
        why_lift = "other eval prompts: the eval split changed"
        if lift and cur_eval.get("eval_prompts") is None:
            why_lift = f"{cur['version']} did not record its eval prompts"
        if lift:
            value, against = ev[metric] - base_eval[metric], cur_value - cur["evaluation"]["base"][metric]
        if comparable and value <= against:
            if lift:
                why_not.append(
                    f"{rid} {metric} lift over the base {value:+.4f} does not beat {cur['version']}'s "
                    f"{against:+.4f} ({why_lift})"
                )
            else:
                why_not.append(f"{rid} {metric}={ev[metric]:.4f} does not beat {cur['version']} ({cur_value:.4f})")
            continue
        if cur is None:
            beats = "first release"
        elif lift:
            beats = f"lift over the base {value:+.4f} beats {cur['version']}'s {against:+.4f} ({why_lift})"
        elif comparable:
            beats = f"beats {cur['version']} ({cur_value:.4f})"
        elif not same_base:
            beats = f"the base model changed since {cur['version']}, so the values do not compare"
        else:
            beats = (
                f"{cur['version']} ({metric}={cur_value:.4f}) was measured under another eval config "
                f"(score rules, prompts or decoding), so the values do not compare"
            )
        skipped = f"; passed over: {'; '.join(why_not)}" if why_not else ""
        return rid, f"{rid} passed its gates, {metric}={ev[metric]:.4f}, {beats}{skipped}"
    return None, "; ".join(why_not) or "no rounds"


def leakage_gates(evals: dict[str, dict], leakage: dict, gates: dict) -> None:
    """Puts each round's tone_leakage_rate into its evaluation and fails the round on a
    tone_leakage_rate gate (a round with no other lineage to leak into has nothing to fail)."""
    later = {k: g for k, g in gates.items() if k in LATER}
    for rid, ev in evals.items():
        value = leakage.get(rid, {}).get("tone_leakage_rate")
        ev["tone_leakage_rate"] = value
        if value is not None and later:
            failed = check_gates({"tone_leakage_rate": value}, later, later=set())
            ev["failed_gates"] = ev["failed_gates"] + failed
            ev["passed"] = ev["passed"] and not failed


def build_metadata(
    params: Params,
    lineage: Lineage,
    version: str,
    rid: str,
    base_dir: Path,
    rounds_dir: Path,
    version_dir: Path,
    evals: dict,
    base_eval: dict,
    cur: dict | None,
    data_metrics: Path,
) -> dict:
    base = read_json(base_dir / "base.json")
    info = read_json(round_paths(rid, lineage.name, models=rounds_dir).model / "ROUND.json")
    manifest = read_json(version_dir / "manifest.json")
    manifest_sha256 = sha256_file(version_dir / "manifest.json")
    tokenizer_hash = sha256_file(base_dir / "tokenizer.json") if (base_dir / "tokenizer.json").is_file() else None
    ev = evals[rid]
    changes = None
    if cur is not None:
        old = cur["evaluation"][cur["round"]]
        changes = {
            "from_version": cur["version"],
            "data_changed": cur["data"]["manifest_sha256"] != manifest_sha256,
            "metric_deltas": deltas(ev, old),
            "evaluation": old,  # the previous version's own numbers, for the model card's table
            "base_changed": cur["base_model"]["hash"] != base["hash"],
            "by_source_before": cur["data"].get("by_source"),
        }
    return {
        "name": lineage.release,
        "lineage": lineage.name,
        "version": version,
        "created_at": release.now_utc(),
        "round": rid,
        "characters": lineage.characters,
        "routes": lineage.routes,
        "system_prompts": lineage.system_prompts,
        "primary_metric": params.package.primary_metric,
        "base_model": {k: v for k, v in base.items() if k != "files"},
        "tokenizer_sha256": tokenizer_hash,
        "adapter_sha256": info["adapter_hash"],
        "training": {
            "method": info["train"].get("method", "sft"),
            "init": info["init"],
            # What DPO / Rho-1 optimized against (the base, or the adapter the round started
            # from), by hash; None for plain SFT.
            "reference": info.get("reference"),
            "params": params.train.model_dump(),
            "stats": info["train"],
        },
        "data": {
            "manifest_sha256": manifest_sha256,
            "counts": {c: n for c, n in manifest["counts"].items() if c in lineage.characters},
            "by_source": records_by_source({c: n for c, n in manifest["counts"].items() if c in lineage.characters}),
            "negatives": sum(
                n.get("negatives", {}).get("total", 0) for c, n in manifest["counts"].items() if c in lineage.characters
            ),
            "sources": [s.model_dump() for s in params.collect.sources],
            "scrub": read_json(data_metrics)["scrub"],
        },
        "changes_from_previous": changes,
        "evaluation": {"base": base_eval, **evals},
    }


def write_plots(params: Params, lineage: Lineage, evaluation: dict, out: Path) -> list[str]:
    """The lineage's metrics by round (the primary metric and the gated ones), as SVG and PNG for
    the model card."""
    from .charts import line_chart, write_png, write_svg

    names = [params.package.primary_metric] + [g for g in lineage.gates if g != params.package.primary_metric]
    names = [n for n in names if all(isinstance(ev.get(n), (int, float)) for ev in evaluation.values())]
    rows = [{"round": rid, **{n: ev[n] for n in names}} for rid, ev in evaluation.items()]
    chart = line_chart(rows, "round", names, f"{lineage.name}: metrics by round")
    write_svg(chart, out / "trajectory.svg")
    write_png(chart, out / "trajectory.png")
    return ["plots/trajectory.svg", "plots/trajectory.png"]


def merge_into(release_dir: Path, base_dir: Path) -> None:
    """base + adapter folded into one model, for servers that take a single model."""
    from peft import PeftModel

    from .model import load_base, load_tokenizer

    merged = PeftModel.from_pretrained(load_base(base_dir), release_dir / "adapter").merge_and_unload()
    merged.save_pretrained(release_dir / "merged", safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(release_dir / "merged")


def run(
    params: Params,
    base_dir: Path,
    rounds_dir: Path,
    metrics_dir: Path,
    version_dir: Path,
    data_metrics: Path,
    out_root: Path,
    routing_file: Path,
    report_file: Path,
) -> dict:
    """Decide for every lineage, then update the release directories, routing and report together:
    the work happens on copies that replace them only when all of it succeeded."""
    lineages = [params.lineage(name) for name in params.lineages]
    rels = [out_root / lin.release for lin in lineages]
    leakage = read_json(leakage_file(metrics_dir)) if leakage_file(metrics_dir).is_file() else {}
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
            decisions[lin.name] = release_round(
                params, lin, base_dir, rounds_dir, metrics_dir, version_dir, data_metrics, work, leakage
            )
            if params.package.merge and release.current(work) is not None:
                merge_into(work, base_dir)
            release.update_routing(routing_tmp, work, named=rel)  # the release's real place, not the copy
        write_json(report_tmp, decisions)
    return decisions


def release_round(
    params: Params,
    lineage: Lineage,
    base_dir: Path,
    rounds_dir: Path,
    metrics_dir: Path,
    version_dir: Path,
    data_metrics: Path,
    rel: Path,
    leakage: dict,
) -> dict:
    """Release the lineage's chosen round into `rel` (archive, install or canary, history,
    changelog) or record why not."""
    rounds = params.rounds_of(lineage.name)
    evals = {rid: read_json(round_paths(rid, lineage.name, metrics=metrics_dir).metrics) for rid in rounds}
    leakage_gates(evals, leakage, lineage.gates)
    base_eval = read_json(round_paths("base", lineage.name, metrics=metrics_dir).metrics)
    cur = release.serving(rel)
    adapters = {
        rid: read_json(round_paths(rid, lineage.name, models=rounds_dir).model / "ROUND.json")["adapter_hash"]
        for rid in rounds
    }
    unservable = {}
    if params.package.vllm_servable:
        for r in rounds:
            adapter = round_paths(r, lineage.name, models=rounds_dir).model / "adapter"
            unservable[r] = problems(adapter_config(adapter)) if (adapter / "adapter_config.json").is_file() else []
    base_hash = read_json(base_dir / "base.json")["hash"]
    rid, why = choose(params, lineage, evals, adapters, cur, release.withdrawn(rel), unservable, base_hash, base_eval)
    if (rel / "merged").exists():
        shutil.rmtree(rel / "merged")
    ro = release.rollout(rel)
    if rid is None:
        release.record(rel, {"action": "keep", "version": cur["version"] if cur else None, "reason": why})
        return {
            "released": False,
            "version": cur["version"] if cur else None,
            "round": cur["round"] if cur else None,
            "stable": ro["stable"],
            "canary": ro["canary"],
            "reason": why,
        }
    major, first = params.package.major, 1
    base_changed = cur is not None and cur["base_model"]["hash"] != base_hash
    if base_changed:  # a new base is a new major version: v0.x -> v1.0
        major, first = max(major, int(release.VERSION.match(cur["version"])["major"]) + 1), 0
    version = release.next_version(rel, lineage.release, major, params.package.tag, first)
    metadata = build_metadata(
        params, lineage, version, rid, base_dir, rounds_dir, version_dir, evals, base_eval, cur, data_metrics
    )
    archive = rel / "versions" / version
    if archive.exists():
        shutil.rmtree(archive)
    shutil.copytree(round_paths(rid, lineage.name, models=rounds_dir).model / "adapter", archive / "adapter")
    metadata["adapter_tree_sha256"] = sha256_tree(archive / "adapter")[0]
    metadata["plots"] = write_plots(params, lineage, metadata["evaluation"], archive / "plots")
    (archive / "metadata.yaml").write_text(
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    share = params.package.canary_share
    canary = share is not None and ro["stable"] is not None
    if canary:
        release.set_rollout(rel, ro["stable"], version, share)
    else:
        release.make_stable(rel, version)
    release.record(
        rel,
        {
            "action": "release",
            "version": version,
            "round": rid,
            "rollout": "canary" if canary else "stable",
            "reason": why,
        },
    )
    ev = evals[rid]
    shown = ", ".join(f"{k}={ev[k]:.3f}" for k in ev if isinstance(ev[k], float))
    where = f" (canary for {share:.0%} of users)" if canary else ""
    base_note = ""
    if base_changed:
        base_note = f"; base model changed ({cur['base_model']['hash'][:12]} -> {base_hash[:12]}), new major version"
    negatives = metadata["data"]["negatives"]
    neg_note = f"; trained against {negatives} negatives" if negatives else ""
    release.changelog_line(rel, f"{metadata['created_at']} {version} from {rid}{where}{base_note}{neg_note}: {shown}")
    ro = release.rollout(rel)
    return {
        "released": True,
        "version": version,
        "round": rid,
        "stable": ro["stable"],
        "canary": ro["canary"],
        "reason": why,
    }


@click.command()
@click.option("--base", "base_dir", type=PATH, default=Path("models/base"), show_default=True)
@click.option("--rounds-dir", type=PATH, default=MODELS, show_default=True)
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.option("--data", "version_dir", type=PATH, default=Path("data/version"), show_default=True)
@click.option("--out", type=PATH, default=Path("models/release"), show_default=True)
@click.option("--routing", type=PATH, default=Path("models/routing.json"), show_default=True)
@click.option("--report", "report_file", type=PATH, default=Path("reports/package.json"), show_default=True)
@click.pass_context
def cli(ctx, base_dir, rounds_dir, metrics_dir, version_dir, out, routing, report_file):
    """Release the latest round that passed its gates and beats the current release."""
    say(
        run(
            params_of(ctx),
            base_dir,
            rounds_dir,
            metrics_dir,
            version_dir,
            metrics_dir / "data.json",
            out,
            routing,
            report_file,
        )
    )
