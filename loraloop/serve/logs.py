"""What `loraloop serve` writes and `loraloop monitor` reads, one file per UTC day:

    data/raw/served/<date>.jsonl           opt-in exchanges in collect's record schema (a collect source)
    data/raw/served/feedback/<date>.jsonl  opt-in users' reactions in collect's feedback shape
    logs/serve/<date>.jsonl                every exchange and reaction as counters: no text, no user id
    data/raw/negatives/<date>.jsonl        problem replies monitor found (a collect source, kind feedback)

A user who did not opt in leaves counters only. Lines are appended whole under a lock, each in
one write, after a newline when the file's last line was cut by a crash; such a torn line is
reported by the reader (and collect, as a reject naming file and line) and skipped, never fatal.
Exchanges finds a served exchange by response id for feedback, without reading the logs."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from ..files import dumps

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # the logs' file names: one UTC day each
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

    def append(self, sub: Path, row: dict, when: dt.datetime) -> tuple[str, int]:
        """Appends the row; returns its file and the byte offset its line starts at."""
        path = self.root / sub / f"{when.date().isoformat()}.jsonl"
        line = dumps(row) + "\n"
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a+b") as f:  # appends wherever it seeks; reads the last byte
                # A crash (or a full disk) mid-write leaves a last line without its newline: start
                # a new one, so the torn line stays alone and this row whole. One write of the
                # whole line: readers never see half of it.
                end = f.seek(0, 2)
                torn = False
                if end:
                    f.seek(end - 1)
                    torn = f.read(1) != b"\n"
                f.write((("\n" if torn else "") + line).encode("utf-8"))
        return str(path), end + torn


def read_rows(folder: Path, problems: list[str] | None = None, since_day: str | None = None) -> Iterator[dict]:
    """Rows of every <date>.jsonl in `folder`, oldest day first (`since_day`, YYYY-MM-DD: only the
    day files from that day on, and any file not named by a day). A line that does not parse is
    named in `problems` (file:line) and skipped."""
    for path in sorted(Path(folder).glob("*.jsonl")):
        if since_day is not None and DAY.match(path.stem) and path.stem < since_day:
            continue
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


class Exchanges:
    """Every exchange served, by response id, for feedback to find: the newest `size` in memory
    whole (as served, with `where` its opted-in record was written), older ones from an index of
    the logs built once at start in a thread (response id -> its counters and where its opted-in
    record starts), so a lookup reads one line, never the logs, and an unknown id is answered from
    the index alone."""

    def __init__(self, root: Path, size: int = 50_000):
        self.root, self.size = Path(root), size
        self.items: OrderedDict[str, dict] = OrderedDict()
        self.index: dict[str, tuple] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._build, name="loraloop-log-index", daemon=True).start()

    def put(self, response_id: str, item: dict) -> None:
        self.items[response_id] = item
        while len(self.items) > self.size:
            old, dropped = self.items.popitem(last=False)
            self.index[old] = (*(dropped[k] for k in KEPT), dropped.get("where"))

    def get(self, response_id: str) -> dict | None:
        """The exchange, or None; may wait for the index (call it off the event loop)."""
        if response_id in self.items:
            return self.items[response_id]
        self.ready.wait()
        entry = self.index.get(response_id)
        if entry is None:
            return None
        found = dict(zip(KEPT, entry[:4]))
        where = entry[4]
        if found["opt_in"] and where:
            with open(where[0], "rb") as f:
                f.seek(where[1])
                found.update(json.loads(f.readline()))
        return found

    def _build(self) -> None:
        try:
            served = dict(_offsets(self.root / SERVED))
            for row in read_rows(self.root / COUNTERS):
                rid = row.get("response_id")
                if row.get("event") == "completion" and rid and all(k in row for k in KEPT):
                    self.index[rid] = (*(row[k] for k in KEPT), served.get(rid))
        finally:
            self.ready.set()


KEPT = ("route", "character", "version", "opt_in")


def _offsets(folder: Path) -> Iterator[tuple[str, tuple[str, int]]]:
    """(response id, (file, byte offset of its line)) of every row in the folder's day files."""
    for path in sorted(Path(folder).glob("*.jsonl")):
        with path.open("rb") as f:
            while line := f.readline():
                start = f.tell() - len(line)
                try:
                    rid = json.loads(line).get("response_id")
                except (ValueError, AttributeError):
                    continue
                if isinstance(rid, str):
                    yield rid, (str(path), start)
