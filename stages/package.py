"""package: release the latest round that passed its gates and beats the current release on the
primary metric (higher is better); otherwise keep the current release and say why.

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
from .metrics import deltas
from .params import Params
from .paths import METRICS, MODELS, round_paths


def choose(
    params: Params,
    evals: dict[str, dict],
    adapters: dict[str, str],
    cur: dict | None,
    withdrawn: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """The round to release and why, or None and why not. `adapters`: round id -> adapter hash;
    `withdrawn`: version -> adapter hash of the versions rolled back from (never released again)."""
    withdrawn_by_hash = {h: v for v, h in (withdrawn or {}).items()}
    metric = params.package.primary_metric
    cur_eval = cur["evaluation"][cur["round"]] if cur else None
    cur_value = cur_eval[metric] if cur else None
    why_not = []
    for rid in reversed(list(params.rounds)):
        ev = evals[rid]
        if metric not in ev:
            raise KeyError(f"package.primary_metric {metric!r} is not in metrics/eval_{rid}.json (has {sorted(ev)})")
        if not ev["passed"]:
            failed = ", ".join(f"{g['metric']}={g['value']:.3f}" for g in ev["failed_gates"])
            why_not.append(f"{rid} failed gates ({failed})")
            continue
        if cur is not None and adapters[rid] == cur["adapter_sha256"]:
            why_not.append(f"{rid} is already released as {cur['version']}")
            continue
        if adapters[rid] in withdrawn_by_hash:
            version = withdrawn_by_hash[adapters[rid]]
            why_not.append(
                f"{rid} is {version}, withdrawn by a rollback "
                f"(`loraloop release restore {params.package.name} {version}` allows it again)"
            )
            continue
        # Scores measured under other rules, prompts or decoding do not compare: then the gates decide.
        comparable = cur is not None and cur_eval.get("eval_config") == ev.get("eval_config")
        if comparable and ev[metric] <= cur_value:
            why_not.append(f"{rid} {metric}={ev[metric]:.4f} does not beat {cur['version']} ({cur_value:.4f})")
            continue
        if cur is None:
            beats = "first release"
        elif comparable:
            beats = f"beats {cur['version']} ({cur_value:.4f})"
        else:
            beats = (
                f"{cur['version']} ({metric}={cur_value:.4f}) was measured under another eval config "
                f"(score rules, prompts or decoding), so the values do not compare"
            )
        return rid, f"{rid} passed its gates, {metric}={ev[metric]:.4f}, {beats}"
    return None, "; ".join(why_not) or "no rounds"


def build_metadata(
    params: Params,
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
    info = read_json(round_paths(rid, models=rounds_dir).model / "ROUND.json")
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
        }
    return {
        "name": params.package.name,
        "version": version,
        "created_at": release.now_utc(),
        "round": rid,
        "characters": sorted(manifest["counts"]),
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
            "counts": manifest["counts"],
            "sources": [s.model_dump() for s in params.collect.sources],
            "scrub": read_json(data_metrics)["scrub"],
        },
        "changes_from_previous": changes,
        "evaluation": {"base": base_eval, **evals},
    }


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
    """Decide, then update the release directory, routing and report together: the work happens
    on copies that replace them only when all of it succeeded."""
    rel = out_root / params.package.name
    with replacing(rel, routing_file, report_file) as (work, routing_tmp, report_tmp):
        if rel.is_dir():
            shutil.copytree(rel, work)
        work.mkdir(parents=True, exist_ok=True)
        if routing_file.is_file():
            shutil.copy2(routing_file, routing_tmp)
        decision = release_round(params, base_dir, rounds_dir, metrics_dir, version_dir, data_metrics, work)
        now = release.current(work)
        if params.package.merge and now is not None:
            merge_into(work, base_dir)
        if now is not None:
            release.update_routing(routing_tmp, rel, now)  # routing names the release's real place
        elif not routing_tmp.exists():
            write_json(routing_tmp, {})
        write_json(report_tmp, decision)
    return decision


def release_round(
    params: Params,
    base_dir: Path,
    rounds_dir: Path,
    metrics_dir: Path,
    version_dir: Path,
    data_metrics: Path,
    rel: Path,
) -> dict:
    """Release the chosen round into `rel` (archive, install, history, changelog) or record why not."""
    evals = {rid: read_json(round_paths(rid, metrics=metrics_dir).metrics) for rid in params.rounds}
    base_eval = read_json(metrics_dir / "eval_base.json")
    cur = release.current(rel)
    adapters = {
        rid: read_json(round_paths(rid, models=rounds_dir).model / "ROUND.json")["adapter_hash"]
        for rid in params.rounds
    }
    rid, why = choose(params, evals, adapters, cur, release.withdrawn(rel))
    if (rel / "merged").exists():
        shutil.rmtree(rel / "merged")
    if rid is None:
        release.record(rel, {"action": "keep", "version": cur["version"] if cur else None, "reason": why})
        return {
            "released": False,
            "version": cur["version"] if cur else None,
            "round": cur["round"] if cur else None,
            "reason": why,
        }
    version = release.next_version(rel, params.package.name, params.package.major, params.package.tag)
    metadata = build_metadata(
        params, version, rid, base_dir, rounds_dir, version_dir, evals, base_eval, cur, data_metrics
    )
    archive = rel / "versions" / version
    if archive.exists():
        shutil.rmtree(archive)
    shutil.copytree(round_paths(rid, models=rounds_dir).model / "adapter", archive / "adapter")
    metadata["adapter_tree_sha256"] = sha256_tree(archive / "adapter")[0]
    (archive / "metadata.yaml").write_text(
        yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    release.install(rel, version)
    release.record(rel, {"action": "release", "version": version, "round": rid, "reason": why})
    ev = evals[rid]
    shown = ", ".join(f"{k}={ev[k]:.3f}" for k in ev if isinstance(ev[k], float))
    release.changelog_line(rel, f"{metadata['created_at']} {version} from {rid}: {shown}")
    return {"released": True, "version": version, "round": rid, "reason": why}


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
