"""Duplicate detection: exact (normalized content hash, tool calls and tools included) and near
(MinHash LSH over character 5-grams, which works for Korean as well as English, among
conversations with the same tool calls, results and tools). The index is the only memory scrub
keeps per record: a 64 x uint32 signature and 8 band keys."""

from __future__ import annotations

import hashlib
import json

import numpy as np

_SHIFT = np.uint64(32)


def _key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _canonical(value) -> str:
    """JSON with sorted keys and no spacing: the same arguments or schema, the same text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def calls_of(m: dict) -> str:
    """An assistant turn's tool calls, canonical: names and arguments (parsed JSON re-dumped with
    sorted keys; arguments that are not JSON as written), never the calls' ids."""
    out = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function", {})
        args = fn.get("arguments", "")
        try:
            args = _canonical(json.loads(args)) if isinstance(args, str) else _canonical(args)
        except ValueError:
            args = args.strip()
        out.append(f"{fn.get('name')}({args})")
    return "\x1d".join(out)


def _turn(m: dict) -> str:
    return f"{m['role']}\x1f{' '.join(m['content'].lower().split())}\x1f{calls_of(m)}"


def content_key(messages: list[dict], tools: list | None = None) -> int:
    """64-bit key of a conversation: its turns whitespace- and case-normalized, their tool calls,
    the tools it declares (no character, no call ids)."""
    return _key("\x1e".join(map(_turn, messages)) + "\x1e" + (_canonical(tools) if tools else ""))


def structure_key(messages: list[dict], tools: list | None = None) -> int:
    """64-bit key of what no two near-duplicates may differ in: the tool calls (names, arguments),
    the tool results, the tools declared. Two conversations that differ only in a call's argument
    are two examples, however alike their words."""
    parts = [
        calls_of(m) if m["role"] == "assistant" else m["content"]
        for m in messages
        if m["role"] in ("assistant", "tool")
    ]
    return _key("\x1e".join(p for p in parts if p) + "\x1e" + (_canonical(tools) if tools else ""))


def near_text(messages: list[dict]) -> str:
    """The words near-duplicates are measured on: every turn but the system prompt (which many
    conversations of a data set share), tool calls included."""
    return "\n".join(f"{m['content']} {calls_of(m)}".strip() for m in messages if m["role"] != "system")


_K = 5
_POWERS = np.array([1000003 ** (_K - 1 - j) % (1 << 64) for j in range(_K)], dtype=np.uint64)


def _shingles(text: str) -> np.ndarray:
    """32-bit hashes of the character 5-grams, vectorized: a polynomial hash over code points
    (uint64 arithmetic wraps, which is deterministic), folded to 32 bits."""
    text = " ".join(text.lower().split())
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) < _K:
        codes = np.pad(codes, (0, _K - len(codes)))
    windows = np.lib.stride_tricks.sliding_window_view(codes, _K)
    h = (windows * _POWERS).sum(axis=1, dtype=np.uint64)
    return np.unique((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF)))


def _bands_for(threshold: float, num_perm: int) -> int:
    """Bands b (rows r = num_perm / b) whose LSH threshold (1/b)^(1/r) is closest to `threshold`."""
    options = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    return min(options, key=lambda b: abs((1 / b) ** (b / num_perm) - threshold))


class NearDupIndex:
    def __init__(self, threshold: float, num_perm: int = 64, seed: int = 1):
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: (a*x + b) mod 2^64, top 32 bits; a odd. No modulo, so it is fast.
        self.a = rng.integers(0, np.iinfo(np.uint64).max, size=(num_perm, 1), dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, np.iinfo(np.uint64).max, size=(num_perm, 1), dtype=np.uint64)
        self.threshold = threshold
        self.bands = _bands_for(threshold, num_perm)
        self.rows = num_perm // self.bands
        self.buckets: dict[int, int] = {}
        self.signatures: list[bytes] = []

    def signature(self, text: str) -> np.ndarray:
        x = _shingles(text)[None, :]
        return ((self.a * x + self.b) >> _SHIFT).min(axis=1).astype(np.uint32)

    def add(self, text: str, group: int = 0) -> bool:
        """Index the text unless it near-duplicates one already indexed in its group; True if it
        does. Texts of different groups (structure_key) never match."""
        sig = self.signature(text)
        keys = [hash((group, i, sig[i * self.rows : (i + 1) * self.rows].tobytes())) for i in range(self.bands)]
        for key in keys:
            j = self.buckets.get(key)
            if j is not None:
                other = np.frombuffer(self.signatures[j], dtype=np.uint32)
                if np.mean(other == sig) >= self.threshold:
                    return True
        idx = len(self.signatures)
        self.signatures.append(sig.tobytes())
        for key in keys:
            self.buckets.setdefault(key, idx)
        return False
