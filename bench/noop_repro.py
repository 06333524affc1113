"""What a user waits for when there is nothing to do: `dvc repro` and `dvc status` on an up-to-date
pipeline with 3 lineages x 5 rounds declared, and `loraloop collect --help`.

    python bench/noop_repro.py [--lineages 3] [--rounds 5] [--repeat 3]

Builds a throwaway git + DVC repo from this project's dvc.yaml, stages/, loraloop/ and data/raw, with
params.yaml's lineages and rounds widened (a third lineage copies the tutor's), writes a small
placeholder for every output, records them all with `dvc commit`, and times the commands
(median of --repeat). No stage runs: this measures DVC's and loraloop's own start-up and checks.
Target: a no-op `dvc repro` under 3 s.
"""

from __future__ import annotations

import argparse
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


def widen(params: dict, lineages: int, rounds: int) -> dict:
    names = list(params["lineages"])
    while len(names) < lineages:
        name = f"guide{len(names)}"
        params["lineages"][name] = {
            "system_prompts": {name: params["lineages"]["tutor"]["system_prompts"]["tutor"]},
            "rules": {},
        }
        names.append(name)
    params["rounds"] = {
        f"{name}-r{k}": {"lineage": name, "prev": "base" if k == 1 else f"{name}-r{k - 1}"}
        for name in names[:lineages]
        for k in range(1, rounds + 1)
    }
    return params


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lineages", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="Build the repo here and keep it (to profile)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.keep or Path(tmp) / "repo"
        repo.mkdir(parents=True)
        for name in ("dvc.yaml", "pyproject.toml"):
            shutil.copy(ROOT / name, repo / name)
        for package in ("stages", "loraloop"):
            shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "data/raw", repo / "data/raw")
        params = widen(yaml.safe_load((ROOT / "params.yaml").read_text()), args.lineages, args.rounds)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        dvc = str(BIN / "dvc")
        for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.autostage", "false"]):
            subprocess.run(cmd, cwd=repo, check=True)
        n_stages = placeholders(repo)
        done = subprocess.run([dvc, "commit", "-f"], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"dvc commit failed:\n{done.stderr[-2000:]}")
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], cwd=repo, check=True
        )
        repro, out = timed([dvc, "repro"], repo, args.repeat)
        if "up to date" not in out and "didn't change" not in out:
            sys.exit(f"dvc repro found work to do:\n{out[-2000:]}")
        status, _ = timed([dvc, "status"], repo, args.repeat)
        help_s, _ = timed([str(BIN / "loraloop"), "collect", "--help"], repo, args.repeat)
    print(f"{args.lineages} lineages x {args.rounds} rounds: {n_stages} stages, all up to date")
    print(f"loraloop collect --help: {help_s:5.2f} s")
    print(f"dvc status:              {status:5.2f} s")
    print(f"dvc repro (nothing to do): {repro:5.2f} s (target < 3 s)")


if __name__ == "__main__":
    main()
