"""bench/sample.py's --forward-costs on the tiny model: a verifying step's forward over 1, 2 and 3
tokens a row on the batched sampler's machinery, at each number of rows."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_forward_costs_times_a_verifying_step_at_each_number_of_rows(tiny_base, capsys, monkeypatch):
    from loraloop.lm.model import load_base

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # bench/sample.py imports flops beside it
    spec = importlib.util.spec_from_file_location("bench_sample", ROOT / "bench/sample.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.forward_costs(load_base(tiny_base / "base"), rows=(1, 3, 5), context=20)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "rows:" in ln]
    assert [int(ln.split("rows:")[0]) for ln in lines] == [1, 3, 5]
    for ln in lines:  # three timings a line, two of them with their ratio to the first
        ms = [float(x) for x in re.findall(r"([\d.]+) ms", ln)]
        ratios = [float(x) for x in re.findall(r"\(([\d.]+)x\)", ln)]
        assert len(ms) == 3 and min(ms) > 0 and len(ratios) == 2
        assert ratios == [round(ms[1] / ms[0], 2), round(ms[2] / ms[0], 2)] or all(r > 0 for r in ratios)
