"""`loraloop report --exps`: the DVC experiments of the newest commit that has some, as an ablation table. Each
experiment's changed params, and each lineage's last round's metrics against the commit's own
(the baseline), the best of every column marked; a bar chart beside it. The experiments come
from `dvc exp show --json`, so queued runs (`dvc exp run --queue -S ...`, `dvc queue start -j N`)
show up as they finish."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

from ..params import Params
from .gates import LATER

# Metrics where lower is better; every other one is better higher.
LOWER = {
    "eval_loss",
    "perplexity",
    "meta_leak_rate",
    "repetition_rate",
    "banned_word_rate",
    "tone_leakage_rate",
    "persona_leakage",
}
METRICS = ("mean_score", "eval_loss")


class NoExperiments(Exception):
    pass


def exp_show(repo: Path, commits: int = 5) -> list[dict]:
    """`dvc exp show --json` over the last `commits` commits (experiments stay under the commit
    they were queued on, and the branch may have moved on since)."""
    res = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(commits)], cwd=repo, capture_output=True, text=True)
    if res.returncode != 0:
        raise NoExperiments(f"`dvc exp show --json` failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout or "[]")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def run_of(name: str, rev: dict) -> dict | None:
    """A finished run's params (flat) and metrics by file; None for a queued or failed one."""
    data = rev.get("data") or {}
    if rev.get("error") or not data.get("metrics"):
        return None
    params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
    metrics = {f: (m or {}).get("data") or {} for f, m in data["metrics"].items()}
    return {"name": name, "params": params, "metrics": metrics}


def runs(shown: list[dict]) -> list[dict]:
    """The newest commit with finished experiments (HEAD when none has), as the baseline, first,
    and those experiments."""
    commits = [c for c in shown if c.get("rev") != "workspace"]
    if not commits:
        raise NoExperiments("no commit in `dvc exp show`: commit the pipeline's results first")
    finished = [c for c in commits if any(run_of("", e["revs"][0]) for e in c.get("experiments") or [])]
    commit = (finished or commits)[0]
    base = run_of(f"baseline {commit['rev'][:7]}", commit)
    if base is None:
        raise NoExperiments("the commit has no metrics: run `dvc repro` and commit dvc.lock first")
    out = [base]
    for exp in commit.get("experiments") or []:
        got = run_of(exp.get("name") or exp["revs"][0]["rev"][:7], exp["revs"][0])
        if got is not None:
            out.append(got)
    return out


def changed(params: dict, base: dict) -> str:
    diffs = [f"{k}={params[k]}" for k in sorted(params) if base.get(k) != params[k] and not isinstance(params[k], list)]
    return ", ".join(diffs) or "-"


def columns(params: Params, metrics: tuple[str, ...]) -> list[tuple[str, str, tuple]]:
    """(header, metrics file, keys in it) for each lineage's last round and each metric: eval's
    file, or the leakage stage's for what it measures (persona_match, the leakage rates)."""
    out = []
    for lineage in params.lineages:
        rounds = params.rounds_of(lineage)
        if rounds:
            last = rounds[-1]
            for m in metrics:
                where = (
                    ("metrics/leakage.json", (last, m)) if m in LATER else (f"metrics/{lineage}/eval_{last}.json", (m,))
                )
                out.append((f"{last} {m}", *where))
    return out


def value(run: dict, file: str, keys: tuple) -> float | None:
    v = run["metrics"].get(file, {})
    for k in keys:
        v = v.get(k) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def table(all_runs: list[dict], cols: list[tuple[str, str, tuple]]) -> tuple[list[str], list[list]]:
    """Header and rows: each run's changed params and values (delta vs the baseline), the best
    of each column marked with *."""
    base = all_runs[0]
    values = [[value(r, f, keys) for _, f, keys in cols] for r in all_runs]
    best = []
    for j, (_, _, keys) in enumerate(cols):
        present = [v[j] for v in values if v[j] is not None]
        best.append((min if keys[-1] in LOWER else max)(present) if present else None)
    rows = []
    for r, vals in zip(all_runs, values):
        cells = []
        for j, v in enumerate(vals):
            if v is None:
                cells.append("-")
                continue
            b = values[0][j]
            delta = f" ({v - b:+.3f})" if r is not base and b is not None else ""
            cells.append(f"{v:.3f}{delta}{' *' if v == best[j] else ''}")
        rows.append([r["name"], changed(r["params"], base["params"]) if r is not base else "-", *cells])
    return ["experiment", "changed", *[h for h, _, _ in cols]], rows


def write_plot(all_runs: list[dict], cols: list[tuple[str, str, tuple]], out_dir: Path) -> list[Path]:
    """ablation.csv (one row per run and column) and ablation.svg (bars per column)."""
    from .charts import write_svg

    out_dir.mkdir(parents=True, exist_ok=True)
    points = [
        {"experiment": r["name"], "metric": h, "value": value(r, f, keys)}
        for r in all_runs
        for h, f, keys in cols
        if value(r, f, keys) is not None
    ]
    with (out_dir / "ablation.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["experiment", "metric", "value"])
        w.writeheader()
        w.writerows(points)
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Experiments against the baseline",
        "data": {"values": points},
        "facet": {"column": {"field": "metric", "type": "nominal"}},
        "resolve": {"scale": {"y": "independent"}},
        "spec": {
            "width": 160,
            "height": 200,
            "mark": "bar",
            "encoding": {
                "x": {"field": "experiment", "type": "nominal", "sort": None},
                "y": {"field": "value", "type": "quantitative", "scale": {"zero": False}},
                "color": {"field": "experiment", "type": "nominal", "legend": None},
            },
        },
    }
    return [out_dir / "ablation.csv", write_svg(spec, out_dir / "ablation.svg")]
