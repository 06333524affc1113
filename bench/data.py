"""Throughput and memory of collect + scrub, against scrubadub's PII pass on the same texts.

    python bench/data.py [--n 1000000] [--peer-sample 20000]

Writes N synthetic tutoring conversations (English and Korean, with planted emails, phones and
card numbers whose values are known), runs collect + scrub on them in a child process (so its
peak RSS is its own), then times loraloop's PII masker and scrubadub on the same user texts and
reports recall on the planted values. Prints conversations/s, peak RSS and the ratios.
scrubadub is slow, so it runs on the first --peer-sample texts; its rate is per text either way.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_demo_data import conversation, fake_email  # noqa: E402

CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "4012888888881881", "3782 822463 10005"]


def planted(rng: random.Random, korean: bool) -> tuple[str, str, str]:
    kind = rng.choice(["EMAIL", "PHONE", "CARD"])
    if kind == "EMAIL":
        value = fake_email(rng)
    elif kind == "PHONE":
        value = (
            f"010-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
            if korean
            else f"+1 415-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        )
    else:
        value = rng.choice(CARDS)
    return kind, value, (f" 제 정보는 {value}예요." if korean else f" My details: {value}.")


def write_corpus(path: Path, n: int, seed: int = 11) -> list[tuple[str, str, str]]:
    """The raw JSONL, and (user text, kind, value) for every conversation with planted PII."""
    rng = random.Random(seed)
    truth = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            conv = conversation(rng, i)
            if rng.random() < 0.3:
                kind, value, sentence = planted(rng, "ko" in conv["style_tags"])
                conv["messages"][0]["content"] += sentence
                truth.append((conv["messages"][0]["content"], kind, value))
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")
    return truth


CHILD = """
import json, sys, time
from pathlib import Path
from loraloop.data import collect, scrub
from loraloop.params import load_params
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
p = load_params(sys.argv[3])
src = p.collect.sources[0].model_copy(update={"path": str(raw), "kind": "conversations"})
t0 = time.perf_counter()
c = collect.run(p.collect.model_copy(update={"sources": [src], "deletions": []}), out / "collected")
t1 = time.perf_counter()
s = scrub.run(p.scrub, out / "collected/records.jsonl", out / "scrubbed", out / "data.json")
t2 = time.perf_counter()
print(json.dumps({"read": c["read"], "kept": s["kept"], "collect_s": t1 - t0, "scrub_s": t2 - t1}))
"""


def run_pipeline(raw: Path, out: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(raw), str(out), str(ROOT / "params.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return stats


def recall_and_rate(clean, texts: list[tuple[str, str, str]]) -> tuple[dict, float]:
    found, total = {}, {}
    t0 = time.perf_counter()
    outs = [clean(t) for t, _, _ in texts]
    rate = len(texts) / (time.perf_counter() - t0)
    for out, (_, kind, value) in zip(outs, texts):
        total[kind] = total.get(kind, 0) + 1
        found[kind] = found.get(kind, 0) + (value not in out)
    return {k: found[k] / total[k] for k in sorted(total)}, rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--peer-sample", type=int, default=20_000)
    args = ap.parse_args()
    try:
        import scrubadub
    except ImportError:
        sys.exit("bench/data.py compares with scrubadub: pip install -e '.[bench]'")
    from loraloop.data.pii import mask

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        truth = write_corpus(tmp / "raw.jsonl", args.n)
        print(
            f"corpus: {args.n} conversations, {len(truth)} with planted PII ({time.perf_counter() - t0:.1f} s to write)"
        )
        stats = run_pipeline(tmp / "raw.jsonl", tmp / "out")
    seconds = stats["collect_s"] + stats["scrub_s"]
    conv_s = stats["read"] / seconds
    print(
        f"loraloop collect+scrub: {conv_s:,.0f} conversations/s ({seconds:.1f} s; collect {stats['collect_s']:.1f} s, "
        f"scrub {stats['scrub_s']:.1f} s), kept {stats['kept']:,}, peak RSS {stats['peak_rss_mb']:,.0f} MB"
    )

    sample = truth[: args.peer_sample]
    ours_recall, ours_rate = recall_and_rate(lambda t: mask(t)[0], sample)
    peer = scrubadub.Scrubber()
    peer_recall, peer_rate = recall_and_rate(peer.clean, sample)
    print(
        f"PII pass on {len(sample):,} texts: loraloop {ours_rate:,.0f} texts/s, scrubadub {peer_rate:,.0f} texts/s "
        f"-> ratio {ours_rate / peer_rate:.1f}x"
    )
    print(
        f"whole collect+scrub (conversations/s) vs scrubadub's PII pass alone (texts/s): "
        f"ratio {conv_s / peer_rate:.1f}x"
    )
    for kind in ours_recall:
        print(f"recall {kind:5s}: loraloop {ours_recall[kind]:.3f}  scrubadub {peer_recall.get(kind, 0):.3f}")


if __name__ == "__main__":
    main()
