"""Where a round's files live: the defaults of the round commands and the paths dvc.yaml names.
A round's data under data/rounds/<lineage>/<round>/, its model under models/rounds/<round>/, its
evaluation in metrics/<lineage>/eval_<round>.json. `base` is a round of every lineage (the base
evaluated under that lineage's prompts and rules); its model, models/rounds/base, is shared.
A lineage's view of the dataset (its characters' splits only) is data/lineages/<lineage>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path("data/rounds")
MODELS = Path("models/rounds")
METRICS = Path("metrics")
LINEAGES = Path("data/lineages")


@dataclass(frozen=True)
class RoundPaths:
    data: Path  # samples, scores, pairs and eval answers of the round
    model: Path  # the adapter, ROUND.json and training curves
    metrics: Path  # the evaluation

    @property
    def samples(self) -> Path:
        return self.data / "samples.jsonl"

    @property
    def scored(self) -> Path:
        return self.data / "scored.jsonl"

    @property
    def pairs(self) -> Path:
        return self.data / "pairs.jsonl"

    @property
    def eval_samples(self) -> Path:
        return self.data / "eval_samples.jsonl"


def round_paths(
    round_id: str, lineage: str, data: Path = DATA, models: Path = MODELS, metrics: Path = METRICS
) -> RoundPaths:
    return RoundPaths(
        Path(data) / lineage / round_id, Path(models) / round_id, Path(metrics) / lineage / f"eval_{round_id}.json"
    )


def leakage_file(metrics: Path = METRICS) -> Path:
    return Path(metrics) / "leakage.json"
