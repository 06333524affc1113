"""The per-round metrics table `make demo` ends with."""

from __future__ import annotations

from pathlib import Path

from .io import read_json
from .params import Params

COLUMNS = ("question_ratio", "followup_rate", "mean_response_chars", "mean_score")


def table(params: Params, metrics_dir: Path) -> str:
    ids = ["base", *params.rounds]
    rows = []
    for rid in ids:
        path = Path(metrics_dir) / f"eval_{rid}.json"
        m = read_json(path) if path.is_file() else {}
        rows.append([rid] + [f"{m[c]:.3f}" if c in m else "-" for c in COLUMNS])
    header = ["round", *COLUMNS]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
