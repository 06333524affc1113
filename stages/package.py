"""package: copy the best round's adapter to models/release/<name>/ with its metadata."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import yaml

from .io import read_json, sha256_tree
from .params import Params


def created_at() -> str:
    # SOURCE_DATE_EPOCH pins the timestamp for byte-identical rebuilds.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def run(params: Params, base_dir: Path, rounds_dir: Path, metrics_dir: Path, version_dir: Path,
        data_metrics: Path, out_root: Path) -> dict:
    metric = params.package.primary_metric
    rounds = list(params.rounds)
    evals = {rid: read_json(metrics_dir / f"eval_{rid}.json") for rid in rounds}
    base_eval = read_json(metrics_dir / "eval_base.json")
    for rid, m in evals.items():
        if metric not in m:
            raise KeyError(f"package.primary_metric {metric!r} is not in metrics/eval_{rid}.json (has {sorted(m)})")
    # Latest round wins ties: later rounds saw more data.
    best = max(rounds, key=lambda rid: (evals[rid][metric], rounds.index(rid)))
    round_info = read_json(rounds_dir / best / "ROUND.json")

    out = out_root / params.package.name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(rounds_dir / best / "adapter", out / "adapter")
    base = read_json(base_dir / "base.json")
    manifest = read_json(version_dir / "manifest.json")
    metadata = {
        "name": params.package.name,
        "version": f"{params.package.name}-v0.{len(params.rounds)}",
        "created_at": created_at(),
        "round": best,
        "beats_base": evals[best][metric] > base_eval[metric],
        "primary_metric": metric,
        "base_model": {k: base[k] for k in base if k != "files"},
        "adapter_hash": round_info["adapter_hash"],
        "adapter_tree_hash": sha256_tree(out / "adapter")[0],
        "training": {"params": params.train.model_dump(), "stats": round_info["train"], "init": round_info["init"]},
        "data": {"counts": manifest["counts"], "scrub": read_json(data_metrics)["scrub"]},
        "evaluation": {"base": base_eval, **evals},
    }
    (out / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return metadata
