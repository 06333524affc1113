"""The project's layout as objects: the base, a round, a lineage's view of the dataset and a
release. A command builds them once from its options and passes them down, so every file here
is parsed in one place and every layout is derived in one place. No torch: any command can build
them for free.

    models/base/base.json                      the base, pinned by content hash
    models/rounds/<round>/ROUND.json           a round's model: adapter, its hash, what it came from
    data/rounds/<lineage>/<round>/             its samples, scores, pairs, eval answers, A/B set
    metrics/<lineage>/eval_<round>.json        its evaluation
    models/judges/<lineage>/                   the lineage's learned reward model
    models/persona/                            the fleet's persona classifier
    data/lineages/<lineage>/splits/            the lineage's view of the dataset version
    models/release/<release>/versions/<version>/{adapter/, metadata.yaml}

`base` is a round of every lineage (the base evaluated under that lineage's prompts and rules);
its model, models/rounds/base, is shared."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from .files import read_json, sha256_file
from .params import RETIRED, Params, ParamsError

BASE = Path("models/base")
ROUNDS = Path("models/rounds")  # the rounds' models
ROUNDS_DATA = Path("data/rounds")  # the rounds' samples, scores, pairs and eval answers
METRICS = Path("metrics")
VIEWS = Path("data/lineages")
VERSION = Path("data/version")
RELEASES = Path("models/release")
ROUTING = Path("models/routing.json")
PACKAGE_REPORT = Path("reports/package.json")  # package's decision per lineage, and why
JUDGES = Path("models/judges")  # each lineage's learned reward model (judge@<lineage>)
PERSONA = Path("models/persona")  # the fleet's persona classifier (the persona stage)
JUDGE_FEATURES = Path("data/judges")  # their feature caches (untracked), kept across reruns
JUDGE_PLOTS = Path("reports/judges")  # the reward models' calibration points
CRITICS = Path("models/critics")  # each round's value head (critic@<round>, train.token_weighting: critic)
PACKED = ("model", "data", "critic")  # a packed retired round's directories: retired/<lineage>/<round>/<part>


def written(path: Path, run: str) -> dict:
    """A JSON file a stage writes; missing, an error that says what to `run` first."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run {run}")
    return read_json(path)


def leakage_file(metrics: Path = METRICS) -> Path:
    return Path(metrics) / "leakage.json"


@dataclass(frozen=True)
class Base:
    """The base model directory the base stage materialized."""

    dir: Path

    @cached_property
    def info(self) -> dict:
        """base.json: where the base came from, its tree hash and its files' hashes."""
        return written(Path(self.dir) / "base.json", "the base stage first (`dvc repro base`)")

    @property
    def hash(self) -> str:
        return self.info["hash"]

    @property
    def tokenizer_sha256(self) -> str | None:
        path = Path(self.dir) / "tokenizer.json"
        return sha256_file(path) if path.is_file() else None


class DataFile:
    """A file in a round's data directory, by name."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, r, owner=None) -> Path:
        return r.data / self.name


@dataclass(frozen=True)
class Round:
    """One round of a lineage: where its data, its model and its evaluation live."""

    id: str
    lineage: str
    data: Path  # samples, scores, pairs and eval answers
    model: Path  # the adapter, ROUND.json and training curves
    metrics: Path  # the evaluation
    view: Path  # the lineage's dataset view, which the round samples, trains and is evaluated on
    prev: Round | None  # the round it starts from; None for the base round
    critic: Path | None = None  # the value head critic@<round> fit (or its note that none is used)

    @property
    def root(self) -> Round:
        """The base round its lineage started from."""
        r = self
        while r.prev is not None:
            r = r.prev
        return r

    samples = DataFile("samples.jsonl")  # on-policy completions (sample)
    scored = DataFile("scored.jsonl")  # with their rule values, score, weight and keep flag (score)
    pairs = DataFile("pairs.jsonl")  # each prompt's best vs worst reply, for DPO (score)
    eval_samples = DataFile("eval_samples.jsonl")  # the round's answers to the eval prompts (eval)
    tool_samples = DataFile("tool_samples.jsonl")  # its answers to the gold tool items (eval)

    @property
    def ab_files(self) -> tuple[Path, Path]:
        """The blinded A/B sheet against the previous round, and its key."""
        return self.data / "ab.csv", self.data / "ab_key.json"

    @cached_property
    def info(self) -> dict:
        """ROUND.json, which the stage that trained the round (or the base stage) wrote."""
        return written(Path(self.model) / "ROUND.json", f"the stage that produces round {self.model.name} first")

    @property
    def adapter(self) -> Path | None:
        """The round's adapter directory; None for the base round."""
        name = self.info["adapter"]
        return None if name is None else Path(self.model) / name

    @property
    def adapter_hash(self) -> str | None:
        return self.info.get("adapter_hash")


@dataclass(frozen=True)
class Release:
    """models/release/<name>/: the stable version at the top, every released version archived
    under versions/ (see loraloop/release/registry.py for what happens to them)."""

    dir: Path

    @property
    def name(self) -> str:
        return Path(self.dir).name

    def version_dir(self, version: str) -> Path:
        return Path(self.dir) / "versions" / version

    def adapter(self, version: str) -> Path:
        return self.version_dir(version) / "adapter"

    def metadata(self, version: str) -> dict:
        """The metadata.yaml of a released version, from its archive."""
        return yaml.safe_load((self.version_dir(version) / "metadata.yaml").read_text(encoding="utf-8"))

    @classmethod
    def of_adapter(cls, adapter: Path) -> tuple[Release, str]:
        """The release and version of an archived version's adapter directory (what routing.json
        names): <release>/versions/<version>/adapter."""
        adapter = Path(adapter)
        if adapter.name != "adapter" or adapter.parent.parent.name != "versions":
            raise ValueError(f"{adapter} is not a released version's adapter (<release>/versions/<version>/adapter)")
        return cls(adapter.parents[2]), adapter.parent.name


class Workspace:
    """Where this command finds the base, the rounds, their evaluations and the lineages' views
    (dvc.yaml's paths unless its options say otherwise)."""

    def __init__(
        self,
        params: Params,
        base: Path = BASE,
        rounds: Path = ROUNDS,
        rounds_data: Path = ROUNDS_DATA,
        metrics: Path = METRICS,
        views: Path = VIEWS,
        view: Path | None = None,
        version: Path = VERSION,
        judges: Path = JUDGES,
        persona: Path = PERSONA,
        critics: Path = CRITICS,
        retired: Path = RETIRED,
    ):
        """`view`: one lineage's dataset view in place of views/<lineage> (a round command's --data);
        `version`: the dataset version (its manifest.json); `retired`: where packed rounds live."""
        self.params = params
        self.retired = Path(retired)
        self.base = Base(Path(base))
        self.rounds, self.rounds_data, self.metrics = Path(rounds), Path(rounds_data), Path(metrics)
        self.views, self._view, self.version = Path(views), view, Path(version)
        self.judges, self.persona, self.critics = Path(judges), Path(persona), Path(critics)

    def round(self, round_id: str, lineage: str | None = None) -> Round:
        """A round of params.yaml with the rounds it starts from, or `base` under a lineage."""
        prev, packed = None, False
        if round_id != "base":
            spec = self.params.round(round_id)
            packed = spec.packed
            lineage, prev = spec.lineage, self.round(spec.prev, spec.lineage)
            start = self.params.rounds[round_id].start if round_id in self.params.rounds else None
            if start is not None and prev.adapter_hash != start.adapter_hash:
                # a round declared from a released version: its prev must still hold that adapter
                raise ParamsError(
                    f"rounds.{round_id}.start: {start.release}'s adapter is {start.adapter_hash[:12]}..., but "
                    f"{prev.model} holds {str(prev.adapter_hash)[:12]}...: restore it (`dvc pull`, `dvc checkout`)"
                )
        elif lineage is None:
            raise ValueError("the base round needs a lineage")
        model, data, critic = (pair[packed] for pair in self.homes(lineage, round_id))
        return Round(
            round_id,
            lineage,
            data=data,
            model=model,
            metrics=self.metrics / lineage / f"eval_{round_id}.json",
            view=self.view(lineage),
            prev=prev,
            critic=None if round_id == "base" else critic,
        )

    def homes(self, lineage: str, round_id: str) -> list[tuple[Path, Path]]:
        """A round's model, data and critic directories: (at its stage paths, packed under
        retired/<lineage>/<round>/ once retired with no active round starting from it)."""
        here = (self.rounds / round_id, self.rounds_data / lineage / round_id, self.critics / round_id)
        return [(h, self.retired / lineage / round_id / part) for h, part in zip(here, PACKED)]

    def judge(self, lineage: str) -> Path:
        """The lineage's learned reward model."""
        return self.judges / lineage

    def view(self, lineage: str) -> Path:
        """The lineage's dataset view: its characters' split files."""
        return self._view if self._view is not None else self.views / lineage

    def critic_metrics(self, r: Round) -> Path:
        """critic@<round>'s fit of its value head, beside the round's evaluation."""
        return self.metrics / r.lineage / f"critic_{r.id}.json"

    @property
    def leakage(self) -> Path:
        return leakage_file(self.metrics)

    @property
    def data_metrics(self) -> Path:
        """metrics/data.json: what collect and scrub counted."""
        return self.metrics / "data.json"
