"""`loraloop status`: where the loop stands. Per lineage: the version in service, how many new
opt-in examples (served conversations, negatives) came in since it was released, and whether a
retrain is due (`retrain.min_new_examples`); then which DVC stages are out of date and what
`dvc repro` would run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from ..params import Params
from ..release import registry
from .logs import NEGATIVES, SERVED, read_rows


def new_examples(root: Path, characters: list[str], since: str | None) -> dict[str, int]:
    """Opt-in served exchanges and negatives of these characters logged after `since` (ISO time)."""
    counts = {"served": 0, "negatives": 0}
    for kind, folder in (("served", SERVED), ("negatives", NEGATIVES)):
        # Day files before the release's day hold nothing newer: a year of logs is not read.
        for row in read_rows(root / folder, since_day=since[:10] if since else None):
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


@contextmanager
def params_read_once():
    """DVC parses params.yaml again for every stage it checks, then finds each key by walking the
    whole document (dvc/dependency/param.py: load_path, dpath.get): with 200 stages that is half a
    status. Within this process, for the one status it asks, each params file is parsed once and a
    plain dotted key is looked up directly; anything else (a glob) goes to DVC's own function."""
    from dvc.dependency import param

    original, parsed = param.read_param_file, {}

    def read_once(fs, path, key_paths=None, flatten=False, **kwargs):
        if not (flatten and key_paths) or kwargs or any("*" in k for k in key_paths):
            return original(fs, path, key_paths, flatten, **kwargs)
        if path not in parsed:
            parsed[path] = param.load_path(path, fs)
        out = {}
        for key in key_paths:
            value, found = parsed[path], True
            for part in key.split("."):
                if not isinstance(value, dict) or part not in value:
                    found = False
                    break
                value = value[part]
            if found:
                out[key] = value
        return out

    param.read_param_file = read_once
    try:
        yield
    finally:
        param.read_param_file = original


@contextmanager
def hashed_once():
    """DVC hashes a path again for every stage that lists it: models/base is a dependency of most
    stages. Within this process, for the one status it asks, each path is hashed once."""
    from dvc.output import Output

    original, seen = Output._get_hash_meta, {}

    def once(self):
        key = (self.fs_path, self.hash_name, self.use_cache)
        if key not in seen:
            seen[key] = original(self)
        return seen[key]

    Output._get_hash_meta = once
    try:
        yield
    finally:
        Output._get_hash_meta = original


_locks: dict[tuple, dict] = {}


def read_lock(path: Path) -> dict:
    """dvc.lock as data, parsed once per process while its file stays the same (DVC and
    change_warnings both read it)."""
    from ..files import parse_yaml

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _locks:
        _locks.clear()
        _locks[key] = parse_yaml(path.read_text(encoding="utf-8")) or {}
    return _locks[key]


@contextmanager
def lock_read_with_libyaml():
    """DVC reads dvc.lock (hundreds of KB in a fleet) with ruamel's pure-Python parser; within this
    process it is read with libyaml. dvc.lock is DVC's own output: plain mappings, lists, strings and
    numbers, which both parsers read alike."""
    from dvc.utils import strictyaml

    original = strictyaml.parse_yaml

    def parse(text, path, typ="safe"):
        if typ == "safe" and Path(path).name == "dvc.lock":
            return read_lock(Path(path))
        return original(text, path, typ=typ)

    strictyaml.parse_yaml = parse
    try:
        yield
    finally:
        strictyaml.parse_yaml = original


def pipeline_status(root: Path):
    """(dvc.yaml's stage graph, the names of its stages whose deps, outputs or command changed), as
    `dvc status` finds them, for less: the graph is dvc.yaml's alone (a retired round's archive,
    retired/<lineage>.dvc, is data, never a stage `dvc repro` runs; where a round starts from one,
    its dependency on the round's files is checked), each path is hashed once, dvc.lock is parsed
    with libyaml, and no stage takes DVC's read-write lock file (this only reads; the repo lock is
    held)."""
    from dvc.repo import Repo, lock_repo
    from dvc.repo.index import Index
    from dvc.stage import Stage

    unlocked = Stage.status.__wrapped__  # Stage.status without its rwlock decorator
    with Repo(str(root)) as repo, lock_repo(repo), params_read_once(), hashed_once(), lock_read_with_libyaml():
        index = Index.from_file(repo, "dvc.yaml")
        changed = {s.addressing for s in index.stages if unlocked(s)}
        return index.graph, changed


CODE_STAGE = "code"  # writes code/<kind>.json (loraloop/code_deps.py)
PARAMS_STAGE = "params"  # writes params/<kind>/<name>.json (loraloop/params_deps.py)
FINGERPRINTS = (CODE_STAGE, PARAMS_STAGE)  # stages whose outputs move only the stages named above


def stage_kind(stage) -> str | None:
    """The loraloop subcommand a DVC stage runs (`loraloop eval --round ...` -> eval)."""
    words = (getattr(stage, "cmd", None) or "").split()
    return words[1] if len(words) > 1 and words[0] == "loraloop" else None


def moved_kinds(root: Path) -> set[str]:
    """The kinds of stage whose code fingerprint the code stage would rewrite."""
    from ..code_deps import fingerprints
    from ..files import read_json

    def recorded(kind: str) -> dict | None:
        path = root / "code" / f"{kind}.json"
        return read_json(path) if path.is_file() else None

    return {kind for kind, fp in fingerprints(root).items() if recorded(kind) != fp}


def moved_params(root: Path) -> dict[str, list[str]]:
    """The stages whose params slice the params stage would rewrite, each with the keys that moved
    (against the slice it last wrote)."""
    from ..files import read_json
    from ..params import load_params
    from ..params_deps import changed_keys, slices

    out = {}
    for rel, values in slices(load_params(root / "params.yaml")).items():
        path = root / PARAMS_STAGE / rel
        old = read_json(path) if path.is_file() else None
        if old != values:
            kind, name = rel.removesuffix(".json").split("/")
            out[f"{kind}@{name}"] = changed_keys(old, values)
    return out


class Stale(NamedTuple):
    changed: list[str]  # stages whose deps, params or outputs changed
    # every stage `dvc repro` may run: those and all downstream of them, as DVC skips one whose
    # inputs come out unchanged
    would_run: list[str]
    # the stages it will run for certain: downstream too, but not past a lineage's view that is
    # not itself stale, since new data passes a view only for the lineages whose characters it is of
    certain: list[str]
    params_changed: dict[str, list[str]]  # a stale stage -> the params.yaml keys it reads that moved


def stale_stages(root: Path) -> Stale:
    """What is out of date in the pipeline under `root`, and what `dvc repro` would run."""
    import networkx as nx

    graph, changed = pipeline_status(root)  # edges point from a stage to the stages it depends on
    if CODE_STAGE in changed:  # DVC sees the source tree move; which stages' code moved is ours to say
        kinds = moved_kinds(root)
        changed |= {s.addressing for s in graph.nodes if stage_kind(s) in kinds}
    keys = {}
    if PARAMS_STAGE in changed:  # and params.yaml: which stages read the keys that moved is ours too
        names = {n.addressing for n in graph.nodes}
        keys = {s: k for s, k in moved_params(root).items() if s in names}
        changed |= set(keys)
    stale = [s for s in graph.nodes if s.addressing in changed]
    would_run = {s.addressing for s in stale}
    for s in stale:
        if s.addressing not in FINGERPRINTS:  # what follows them is what their new files move
            would_run |= {a.addressing for a in nx.ancestors(graph, s)}
    certain, todo = set(), list(stale)
    while todo:
        s = todo.pop()
        if s.addressing in certain:
            continue
        certain.add(s.addressing)
        if s.addressing not in FINGERPRINTS and (not s.addressing.startswith("view@") or s.addressing in changed):
            todo.extend(graph.predecessors(s))
    order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]
    ordered = lambda names: [s for s in order if s in names]  # noqa: E731
    return Stale(ordered(changed), ordered(would_run), ordered(certain), keys)


def locked_params(root: Path, stage: str) -> dict | None:
    """The params.yaml values `stage` last ran with (dvc.lock), or None before its first run."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    entry = read_lock(lock).get("stages", {}).get(stage)
    return (entry or {}).get("params", {}).get("params.yaml")


def change_warnings(params: Params, root: Path, will_run: list[str]) -> list[str]:
    """What a pending `dvc repro` does beyond one lineage: a changed split (every character's
    records move between train and eval), and retraining (so possibly re-releasing) several
    lineages. `will_run`: the stages it runs for certain (stale_stages)."""
    out = []
    ran = (locked_params(root, "version") or {}).get("version")
    if ran is not None:
        now = params.version.model_dump()
        moved = {k: (ran.get(k), v) for k, v in now.items() if ran.get(k, v) != v}
        if "eval_fraction" in moved:
            out.append(
                "version.eval_fraction changed ({} -> {}): every character's train/eval split is redrawn and "
                "every lineage retrains; for one small character raise version.min_eval instead".format(
                    *moved["eval_fraction"]
                )
            )
        elif "min_eval" in moved:
            out.append(
                "version.min_eval changed ({} -> {}): the splits of characters with fewer eval records "
                "than that are redrawn, and their lineages retrain".format(*moved["min_eval"])
            )
    retrained: dict[str, list[str]] = {}
    for stage in will_run:
        kind, _, round_id = stage.partition("@")
        if kind == "train" and round_id in params.rounds:
            retrained.setdefault(params.rounds[round_id].lineage, []).append(round_id)
    if len(retrained) > 1:
        which = "; ".join(f"{lin}: {', '.join(rs)}" for lin, rs in sorted(retrained.items()))
        out.append(
            f"`dvc repro` would retrain {len(retrained)} lineages ({which}), and package may release a new "
            "version of each to its users; to change one lineage, edit its own keys "
            "(lineages.<lineage>, rounds.<round>.sample / .train)"
        )
    return out
