"""Fetch the wheels `make gpu-check` needs on the lent CUDA machine (Python 3.12, manylinux x86_64,
no network), pinned as loraloop pins them, into an ignored folder, and say whether each set fits
the 64 MiB one copy to that machine may hold.

    python scripts/gpu_wheels.py [--out .whl] [--list scripts/gpu_wheels.txt]

The names are scripts/gpu_wheels.txt's; their versions come from constraints.txt (everything
loraloop installs) or pyproject.toml's extras. A package published only as a source archive (pure
Python, e.g. antlr4's runtime) is built into a wheel here. The set after `[qlora]` goes to
<out>-qlora, to travel in a copy of its own. Beside the wheels, <out>/tiny-model: the tests' tiny random
model with SmolLM2's tokenizer, which the lent machine cannot build (it has no GGUF wheel)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # what one copy to the lent machine may hold
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64"]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """name -> version, from constraints.txt and the exact pins of pyproject.toml's extras."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[norm(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]:
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+?)(\[.*\])?==([^\s;,]+)", spec.split("#")[0].strip())
        if m:
            out[norm(m.group(1))] = m.group(3)
    return out


def wanted(list_file: Path) -> dict[str, list[str]]:
    """The sets of names: the main one, and each `[name]` section after it."""
    sets, current = {"main": []}, "main"
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sets[current] = []
        else:
            sets[current].append(line)
    return sets


def fetch(spec: str, out: Path) -> None:
    """One wheel for the lent machine; a pure-Python source archive is built into one."""
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", *platform, "-d", str(out), spec]
    if subprocess.run(cmd, capture_output=True, text=True).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:  # published as source only: build it (pure Python)
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, spec]
        done = subprocess.run(build, capture_output=True, text=True)
        built = list(Path(tmp).glob("*-py3-none-any.whl")) + list(Path(tmp).glob("*-py2.py3-none-any.whl"))
        if done.returncode != 0 or not built:
            sys.exit(
                f"{spec}: no wheel for Python 3.12 manylinux x86_64, and none could be built:\n{done.stderr[-1500:]}"
            )
        built[0].rename(out / built[0].name)


def tiny_model(out: Path) -> None:
    """tests/tiny_model.py's model, built here, to travel with the wheels."""
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    import tiny_model as tiny

    shutil.rmtree(out, ignore_errors=True)
    tiny.build(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".whl")
    ap.add_argument("--list", type=Path, default=ROOT / "scripts/gpu_wheels.txt")
    args = ap.parse_args()
    pinned, over = pins(), False
    for name, names in wanted(args.list).items():
        out = args.out if name == "main" else args.out.with_name(f"{args.out.name}-{name}")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.whl"):
            old.unlink()
        for pkg in names:
            version = pinned.get(norm(pkg))
            if version is None:
                sys.exit(f"{args.list}: {pkg} has no pin in constraints.txt or pyproject.toml")
            fetch(f"{pkg}=={version}", out)
        if name == "main":
            tiny_model(out / "tiny-model")
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        fits = size <= LIMIT
        over |= not fits
        print(
            f"{out}: {len(list(out.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB of the 64 MiB one copy holds"
            + ("" if fits else "  TOO LARGE: split the list")
            + (" (the tiny test model included)" if name == "main" else "")
        )
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
