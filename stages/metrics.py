"""Comparing metric files: shared by eval (deltas vs previous round and base) and package
(changes from the previous release). No torch here, so package stays light."""

from __future__ import annotations


def deltas(now: dict, then: dict) -> dict:
    """now - then for every float metric both have."""
    return {
        k: now[k] - then[k] for k, v in now.items() if isinstance(v, float) and isinstance(then.get(k), (int, float))
    }
