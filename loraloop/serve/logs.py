"""What `loraloop serve` writes and `loraloop monitor` reads, one file per UTC day:

    data/raw/served/<date>.jsonl           opt-in exchanges in collect's record schema (a collect source)
    data/raw/served/feedback/<date>.jsonl  opt-in users' reactions in collect's feedback shape
    logs/serve/<date>.jsonl                every exchange and reaction as counters: no text, no user id
    data/raw/negatives/<date>.jsonl        problem replies monitor found (a collect source, kind feedback)

A user who did not opt in leaves counters only. Lines are appended whole under a lock; a line cut
by a crash is reported by the reader and skipped, never fatal. Recent keeps the newest exchanges
by response id, for feedback to find without reading the logs."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from ..files import dumps

SERVED = Path("data/raw/served")
FEEDBACK = SERVED / "feedback"
COUNTERS = Path("logs/serve")
NEGATIVES = Path("data/raw/negatives")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def stamp(when: dt.datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class DailyLog:
    """Appends rows to <dir>/<UTC date>.jsonl, one whole line at a time, from any thread."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.Lock()

    def append(self, sub: Path, row: dict, when: dt.datetime) -> None:
        path = self.root / sub / f"{when.date().isoformat()}.jsonl"
        line = dumps(row) + "\n"
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(line)


def read_rows(folder: Path, problems: list[str] | None = None) -> Iterator[dict]:
    """Rows of every <date>.jsonl in `folder`, oldest day first. A line that does not parse is
    named in `problems` (file:line) and skipped."""
    for path in sorted(Path(folder).glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if isinstance(row, dict):
                    yield row
                elif problems is not None:
                    problems.append(f"{path}:{lineno}: not a JSON object (a line cut by a crash?)")


class Recent:
    """The last `size` exchanges by response id, for feedback to find (older ones: the logs)."""

    def __init__(self, size: int = 50_000):
        self.size, self.items = size, OrderedDict()

    def put(self, response_id: str, item: dict) -> None:
        self.items[response_id] = item
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def get(self, response_id: str, root: Path) -> dict | None:
        if response_id in self.items:
            return self.items[response_id]
        for row in read_rows(root / COUNTERS):
            if row.get("event") == "completion" and row.get("response_id") == response_id:
                found = {k: row[k] for k in ("route", "character", "version", "opt_in")}
                if row["opt_in"]:
                    found.update(next((r for r in read_rows(root / SERVED) if r.get("response_id") == response_id), {}))
                return found
        return None
