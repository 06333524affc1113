"""What a user waits for when there is nothing to do, as a fleet grows: `dvc repro`, `dvc status` and
`loraloop status` on an up-to-date pipeline with N lineages, each with --rounds active rounds in
params.yaml and --retired rounds retired into retired/<lineage>.dvc (`loraloop round retire`).

    python bench/noop_repro.py [--lineages 3,20,50] [--rounds 2] [--retired 20] [--repeat 3]
                               [--before] [--unpacked]

Builds a throwaway git + DVC repo per lineage count from this project's dvc.yaml, stages/,
loraloop/ and data/raw, with params.yaml's lineages widened (each new lineage copies the tutor's),
writes a small placeholder for every output (and for every retired round's model, data and
metrics, packed as retirement packs them), records them all with `dvc commit`, and times the
commands (median of --repeat). --before also times each stage declaring its params.yaml keys,
--unpacked every retired round at its stage paths (as retirement left them before packing). No
stage runs: this measures DVC's and loraloop's own start-up and checks. Targets at 20 lineages: a
no-op `dvc repro` and `dvc status` under 5 s, `loraloop status` under 2 s. Prints the growth
between lineage counts (the exponent of time against stages).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from loraloop.history import workspace_at  # noqa: E402
from loraloop.params import RETIRED, RETIRED_KEY, Params, RetiredSpec  # noqa: E402


def widen(params: dict, lineages: int, rounds: int, retired: int) -> tuple[dict, dict]:
    """params.yaml with `lineages` lineages of `rounds` active rounds each, and each lineage's
    retired rounds before them: (params, lineage -> retired round -> spec)."""
    names = list(params["lineages"])
    while len(names) < lineages:
        name = f"guide{len(names)}"
        params["lineages"][name] = {
            "system_prompts": {name: params["lineages"]["tutor"]["system_prompts"]["tutor"]},
            "rules": {},
        }
        names.append(name)
    params["lineages"] = {n: params["lineages"][n] for n in names[:lineages]}
    archives, params["rounds"] = {}, {}
    for name in names[:lineages]:
        ids = [f"{name}-r{k}" for k in range(1, retired + rounds + 1)]
        specs = {r: {"lineage": name, "prev": "base" if k == 0 else ids[k - 1]} for k, r in enumerate(ids)}
        archives[name] = {r: specs[r] for r in ids[:retired]}
        params["rounds"].update({r: specs[r] for r in ids[retired:]})
    return params, archives


def write_archives(repo: Path, params: dict, archives: dict, unpacked: bool = False) -> None:
    """retired/<lineage>.dvc as `loraloop round retire` leaves it, with a placeholder model, data
    directory and metrics per round: the round the lineage's first active round starts from at its
    stage paths, the others packed into retired/<lineage>/ (all at their stage paths if `unpacked`,
    as retirement laid them out before packing)."""
    retired = {r: RetiredSpec.model_validate(spec) for rounds in archives.values() for r, spec in rounds.items()}
    ws = workspace_at(repo, Params.model_validate(params, context={"retired": retired}))
    for lineage, rounds in archives.items():
        if not rounds:
            continue
        outs, last = [], list(rounds)[-1]
        for r in rounds:
            in_place = unpacked or r == last
            model, data = (pair[not in_place] for pair in ws.homes(lineage, r)[:2])  # no critic
            for d in (model, data):
                d.mkdir(parents=True, exist_ok=True)
                (d / "placeholder.json").write_text("{}\n")
                if in_place:
                    outs.append({"path": Path("..", d.relative_to(repo)).as_posix()})
            (model / "ROUND.json").write_text('{"adapter_hash": null}\n')
            (repo / "metrics" / lineage).mkdir(parents=True, exist_ok=True)
            (repo / "metrics" / lineage / f"eval_{r}.json").write_text("{}\n")
            rounds[r] = {**rounds[r], **({} if in_place else {"packed": True})}
        packed = [{"path": lineage}] if (repo / RETIRED / lineage).is_dir() else []
        doc = {"meta": {RETIRED_KEY: rounds}, "outs": packed + outs}
        (repo / RETIRED).mkdir(exist_ok=True)
        (repo / RETIRED / f"{lineage}.dvc").write_text(yaml.safe_dump(doc, sort_keys=False))


def placeholders(repo: Path) -> int:
    """A small file at every output path (a file inside each directory output), and at every
    dependency path that lies inside another stage's output directory."""
    from dvc.repo import Repo

    stages = list(Repo(str(repo)).index.stages)
    for stage in stages:
        for out in [*stage.outs, *stage.deps]:
            path = Path(out.fs_path)
            if path.exists():
                continue
            if path.suffix in {".json", ".jsonl", ".csv", ".md", ".tsv", ".txt", ".html"}:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder.json").write_text("{}\n")
    return len(stages)


def timed(cmd: list[str], cwd: Path, repeat: int) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        out = done.stdout
    return statistics.median(times), out


def per_stage_params(repo: Path) -> None:
    """dvc.yaml as it was before params/<kind>/<name>.json: each lineage's and round's stage declares
    the params.yaml keys it reads (the same keys, from loraloop/params_deps.py)."""
    from loraloop.params_deps import PER_LINEAGE, READS

    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    for kind, keys in READS.items():
        body = spec["stages"][kind]["do"]
        lineage = "${key}" if kind in PER_LINEAGE else "${item.lineage}"
        body["deps"] = [d for d in body["deps"] if not str(d).startswith("params/")]
        body["params"] = [k.format(lineage=lineage, round="${key}") for k in keys]
    (repo / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def build(repo: Path, lineages: int, rounds: int, retired: int, before: bool = False, unpacked: bool = False) -> int:
    """The throwaway repo, every output recorded: returns its number of stages."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for package in ("stages", "loraloop", "code"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data/raw", repo / "data/raw")
    params, archives = widen(yaml.safe_load((ROOT / "params.yaml").read_text()), lineages, rounds, retired)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    if before:
        per_stage_params(repo)
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.autostage", "false"]):
        subprocess.run(cmd, cwd=repo, check=True)
    write_archives(repo, params, archives, unpacked)  # params.yaml's rounds start from the retired ones
    loraloop = [str(BIN / "loraloop"), "params", "--out", "params"]
    done = subprocess.run(loraloop, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"loraloop params failed:\n{done.stderr[-2000:]}")
    n_stages = placeholders(repo)
    done = subprocess.run([dvc, "commit", "-f"], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"dvc commit failed:\n{done.stderr[-2000:]}")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=repo, check=True)
    return n_stages


def measure(repo: Path, repeat: int) -> dict[str, float]:
    dvc = str(BIN / "dvc")
    repro, out = timed([dvc, "repro"], repo, repeat)
    if "up to date" not in out and "didn't change" not in out:
        sys.exit(f"dvc repro found work to do:\n{out[-2000:]}")
    status, _ = timed([dvc, "status"], repo, repeat)
    mine, _ = timed([str(BIN / "loraloop"), "status"], repo, repeat)
    return {"dvc repro": repro, "dvc status": status, "loraloop status": mine}


TARGETS = {"dvc repro": 5.0, "dvc status": 5.0, "loraloop status": 2.0}  # at 20 lineages


# Where a no-op `dvc repro` spends its time, by DVC function (cumulative, under cProfile).
PARTS = {
    "params.yaml parsed and searched per stage": "dvc/dependency/param.py:read_param_file",
    "dvc.yaml + dvc.lock loaded (index)": "dvc/repo/index.py:from_repo",
    "deps and outs hashed (state db)": "dvc/output.py:status",
    "read-write lock file per stage": "dvc/rwlock.py:rwlock",
}


def profile(repo: Path) -> None:
    import pstats

    prof = repo / "repro.prof"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "dvc", "repro"]
    subprocess.run(cmd, cwd=repo, env=env, capture_output=True, check=True)
    stats = pstats.Stats(str(prof)).stats
    total = max(ct for (_, _, _, ct, _) in stats.values())
    print(f"a no-op dvc repro under cProfile ({total:.1f} s profiled):")
    for label, where in PARTS.items():
        file, name = where.split(":")
        t = sum(ct for (f, _, n), (_, _, _, ct, _) in stats.items() if f.endswith(file) and n == name)
        print(f"  {label:44} {t / total:5.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lineages", default="3,20,50", help="comma-separated lineage counts")
    ap.add_argument("--rounds", type=int, default=2, help="active rounds per lineage (in params.yaml)")
    ap.add_argument("--retired", type=int, default=20, help="retired rounds per lineage (retired/<lineage>.dvc)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--before", action="store_true", help="also time per-stage params (dvc.yaml before params/<kind>/<name>.json)"
    )
    ap.add_argument(
        "--unpacked", action="store_true", help="also time retired rounds all at their stage paths (before packing)"
    )
    ap.add_argument("--profile", action="store_true", help="profile a no-op repro at the largest count")
    ap.add_argument("--keep", type=Path, default=None, help="Build the repos under here and keep them (to profile)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.lineages.split(",")):
            for side in ["now"] + ["per-stage params"] * args.before + ["retired unpacked"] * args.unpacked:
                repo = (args.keep or Path(tmp)) / f"repo-{n}-{side.replace(' ', '-')}"
                before, unpacked = side == "per-stage params", side == "retired unpacked"
                stages = build(repo, n, args.rounds, args.retired, before, unpacked)
                times = measure(repo, args.repeat)
                lock_kb = (repo / "dvc.lock").stat().st_size / 1024
                if side == "now":
                    rows.append((n, stages, times))
                shown = "  ".join(f"{k} {v:6.2f} s" for k, v in times.items())
                print(
                    f"{n:3d} lineages x ({args.rounds} active + {args.retired} retired) rounds: {stages:4d} stages, "
                    f"{side:17}, dvc.lock {lock_kb:5.0f} KB  {shown}"
                )
        if args.profile:
            profile((args.keep or Path(tmp)) / f"repo-{rows[-1][0]}-now")
    for (n0, s0, t0), (n1, s1, t1) in zip(rows, rows[1:]):
        growth = "  ".join(
            f"{k} x{t1[k] / t0[k]:.2f} (exponent {math.log(t1[k] / t0[k]) / math.log(s1 / s0):.2f})" for k in t0
        )
        print(f"{n0} -> {n1} lineages ({s0} -> {s1} stages): {growth}")
    at20 = next((t for n, _, t in rows if n == 20), None)
    if at20:
        print("at 20 lineages: " + "  ".join(f"{k} {at20[k]:.2f} s (target < {TARGETS[k]:.0f} s)" for k in TARGETS))


if __name__ == "__main__":
    main()
