"""The per-round metrics table `make demo` ends with (every lineage's rounds), and the plot files
dvc.yaml declares, one file per lineage in each directory: reports/plots/trajectory/ (every metric
against round), train_loss/ (loss and learning rate of the lineage's rounds of training, one step
axis) and eval_loss/ (the eval-split loss logged during training, on the same axis)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..files import read_json
from ..workspace import Workspace
from .gates import LATER
from .tool_eval import TOOL_METRICS

COLUMNS = ("question_ratio", "followup_rate", "mean_response_chars", "mean_score")
# Under this many eval prompts one reply moves a rate by more than 0.12: the report says so.
FEW_PROMPTS = 8
# Every metric eval writes, for the trajectory plot (the table keeps to the four above).
TRAJECTORY = COLUMNS + (
    "followup_rate_deep",
    "mean_turn_depth",
    "balance",
    "politeness",
    "verbosity",
    "language_compliance",
    "meta_leak_rate",
    "repetition_rate",
    "banned_word_rate",
    "tone_keyword_rate",
    "tool_call_valid_rate",
    "tool_call_accuracy",
    "tool_selection",
    "tool_result_use",
    "eval_loss",
    "perplexity",
    "persona_match",
    "tone_leakage_rate",
    "persona_leakage",
)


def _evals(ws: Workspace, lineage: str) -> list[tuple[str, dict]]:
    """(round, its evaluation with its leakage) for the lineage's base and rounds."""
    leakage = read_json(ws.leakage) if ws.leakage.is_file() else {}
    out = []
    for round_id in ["base", *ws.params.history_of(lineage)]:
        path = ws.round(round_id, lineage).metrics
        m = read_json(path) if path.is_file() else {}
        measured = leakage.get(f"base@{lineage}" if round_id == "base" else round_id, {})
        for k in LATER:  # the leakage stage's figures
            if m and measured.get(k) is not None:
                m[k] = measured[k]
        out.append((round_id, m))
    return out


def _value(m: dict, c: str) -> str:
    return f"{m[c]:.3f}" if isinstance(m.get(c), float) else "-"


def table(ws: Workspace) -> str:
    """Every lineage's rounds: the headline metrics, the persona match, tone and persona leakage and
    whether the gates passed."""
    rows = [
        [lineage, round_id, m.get("n", "-")]
        + [_value(m, c) for c in (*COLUMNS, "persona_match", "tone_leakage_rate", "persona_leakage")]
        + [("yes" if m.get("passed") else "no") if m else "-"]
        for lineage in ws.params.lineages
        for round_id, m in _evals(ws, lineage)
    ]
    return aligned(["lineage", "round", "n", *COLUMNS, "persona", "leakage", "p_leak", "gates"], rows)


def judge_table(ws: Workspace) -> str | None:
    """Each lineage's reward model on its held-out conversations, the rule score beside: ROC-AUC,
    pairwise accuracy on preference pairs, Brier score."""
    rows = []
    for lineage in ws.params.lineages:
        path = ws.metrics / lineage / "judge.json"
        if not path.is_file():
            continue
        rw = read_json(path)["reward"]
        labels = f"{rw['labels']['good']}/{rw['labels']['bad']}"
        if rw["available"]:
            ho, rb = rw["held_out"], rw["rule_baseline"]
            figs = [f"{_value(ho, k)} vs {_value(rb, k)}" for k in ("roc_auc", "pairwise_accuracy", "brier")]
        else:
            figs = ["unavailable", "-", "-"]
        rows.append([lineage, labels, *figs])
    header = ["lineage", "good/bad", "auc (vs rules)", "pairwise (vs rules)", "brier (vs rules)"]
    return aligned(header, rows) if rows else None


def persona_line(ws: Workspace) -> str | None:
    """The persona classifier's held-out accuracy and recall per character."""
    path = ws.metrics / "persona.json"
    if not path.is_file():
        return None
    p = read_json(path)
    if not p["available"]:
        return f"persona classifier: unavailable ({p['reason']})"
    recall = ", ".join(f"{c} {v:.3f}" for c, v in p["held_out"]["recall"].items())
    return f"persona classifier: held-out accuracy {p['held_out']['accuracy']:.3f} (recall: {recall})"


def tool_table(ws: Workspace) -> str | None:
    """The tool metrics of the lineages with gold tool items (judge/tool_eval.py), or None."""
    rows = [
        [lineage, round_id, m["n_tool_items"], m.get("n_tool_calls", 0)] + [_value(m, c) for c in TOOL_METRICS]
        for lineage in ws.params.lineages
        for round_id, m in _evals(ws, lineage)
        if m.get("n_tool_items")
    ]
    header = ["lineage", "round", "items", "calls", "valid", "accuracy", "selection", "result_use"]
    return aligned(header, rows) if rows else None


def aligned(header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(r):
        return "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def warnings(ws: Workspace) -> list[str]:
    """What the table cannot be trusted on: an eval of few prompts, rounds that score below the base."""
    out, metric = [], ws.params.package.primary_metric
    for lineage in ws.params.lineages:
        evals = [(r, m) for r, m in _evals(ws, lineage) if m]
        few = sorted({m["n"] for _, m in evals if m.get("n", FEW_PROMPTS) < FEW_PROMPTS})
        if few:
            out.append(
                f"{lineage}: its eval rests on {'/'.join(map(str, few))} prompt(s) (under {FEW_PROMPTS}): one reply "
                f"moves a rate by {1 / few[0]:.2f}; add conversations or raise version.min_eval"
            )
        base = dict(evals).get("base", {}).get(metric)
        below = [(r, m[metric]) for r, m in evals if r != "base" and base is not None and m.get(metric, base) < base]
        if below:
            shown = ", ".join(f"{r} {v:.3f}" for r, v in below)
            out.append(f"{lineage}: {shown} score below the base on {metric} ({base:.3f})")
    return out


def _tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_plots(ws: Workspace, out_dir: Path) -> None:
    for kind in ("trajectory", "train_loss", "eval_loss"):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
        for stale in (out_dir / kind).glob("*.csv"):
            stale.unlink()
    for lineage in ws.params.lineages:
        write_lineage_plots(ws, lineage, out_dir)


def write_lineage_plots(ws: Workspace, lineage: str, out_dir: Path) -> None:
    with (out_dir / "trajectory" / f"{lineage}.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["round_index", "round", *TRAJECTORY])
        for i, (round_id, m) in enumerate(_evals(ws, lineage)):
            w.writerow([i, round_id, *("" if m.get(c) is None else m[c] for c in TRAJECTORY)])
    with (
        (out_dir / "train_loss" / f"{lineage}.csv").open("w", newline="", encoding="utf-8") as f,
        (out_dir / "eval_loss" / f"{lineage}.csv").open("w", newline="", encoding="utf-8") as g,
    ):
        w, we = csv.writer(f), csv.writer(g)
        w.writerow(["step", "round", "loss", "lr"])
        we.writerow(["step", "round", "eval_loss"])
        offset = 0
        for round_id in ws.params.history_of(lineage):
            live = ws.round(round_id).model / "live/plots/metrics"
            loss, lr = _tsv(live / "train/loss.tsv"), _tsv(live / "train/lr.tsv")
            for a, b in zip(loss, lr):
                w.writerow([offset + int(a["step"]), round_id, a["loss"], b["lr"]])
            if (live / "eval/loss.tsv").is_file():
                for e in _tsv(live / "eval/loss.tsv"):
                    we.writerow([offset + int(e["step"]), round_id, e["loss"]])
            offset += len(loss)
