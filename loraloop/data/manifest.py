"""Reading a dataset version's manifest.json (written by the version stage): shared by version's
changelog and package's model card."""

from __future__ import annotations

from collections import Counter


def records_by_source(counts: dict) -> dict[str, int]:
    """manifest counts (character -> split -> {by_source, total}) summed per source."""
    out: Counter = Counter()
    for splits in counts.values():
        for split in splits.values():
            out.update(split["by_source"])
    return dict(sorted(out.items()))
