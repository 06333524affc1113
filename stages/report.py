"""The per-round metrics table `make demo` ends with, and the plot files dvc.yaml declares:
reports/plots/trajectory.csv (every metric against round), train_loss.csv (loss and learning rate
of every round's training, one global step axis) and eval_loss.csv (the eval-split loss logged
during training, on the same axis)."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from .cli import PATH, params_of
from .io import read_json
from .params import Params
from .paths import METRICS, MODELS, round_paths

COLUMNS = ("question_ratio", "followup_rate", "mean_response_chars", "mean_score")
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
    "eval_loss",
    "perplexity",
)


def _evals(params: Params, metrics_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for rid in ["base", *params.rounds]:
        path = round_paths(rid, metrics=metrics_dir).metrics
        out.append((rid, read_json(path) if path.is_file() else {}))
    return out


def table(params: Params, metrics_dir: Path) -> str:
    rows = [
        [rid]
        + [f"{m[c]:.3f}" if c in m else "-" for c in COLUMNS]
        + [("yes" if m.get("passed") else "no") if m else "-"]
        for rid, m in _evals(params, metrics_dir)
    ]
    header = ["round", *COLUMNS, "gates"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(r):
        return "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_plots(params: Params, metrics_dir: Path, rounds_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "trajectory.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["round_index", "round", *TRAJECTORY])
        for i, (rid, m) in enumerate(_evals(params, metrics_dir)):
            w.writerow([i, rid, *(m.get(c, "") for c in TRAJECTORY)])
    with (
        (out_dir / "train_loss.csv").open("w", newline="", encoding="utf-8") as f,
        (out_dir / "eval_loss.csv").open("w", newline="", encoding="utf-8") as g,
    ):
        w, we = csv.writer(f), csv.writer(g)
        w.writerow(["step", "round", "loss", "lr"])
        we.writerow(["step", "round", "eval_loss"])
        offset = 0
        for rid in params.rounds:
            live = round_paths(rid, models=rounds_dir).model / "live/plots/metrics"
            loss, lr = _tsv(live / "train/loss.tsv"), _tsv(live / "train/lr.tsv")
            for a, b in zip(loss, lr):
                w.writerow([offset + int(a["step"]), rid, a["loss"], b["lr"]])
            if (live / "eval/loss.tsv").is_file():
                for e in _tsv(live / "eval/loss.tsv"):
                    we.writerow([offset + int(e["step"]), rid, e["loss"]])
            offset += len(loss)


@click.command()
@click.option("--metrics-dir", type=PATH, default=METRICS, show_default=True)
@click.option("--rounds-dir", type=PATH, default=MODELS, show_default=True)
@click.option("--plots-dir", type=PATH, default=None, help="Also write the plot files here (the DVC stage does).")
@click.pass_context
def cli(ctx, metrics_dir, rounds_dir, plots_dir):
    """Print the per-round evaluation table."""
    p = params_of(ctx)
    if plots_dir is not None:
        write_plots(p, metrics_dir, rounds_dir, plots_dir)
    click.echo(table(p, metrics_dir))
