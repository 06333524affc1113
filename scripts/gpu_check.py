"""`make gpu-check`: what loraloop does on a CUDA machine, in one run, on a machine with no network.
Installs the wheels `make gpu-wheels` fetched into a folder of its own (the machine's packages stay
as they are), runs the `gpu`-marked tests and bench/gpu.py, and writes gpu-check.json (every
figure) and gpu-check.txt (what a person reads) into --out.

    python3 scripts/gpu_check.py --out DIR [--wheels .whl] [--shape 8b] [--parts ...] [--budget 540]

Without CUDA it runs bench/gpu.py's tiny shape on the CPU and the gpu tests skip: that is how CI
checks it (tests/test_gpu_check.py). Each step gets what is left of --budget seconds."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "dvc", "bitsandbytes", "pydantic")
GPU_TESTS = ["tests/test_gpu.py", "tests/test_model_stages.py::test_qlora_trains_on_cuda"]


def install(wheels: list[Path], site: Path) -> dict:
    """The wheels into `site` (nothing else touched), and the environment that sees them first:
    the project on PYTHONPATH, their commands (dvc) and a `loraloop` launcher on PATH, the tiny
    test model that travelled beside them."""
    env = dict(os.environ)
    found = [w for folder in wheels if folder.is_dir() for w in sorted(folder.glob("*.whl"))]
    if found:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        subprocess.run([*cmd, "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, found)], check=True)
    (site / "bin").mkdir(parents=True, exist_ok=True)
    launcher = site / "bin/loraloop"
    launcher.write_text(f"#!{sys.executable}\nfrom loraloop.cli import main\n\nmain()\n")
    launcher.chmod(0o755)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = f"{site / 'bin'}{os.pathsep}{env['PATH']}"
    for folder in wheels:
        tiny = folder / "tiny-model"
        if (tiny / "config.json").is_file():
            env["LORALOOP_TINY_MODEL"] = str(tiny.resolve())
    env.update(DVC_NO_ANALYTICS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def versions(env: dict) -> dict:
    """The versions this run sees, and the device."""
    probe = (
        "import importlib.metadata as m, json, torch\n"
        f"names = {list(PACKAGES)!r}\n"
        "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
        "out = {n: v(n) for n in names}\n"
        "out['cuda'] = torch.cuda.get_device_name() if torch.cuda.is_available() else None\n"
        "out['torch_cuda'] = torch.version.cuda\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return {"python": sys.version.split()[0], **json.loads(done.stdout)}


def run_tests(env: dict, timeout: float) -> dict:
    """The gpu-marked tests; their counts and the output's tail."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs", *GPU_TESTS]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = f"{exc.stdout or ''}\nstopped after {timeout:.0f} s", None
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", out)}
    return {"exit_status": code, **counts, "output": out[-6000:]}


def run_bench(env: dict, shape: str, parts: str, out: Path, timeout: float) -> dict:
    """bench/gpu.py at `shape`; its record (gpu.json) or why there is none."""
    cmd = [sys.executable, "bench/gpu.py", "--shape", shape, "--parts", parts, "--out", str(out)]
    cmd += ["--budget", str(max(20.0, timeout - 15))]
    error = None
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            error = (done.stderr or done.stdout)[-3000:]
    except subprocess.TimeoutExpired:
        error = f"stopped after {timeout:.0f} s"
    if not (out / "gpu.json").is_file():  # written after each side: what was measured stays
        return {"error": error or "bench/gpu.py wrote no record"}
    record = json.loads((out / "gpu.json").read_text())
    if error:
        record["error"] = error
    record["summary"] = (out / "gpu.txt").read_text().splitlines()
    (out / "gpu.json").unlink()
    (out / "gpu.txt").unlink()
    return record


def report(check: dict) -> list[str]:
    v, t, b = check["versions"], check["tests"], check["bench"]
    lines = [f"loraloop gpu-check {check['date']}: {v['cuda'] or 'no CUDA device (CPU mode)'}"]
    lines.append(", ".join(f"{k} {v[k]}" for k in ("python", *PACKAGES) if k in v) + f", CUDA {v['torch_cuda']}")
    if t is not None:
        shown = ", ".join(f"{n} {k}" for k, n in t.items() if k in ("passed", "failed", "skipped", "error", "errors"))
        lines.append(f"gpu tests: {shown or 'none ran'} (exit status {t['exit_status']})")
    lines += b.get("summary") or [f"bench/gpu.py: {b.get('error', 'no record')}"]
    return lines + [f"gpu-check: {check['seconds']:.0f} s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Where gpu-check.json and gpu-check.txt go.")
    ap.add_argument("--wheels", type=Path, nargs="*", default=[ROOT / ".whl", ROOT / ".whl-qlora"])
    ap.add_argument("--site", type=Path, default=Path("/tmp/loraloop-gpu-site"), help="Where the wheels go.")
    ap.add_argument("--shape", choices=["8b", "tiny"], default=None, help="Default: 8b with CUDA, tiny without.")
    ap.add_argument("--parts", default="peak,train,methods,sample,speculative,qlora")
    ap.add_argument("--no-tests", action="store_true", help="Only bench/gpu.py.")
    ap.add_argument("--budget", type=float, default=540, help="Seconds for the whole check.")
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    env = install(args.wheels, args.site)
    found = versions(env)
    shape = args.shape or ("8b" if found["cuda"] else "tiny")
    left = lambda: max(30.0, args.budget - (time.perf_counter() - t0))  # noqa: E731
    tests = None if args.no_tests else run_tests(env, min(240.0, left() / 3))
    bench = run_bench(env, shape, args.parts, args.out, left())
    check = {"date": time.strftime("%Y-%m-%d"), "shape": shape, "versions": found, "tests": tests, "bench": bench}
    check["seconds"] = time.perf_counter() - t0
    lines = report(check)
    (args.out / "gpu-check.json").write_text(json.dumps(check, indent=2, sort_keys=True) + "\n")
    (args.out / "gpu-check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
