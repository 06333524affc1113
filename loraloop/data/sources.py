"""Reading raw sources: JSONL, JSON arrays, MongoDB exports, parquet, `datasets` save_to_disk
directories, and mapping public chat-data shapes (LMSYS-Chat-1M, Magpie, Prosocial-Dialog) to
messages. Readers stream (memory holds a row, not a file), decode UTF-8 and, with a byte-order
mark, UTF-16/32, and yield (where, row) so rejects can name where a record came from."""

from __future__ import annotations

import codecs
import io
import json
import re
from pathlib import Path
from typing import Iterator


class Reject(Exception):
    """A record that cannot be kept: `reason` is a stable slug, `field` names the culprit, `detail`
    says more for a person (never the record's text: it may hold personal data)."""

    def __init__(self, reason: str, field: str | None = None, detail: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.detail = detail


class Unreadable:
    """What a reader yields for a part of a file it cannot read as records (an encoding it cannot
    decode, a file that is not the format it claims): one reject that says why."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail


class Unparsed(str):
    """JSON text not parsed yet (a decoded line, or an array element that did not parse), as
    opposed to a JSON string value."""


# Byte-order marks; UTF-32's are checked first (UTF-32-LE's starts with UTF-16-LE's).
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def sniff_encoding(path: Path) -> tuple[str, int] | Unreadable:
    """(encoding, BOM length) of a text file: UTF-8 unless a byte-order mark says otherwise. A NUL
    in the first two bytes without a BOM is UTF-16/32 that cannot be decoded safely."""
    with path.open("rb") as f:
        head = f.read(4)
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    if b"\x00" in head[:2]:
        return Unreadable(
            "unknown_encoding",
            "NUL bytes at the start and no byte-order mark: UTF-16 or UTF-32 "
            "without a BOM? Re-save the file as UTF-8 (or with a BOM)",
        )
    return "utf-8", 0


def undecodable(encoding: str, exc: UnicodeDecodeError) -> Unreadable:
    return Unreadable("invalid_encoding", f"not valid {encoding} from here on ({exc.reason})")


def text_lines(path: Path, encoding: str, skip: int) -> Iterator[tuple[dict, object]]:
    """Lines of a UTF-16/32 file, each decoded on its own: a line that is not valid in the
    encoding is that line's reject."""
    unit = 4 if "32" in encoding else 2
    newline = "\n".encode(encoding)
    with path.open("rb") as f:
        f.seek(skip)
        buf, lineno, eof = b"", 0, False
        while not eof or buf:
            end = _find_aligned(buf, newline, unit)
            if end < 0 and not eof:
                piece = f.read(1 << 20)
                eof = not piece
                buf += piece
                continue
            line, buf = (buf[: end + unit], buf[end + unit :]) if end >= 0 else (buf, b"")
            lineno += 1
            try:
                text = line.decode(encoding)
            except UnicodeDecodeError as exc:
                yield {"line": lineno}, Unreadable("invalid_encoding", f"not valid {encoding} ({exc.reason})")
                continue
            if text.strip():
                yield {"line": lineno}, Unparsed(text)


def _find_aligned(buf: bytes, needle: bytes, unit: int) -> int:
    """The first occurrence of needle at an offset that is a multiple of unit, or -1."""
    i = buf.find(needle)
    while i >= 0 and i % unit:
        i = buf.find(needle, i + 1)
    return i


def read_jsonl_raw(path: Path) -> Iterator[tuple[dict, object]]:
    """({"line": n}, bytes or str) of each non-blank line; decoding is the caller's, so bad UTF-8 or
    JSON on one line is that line's reject, not the file's."""
    enc = sniff_encoding(path)
    if isinstance(enc, Unreadable):
        yield {"line": 1}, enc
        return
    encoding, skip = enc
    if encoding != "utf-8":
        yield from text_lines(path, encoding, skip)
        return
    with path.open("rb") as f:
        f.seek(skip)
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                yield {"line": lineno}, raw


def read_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[dict, object]]:
    """The elements of a JSON array, streamed: memory holds one element, not the file. Yields
    ({"line": where the element starts, "item": its index}, the parsed element) or, for an element
    that does not parse, its text (decode() then says why); an element's end is found by its
    brackets, so one bad element does not lose the ones after it."""
    enc = sniff_encoding(path)
    if isinstance(enc, Unreadable):
        yield {"line": 1}, enc
        return
    encoding, skip = enc
    with path.open("rb") as raw:
        raw.seek(skip)
        reader = ArrayReader(io.TextIOWrapper(raw, encoding=encoding), chunk)
        try:
            yield from reader.elements()
        except UnicodeDecodeError as exc:
            yield {"line": reader.line}, undecodable(encoding, exc)


class ArrayReader:
    """A JSON array read element by element from a text stream (see read_json_array)."""

    _DECODER = json.JSONDecoder()
    _SPACE = re.compile(r"[ \t\n\r]*")

    def __init__(self, stream, chunk: int):
        self.stream, self.chunk = stream, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.counted = 1, 0  # the line number at buffer offset `counted`

    def _more(self) -> bool:
        """Read more text (twice as much each time an element does not fit, so a long element costs
        linear time); False at the end of the file."""
        if self.eof:
            return False
        self.line = self._line_here()
        self.buf, self.pos, self.counted = self.buf[self.pos :], 0, 0
        piece = self.stream.read(max(self.chunk, len(self.buf)))
        self.eof = not piece
        self.buf += piece
        return bool(piece)

    def _skip_space(self) -> str | None:
        """The next non-space character (None at the end of the file), not consumed."""
        while True:
            self.pos = self._SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def elements(self) -> Iterator[tuple[dict, object]]:
        if self._skip_space() != "[":
            yield {"line": self._line_here()}, Unreadable("not_a_json_array", "a .json source must hold one JSON array")
            return
        self.pos += 1
        item = 0
        if self._skip_space() == "]":
            return
        while True:
            item += 1
            where = {"line": self._line_here(), "item": item}
            value = self._element()
            if value is None:
                yield where, Unreadable("invalid_json", "the array is cut off or malformed from this element on")
                return
            yield where, value
            nxt = self._skip_space()
            if nxt == "]" or (nxt is None and isinstance(value, Unparsed)):
                return  # (a cut-off last element is already its reject)
            if nxt != ",":
                yield (
                    {"line": self._line_here(), "item": item + 1},
                    Unreadable("invalid_json", "expected ',' or ']' after an element"),
                )
                return
            self.pos += 1
            self._skip_space()

    def _line_here(self) -> int:
        """The line at the current position, counting only the text since the last call."""
        self.line += self.buf.count("\n", self.counted, self.pos)
        self.counted = self.pos
        return self.line

    def _element(self):
        """The next element parsed, or its text if it does not parse; None if it never ends."""
        while True:
            try:
                value, end = self._DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number may go on in the next chunk
                    self.pos = end
                    return value
            except (json.JSONDecodeError, RecursionError):
                end = element_end(self.buf, self.pos)
                if end is not None:
                    text, self.pos = self.buf[self.pos : end], end
                    return Unparsed(text)
            if not self._more():
                end = len(self.buf) if self.pos < len(self.buf) else None
                if end is None:
                    return None
                text, self.pos = self.buf[self.pos :], len(self.buf)
                return Unparsed(text)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(?P<close>"|\Z)|[\[\]{},]')


def element_end(text: str, start: int) -> int | None:
    """Where the JSON value at `start` ends, by its brackets and strings alone (it need not be
    valid JSON); None if the text ends first."""
    depth = 0
    for m in _TOKEN.finditer(text, start):
        tok = m.group()
        if tok.startswith('"'):
            if not m.group("close"):
                return None  # a string the text cuts off
            continue
        if tok in "[{":
            depth += 1
        elif tok in "]}":
            if depth == 0:
                return m.start()  # the enclosing array's end: a scalar element ends here
            depth -= 1
            if depth == 0:
                return m.end()
        elif tok == "," and depth == 0:
            return m.start()
    return None


def read_arrow_table(path: Path) -> Iterator[tuple[dict, object]]:
    """parquet files, or a `datasets` save_to_disk directory (Arrow IPC stream shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    if path.is_dir():
        shards = sorted(path.glob("*.arrow"))
        if not shards:
            raise ValueError(f"{path}: no *.arrow shards; expected a datasets.save_to_disk directory")
        for shard in shards:
            with pa.memory_map(str(shard)) as src:
                for batch in pa.ipc.open_stream(src):
                    for obj in batch.to_pylist():
                        row += 1
                        yield {"row": row}, obj
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            yield {"row": row}, obj


def read_hub(name: str, split: str) -> Iterator[tuple[dict, object]]:
    """Only when a user names a hub dataset in params.yaml; needs `datasets` and network."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RuntimeError("a hub anchor source needs `pip install datasets` (and network)") from None
    for i, obj in enumerate(load_dataset(name, split=split, streaming=True), 1):
        yield {"row": i}, obj


def read_source(path: Path, fmt: str) -> Iterator[tuple[dict, object]]:
    """(where in the file, raw row) for every row of a source file; `where` names the line (text
    formats; JSON arrays also the item) or the row (tables), for rejects to point at. A directory
    that is not a `datasets` save is a folder of files (served logs, one per day): each of its
    .jsonl/.json/.parquet files in name order, `where` naming the file too."""
    if fmt == "auto" and path.is_dir() and not is_datasets_dir(path):
        return read_folder(path)
    if fmt == "auto":
        fmt = "datasets" if path.is_dir() else SUFFIXES.get(path.suffix, "jsonl")
    return READERS[fmt](path)


SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def is_datasets_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")) or any(
        path.glob("*.arrow")
    )


def read_folder(path: Path) -> Iterator[tuple[dict, object]]:
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES):
        for where, row in READERS[SUFFIXES[file.suffix]](file):
            yield {"file": file.name, **where}, row


READERS = {"jsonl": read_jsonl_raw, "json": read_json_array, "parquet": read_arrow_table, "datasets": read_arrow_table}

MAX_DEPTH = 64  # nesting a record may have; deeper is a reject, not a RecursionError later


def decode(raw: object) -> object:
    """A reader's row as a JSON value, or Reject saying why it is not one."""
    if isinstance(raw, Unreadable):
        raise Reject(raw.reason, detail=raw.detail)
    if isinstance(raw, bytes):
        try:
            raw = Unparsed(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise Reject("invalid_utf8") from None
    if isinstance(raw, Unparsed):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise Reject("invalid_json") from None
        except RecursionError:
            raise Reject("too_deeply_nested", detail="nested deeper than Python's JSON parser allows") from None
    if nesting_deeper_than(raw, MAX_DEPTH):
        raise Reject("too_deeply_nested", detail=f"nested more than {MAX_DEPTH} levels")
    return raw


def nesting_deeper_than(value, limit: int) -> bool:
    """Whether lists/dicts nest more than `limit` levels (iteratively: no recursion to overflow)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= limit:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def unwrap_mongo(value):
    """MongoDB extended JSON ({"$oid": ...}, {"$date": ...}, {"$numberLong": ...}) to plain values."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((k, v),) = value.items()
            if k == "$oid":
                return str(v)
            if k == "$date":
                if isinstance(v, dict) and "$numberLong" in v:
                    v = int(v["$numberLong"])
                if isinstance(v, (int, float)):
                    import datetime as dt

                    return dt.datetime.fromtimestamp(v / 1000, dt.timezone.utc).isoformat().replace("+00:00", "Z")
                return str(v)
            if k in ("$numberLong", "$numberInt"):
                return int(v)
            if k == "$numberDouble":
                return float(v)
        return {k: unwrap_mongo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_mongo(v) for v in value]
    return value
