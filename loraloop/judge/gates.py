"""Comparing metric files: shared by eval (deltas vs previous round and base) and package
(changes from the previous release). No torch here, so package stays light."""

from __future__ import annotations

import math


def deltas(now: dict, then: dict) -> dict:
    """now - then for every float metric both have."""
    return {
        k: now[k] - then[k] for k, v in now.items() if isinstance(v, float) and isinstance(then.get(k), (int, float))
    }


# Gated, but measured after eval: the leakage stage measures them and package applies their gates.
LATER = {"tone_leakage_rate", "persona_leakage", "persona_match"}


def check_gates(metrics: dict, gates: dict, later: set[str] = LATER) -> list[dict]:
    """The gates a round fails, each with the value and its bounds (gates on `later` metrics wait)."""
    failed = []
    for name, gate in gates.items():
        if name in later:
            continue
        if name not in metrics:
            raise KeyError(f"params.yaml eval.gates.{name}: no such metric (have {sorted(metrics)})")
        value = metrics[name]
        # A NaN metric (an empty eval set's loss, say) compares false with everything: it fails.
        if (
            value is None  # (no reply did what the metric measures, e.g. call a tool)
            or math.isnan(value)
            or (gate.min is not None and value < gate.min)
            or (gate.max is not None and value > gate.max)
        ):
            failed.append({"metric": name, "value": value, "min": gate.min, "max": gate.max})
    return failed
