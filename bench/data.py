"""Throughput and memory of collect + scrub, against scrubadub's PII pass on the same texts.

    python bench/data.py [--sizes 100000,300000,1000000] [--peer-sample 20000]

For each size N: writes N synthetic tutoring conversations (English and Korean, with planted
emails, phones and card numbers whose values are known), runs collect + scrub + version on them in
a child process (so its peak RSS is its own), and prints conversations/s, each stage's seconds and
the peak RSS (target under 2 GB), then the growth exponents between sizes (target: linear, near
duplicates included). Then times loraloop's PII masker and scrubadub on the largest corpus's user
texts and reports recall on the planted values.
scrubadub is slow, so it runs on the first --peer-sample texts; its rate is per text either way.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
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
import json, resource, sys, time
from pathlib import Path
from loraloop.data import collect, scrub, version
from loraloop.params import load_params
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
p = load_params(sys.argv[3])
src = p.collect.sources[0].model_copy(update={"path": str(raw), "kind": "conversations"})
t0 = time.perf_counter()
c = collect.run(p.collect.model_copy(update={"sources": [src], "deletions": []}), out / "collected")
t1 = time.perf_counter()
s = scrub.run(p.scrub, out / "collected/records.jsonl", out / "scrubbed", out / "data.json")
t2 = time.perf_counter()
v = version.run(p.version, out / "scrubbed", out / "version", data_metrics=out / "data.json")
t3 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"read": c["read"], "kept": s["kept"], "collect_s": t1 - t0, "scrub_s": t2 - t1,
                  "version_s": t3 - t2, "peak_rss_mb": peak}))
"""


def run_pipeline(raw: Path, out: Path) -> dict:
    """collect + scrub + version in a child process of its own: times, and its own peak RSS."""
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(raw), str(out), str(ROOT / "params.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def scaling(sizes: list[int], tmp: Path) -> list[tuple[dict, list]]:
    """The pipeline at each corpus size: its figures and the planted PII of the corpus."""
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        truth = write_corpus(tmp / f"raw-{n}.jsonl", n)
        print(
            f"corpus: {n:,} conversations, {len(truth):,} with planted PII ({time.perf_counter() - t0:.1f} s to write)"
        )
        stats = run_pipeline(tmp / f"raw-{n}.jsonl", tmp / f"out-{n}")
        (tmp / f"raw-{n}.jsonl").unlink()
        shutil.rmtree(tmp / f"out-{n}")
        seconds = stats["collect_s"] + stats["scrub_s"] + stats["version_s"]
        print(
            f"  collect+scrub+version: {stats['read'] / seconds:,.0f} conversations/s ({seconds:.1f} s; collect "
            f"{stats['collect_s']:.1f} s, scrub {stats['scrub_s']:.1f} s, version {stats['version_s']:.1f} s), "
            f"kept {stats['kept']:,}, peak RSS {stats['peak_rss_mb']:,.0f} MB (target < 2,048)"
        )
        rows.append(({"n": n, "seconds": seconds, **stats}, truth))
    for (a, _), (b, _) in zip(rows, rows[1:]):
        k = math.log(b["seconds"] / a["seconds"]) / math.log(b["n"] / a["n"])
        m = math.log(b["peak_rss_mb"] / a["peak_rss_mb"]) / math.log(b["n"] / a["n"])
        print(f"  {a['n']:,} -> {b['n']:,}: time exponent {k:.2f} (target <= 1.1), memory exponent {m:.2f}")
    return rows


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
    ap.add_argument("--sizes", default="100000,300000,1000000", help="corpus sizes, comma-separated")
    ap.add_argument("--peer-sample", type=int, default=20_000)
    args = ap.parse_args()
    try:
        import scrubadub
    except ImportError:
        sys.exit("bench/data.py compares with scrubadub: pip install -e '.[bench]'")
    from loraloop.data.pii import mask

    with tempfile.TemporaryDirectory() as tmp:
        rows = scaling([int(n) for n in args.sizes.split(",")], Path(tmp))
    stats, truth = rows[-1]
    conv_s = stats["read"] / stats["seconds"]
    sample = truth[: args.peer_sample]
    ours_recall, ours_rate = recall_and_rate(lambda t: mask(t)[0], sample)
    peer = scrubadub.Scrubber()
    peer_recall, peer_rate = recall_and_rate(peer.clean, sample)
    print(
        f"PII pass on {len(sample):,} texts: loraloop {ours_rate:,.0f} texts/s, scrubadub {peer_rate:,.0f} texts/s "
        f"-> ratio {ours_rate / peer_rate:.1f}x"
    )
    print(
        f"whole collect+scrub+version (conversations/s) vs scrubadub's PII pass alone (texts/s): "
        f"ratio {conv_s / peer_rate:.1f}x"
    )
    for kind in ours_recall:
        print(f"recall {kind:5s}: loraloop {ours_recall[kind]:.3f}  scrubadub {peer_recall.get(kind, 0):.3f}")


if __name__ == "__main__":
    main()
