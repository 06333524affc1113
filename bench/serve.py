"""Latency and throughput of `loraloop serve` under concurrent clients, against the peer a server
without batching is: transformers' `generate` per request, one at a time (measured in this process,
so the peer pays no HTTP, JSON or scheduling cost: its best case).

    python bench/serve.py [--requests 64] [--concurrency 16] [--max-tokens 64]

Needs the demo's releases (`make demo`). Both sides answer the same tutor prompts (the first user
turn of eval-split conversations) greedily with the tutor's stable adapter, and the texts are
compared. Prints p50/p95 latency and tokens/s of each, then a disconnect case (clients that leave
after their first chunk: the tokens made for them anyway); the last line is the throughput ratio.
(A vLLM CPU server as a third side is not here yet: `make vllm-cpu` builds 3.4 GB.)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
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


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_side(texts: list[str], concurrency: int, max_tokens: int) -> tuple[list[str], list[float], int, float]:
    port, log_root = free_port(), tempfile.mkdtemp(prefix="bench-serve-")
    server = subprocess.Popen(
        [sys.executable, "-m", "loraloop.cli", "serve", "--port", str(port), "--batch-size", str(concurrency)]
        + ["--log-root", log_root],  # not the project's logs: monitor would count the benchmark
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        client = openai.OpenAI(base_url=url, api_key="none", timeout=600)

        def ask(text: str):
            t = time.perf_counter()
            r = client.chat.completions.create(
                model="tutor", messages=[{"role": "user", "content": text}], temperature=0, max_tokens=max_tokens
            )
            return r.choices[0].message.content, time.perf_counter() - t, r.usage.completion_tokens

        ask(texts[0])  # warm-up: the adapter loads on first use
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            out = list(pool.map(ask, texts))
        wall = time.perf_counter() - t0
        disconnects(url, texts[0], concurrency, Path(log_root), lambda: ask(texts[0])[1])
    finally:
        server.terminate()
        server.wait(timeout=60)
    return [o[0] for o in out], [o[1] for o in out], sum(o[2] for o in out), wall


def disconnects(url: str, text: str, clients: int, log_root: Path, one_request) -> None:
    """`clients` streaming clients that leave after their first chunk of a 512-token reply: the
    tokens made for them after they left (the server's counters), and how long the next request
    then takes against one on an idle server."""
    import json

    idle = one_request()
    body = {"model": "tutor", "messages": [{"role": "user", "content": text}], "stream": True}
    body |= {"temperature": 1.0, "max_tokens": 512}

    def leave(i: int) -> None:
        with httpx.stream("POST", f"{url}/chat/completions", json={**body, "seed": i}, timeout=600) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(leave, range(clients)))
    after = one_request()
    time.sleep(1.0)  # the cancelled exchanges are logged once their jobs halt
    rows = [json.loads(line) for f in (log_root / "logs/serve").glob("*.jsonl") for line in f.read_text().splitlines()]
    cut = [r for r in rows if r.get("finish_reason") == "cancelled"]
    made = sum(r["completion_tokens"] for r in cut)
    print(
        f"disconnects: {len(cut)}/{clients} clients left after their first chunk; {made} tokens made for them "
        f"in all (of {clients * 512} asked); the next request took {after:.2f} s (idle: {idle:.2f} s)"
    )


def peer_side(texts: list[str], max_tokens: int) -> tuple[list[str], list[float], int, float]:
    from peft import PeftModel

    routing = read_json(ROOT / "models/routing.json")["tutor"]
    adapter = ROOT / routing["stable"]["adapter"]
    meta = yaml.safe_load((adapter.parent / "metadata.yaml").read_text(encoding="utf-8"))
    tok = load_tokenizer(ROOT / "models/base")
    model = PeftModel.from_pretrained(load_base(ROOT / "models/base"), adapter).eval()
    system = {"role": "system", "content": meta["system_prompts"]["tutor"]}
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    if not (ROOT / "models/routing.json").is_file():
        sys.exit("no releases to serve: run `make demo` first")
    rows = load_split(ROOT / "data/lineages/tutor", "eval")
    texts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows][: args.requests]
    print(f"{len(texts)} requests, {args.concurrency} concurrent clients, max_tokens {args.max_tokens}, greedy")
    served, s_lat, s_tok, s_wall = serve_side(texts, args.concurrency, args.max_tokens)
    peer, p_lat, p_tok, p_wall = peer_side(texts, args.max_tokens)
    same = sum(a == b for a, b in zip(served, peer))
    for name, lat, tok, wall in (
        ("loraloop serve (HTTP, batched)", s_lat, s_tok, s_wall),
        ("HF generate per request (in-process)", p_lat, p_tok, p_wall),
    ):
        print(
            f"{name:38} latency p50 {quantile(lat, 0.5):6.2f} s  p95 {quantile(lat, 0.95):6.2f} s  "
            f"{tok / wall:7.1f} tokens/s  {len(lat) / wall:5.2f} requests/s"
        )
    print(f"identical replies: {same}/{len(texts)}")
    print(f"throughput ratio (loraloop serve / HF generate per request): {(s_tok / s_wall) / (p_tok / p_wall):.2f}x")


if __name__ == "__main__":
    main()
