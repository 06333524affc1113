"""`loraloop status`: where the loop stands. Per lineage: the version in service, how many new
opt-in examples (served conversations, negatives) came in since it was released, and whether a
retrain is due (`retrain.min_new_examples`); then which DVC stages are out of date and what
`dvc repro` would run."""

from __future__ import annotations

from pathlib import Path

from ..params import Params
from ..release import registry
from .logs import NEGATIVES, SERVED, read_rows


def new_examples(root: Path, characters: list[str], since: str | None) -> dict[str, int]:
    """Opt-in served exchanges and negatives of these characters logged after `since` (ISO time)."""
    counts = {"served": 0, "negatives": 0}
    for kind, folder in (("served", SERVED), ("negatives", NEGATIVES)):
        for row in read_rows(root / folder):
            if (
                row.get("character_id") in characters
                and row.get("opt_in")
                and (since is None or row["timestamp"] > since)
            ):
                counts[kind] += 1
    return counts


def lineage_status(params: Params, root: Path, release_root: Path) -> list[dict]:
    out = []
    for name in params.lineages:
        lin = params.lineage(name)
        rel = release_root / lin.release
        ro = registry.rollout(rel) if rel.is_dir() else {"stable": None, "canary": None}
        serving = registry.serving(rel) if rel.is_dir() else None
        since = serving["created_at"] if serving else None
        new = new_examples(root, lin.characters, since)
        total = sum(new.values())
        out.append(
            {
                "lineage": name,
                "release": lin.release,
                "stable": ro["stable"],
                "canary": ro["canary"],
                "released_at": since,
                "new_examples": new,
                "retrain_due": total >= params.retrain.min_new_examples,
                "min_new_examples": params.retrain.min_new_examples,
            }
        )
    return out


def stale_stages(root: Path) -> tuple[list[str], list[str]]:
    """(stages whose deps, params or outputs changed, every stage `dvc repro` would run: those and
    all downstream of them; DVC itself skips one whose inputs come out unchanged)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = set(repo.status())
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stale = [s for s in graph.nodes if s.addressing in changed]
        would_run = {s.addressing for s in stale}
        for s in stale:
            would_run |= {a.addressing for a in nx.ancestors(graph, s)}
        order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]
    return sorted(changed & set(order), key=order.index), [s for s in order if s in would_run]
