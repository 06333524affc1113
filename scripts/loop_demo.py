"""The production half of the loop on the demo releases (`make loop-demo`, after `make demo`):

1. start `loraloop serve` on loopback,
2. 60 scripted student messages through the official openai client, from 20 users (most opted in),
3. thumbs down on some replies (most with a corrected reply), thumbs up on others,
4. `loraloop monitor` (metrics per version; problem replies -> data/raw/negatives),
5. `loraloop status` (new examples since the release: is a retrain due?),
6. `dvc repro`: the next data version with the served logs and negatives, the tutor's rounds on it,
   and package's release decision,

then prints what changed and the wall time of each step. Deterministic messages and decisions
(fixed seed); replies are greedy, so they depend only on the adapters."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package uses
import openai

QUESTIONS = [
    "How do I solve {a}x + {b} = {c}?",
    "What is {a} times {b}?",
    "Can you just tell me the answer to {a} + {b}?",
    "How do I find the area of a {a} by {b} rectangle?",
    "{a} 곱하기 {b}는 얼마예요?",
    "가로 {a}, 세로 {b}인 직사각형의 넓이는요?",
    "I don't get fractions. What is 1/{a} + 1/{b}?",
    "Why is {a} divided by {b} not a whole number?",
]
CORRECTIONS = [
    "What could you do to both sides first?",
    "What do you already know that is close to this one?",
    "Can you draw it as a grid and count the squares in one row?",
    "What do the two numbers have in common?",
    "한 줄에 몇 칸이 있는지 먼저 세어 볼까요?",
]


def messages(n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append(
            {
                "user": f"student_{i % 20:02d}",
                "opt_in": i % 20 not in (3, 7, 11, 17),  # 4 of the 20 students did not opt in
                "text": rng.choice(QUESTIONS).format(a=a, b=b, c=a * rng.randint(1, 5) + b),
            }
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def main() -> None:
    times: dict[str, float] = {}
    rng = random.Random(20261123)
    t0 = start = step("serve the demo releases")
    port = free_port()
    log = open(".dvc/tmp/loop-demo-serve.log", "w")  # noqa: SIM115 (the server's output, kept for a look)
    server = subprocess.Popen(["loraloop", "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            if server.poll() is not None:
                sys.exit("loraloop serve exited; see .dvc/tmp/loop-demo-serve.log")
            time.sleep(0.5)
    client = openai.OpenAI(base_url=url, api_key=os.environ.get("LORALOOP_API_KEY", "none"), timeout=600)
    print(f"up at {url}: {', '.join(m.id for m in client.models.list())}")
    times["serve start"] = time.perf_counter() - t0

    t0 = step("60 student messages through the openai client (10 at a time)")
    script = messages(60, rng)

    def ask(m: dict):
        t = time.perf_counter()
        r = client.chat.completions.create(
            model="tutor",
            messages=[{"role": "user", "content": m["text"]}],
            user=m["user"],
            metadata={"opt_in": "true" if m["opt_in"] else "false"},
            temperature=0,
            max_tokens=64,
        )
        return r, time.perf_counter() - t

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(ask, script))
    lat = sorted(t for _, t in replies)
    for m, (r, _) in list(zip(script, replies))[:3]:
        print(f"  {m['user']}: {m['text']}\n  tutor ({r.system_fingerprint}): {r.choices[0].message.content}")
    print(
        f"  ... {len(replies)} replies; latency p50 {lat[len(lat) // 2]:.1f} s, p95 {lat[int(0.95 * len(lat))]:.1f} s"
    )
    times["60 requests"] = time.perf_counter() - t0

    t0 = step("feedback: thumbs down (mostly with a correction) and thumbs up")
    down = up = 0
    for i, (m, (r, _)) in enumerate(zip(script, replies)):
        if not m["opt_in"] or i % 6 not in (0, 1):
            continue
        text = r.choices[0].message.content
        bad = "answer is" in text.lower() or "정답" in text or "?" not in text or i % 12 == 0
        body = {"response_id": r.id, "reaction": "down" if bad else "up"}
        if bad and i % 4 != 2:
            body["corrected"] = CORRECTIONS[i % len(CORRECTIONS)]
        httpx.post(f"{url}/feedback", json=body).raise_for_status()
        down, up = down + bad, up + (not bad)
    print(f"  {down} thumbs down, {up} thumbs up")
    server.terminate()
    server.wait(timeout=60)
    times["feedback"] = time.perf_counter() - t0

    t0 = step("loraloop monitor")
    print(run(["loraloop", "monitor"]).rstrip())
    times["monitor"] = time.perf_counter() - t0

    t0 = step("loraloop status")
    print(run(["loraloop", "status"]).rstrip())
    times["status"] = time.perf_counter() - t0

    t0 = step("dvc repro: the next data version, the tutor's rounds on it, the release decision")
    out = run(["dvc", "repro"])
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    print(f"  ran {len(ran)} stages: {', '.join(ran)}")
    times["dvc repro"] = time.perf_counter() - t0

    step("what changed")
    changelog = Path("data/version/CHANGELOG.md").read_text(encoding="utf-8").split("\n## ")[1]
    print("data/version/CHANGELOG.md, newest section:\n## " + changelog.strip())
    decision = json.loads(Path("reports/package.json").read_text(encoding="utf-8"))["tutor"]
    print(f"\nrelease decision (tutor): {json.dumps(decision, indent=2, ensure_ascii=False)}")
    print(run(["loraloop", "report"]).rstrip())

    print("\n== wall time")
    for name, seconds in times.items():
        print(f"  {name:12} {seconds:7.1f} s")
    print(f"make loop-demo: {time.perf_counter() - start:.0f} s wall time")


if __name__ == "__main__":
    main()
