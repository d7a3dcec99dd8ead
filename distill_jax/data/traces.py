"""Readers for reasoning traces: our own shards and the formats other tools write.

`open_traces(path, format="auto")` lists the trace files under `path` and cuts
them into independently readable *work units* (the filter stage's resume
granularity); `unit.records()` streams `(where, record_or_Malformed)` pairs in
which every record, whatever the file's format, has the schema our filters read
(`distill_jax/filters/sample.py::make_sample`).

Files. `path` is a file, a directory (its files matching `pattern`; with the
default "*", every .jsonl/.json/.parquet file directly inside it except the
`manifest.json`/`summary.json` that distill-generate writes beside its shards),
a glob, or a comma-separated list of these; any of them may be a bucket URL
(`gs://b/traces`, `gs://b/traces/*.parquet`; see `distill_jax/storage.py`), read
through the same ranged reads as a local file. Containers:
  * `.jsonl`: JSON Lines, cut into byte ranges of about `max_unit_bytes` that
    start on line starts (one pass over the file counts newlines, so every
    record knows its 1-based line: where = "path:LINE").
  * `.parquet`: consecutive row groups up to about `max_unit_bytes` of
    uncompressed size per unit; the schema is checked when the units are built.
    Read batch by batch, never whole. where = "path:row N" (0-based in the file).
  * `.json`: one JSON array of objects, or an object holding that array under
    "data" or "rows". Such a file is one unit and is LOADED WHOLE when read (and,
    if it is the first file, once more to detect the format). A `.json` file whose
    first line is a whole JSON object (what `datasets.Dataset.to_json` writes) is
    read as JSON Lines. where = "path:row N".

Formats (`format=`; "auto" decides from the first record of the first file):
  distill   our shards (prompt_id + sample_index + text); passed through unchanged.
  openr1    open-r1 OpenR1-Math-220k rows: problem, answer/solution, generations,
            finish_reasons, per-generation label lists; one record per generation.
  sharegpt  conversations: [{"from", "value"}] (OpenThoughts, Bespoke-Stratos).
  messages  messages: [{"role", "content"}] (Mixture-of-Thoughts).
  vllm      vLLM offline output (prompt + outputs: [{"text", "finish_reason",
            "token_ids"}]; one record per output) or SGLang rows (text +
            meta_info.finish_reason.type, plus a prompt).
For a conversation the response is the last assistant turn and the problem the
user turn before it; a system turn (or a top-level `system` field) is kept as
`system`, earlier turns as `history`.

Ids. `prompt_id` is the row's id column (openr1: `uuid`; others: `id`,
`prompt_id` or `uuid`) when present, else the row's location with the path
relative to the input it was found under: "rel/path.jsonl:LINE" or
"rel/path.parquet:row N". Both are stable across reruns over unchanged files and
across unit sizes. An id column must name a row uniquely.

Normalised response (`normalise_response`): one internal form,
`<think>\\n...\\n</think>\\n\\nanswer`.
  1. `<|begin_of_thought|>` becomes `<think>`, `<|end_of_thought|>` `</think>`;
     `<|begin_of_solution|>` and `<|end_of_solution|>` are removed, their content
     kept. Whitespace next to these markers is replaced: `<think>\\n` opens,
     `\\n</think>` closes, and a blank line separates what the removed markers
     separated; whitespace at the very start or end next to a marker is dropped.
  2. A response with `</think>` but no `<think>` before it (the opener was in the
     prompt template) gets `<think>\\n` put in front.
  3. A response with neither is left as it is (the think-format filter decides).
Nothing else is rewritten. Our own shards (`distill`) are not normalised: their
`assistant_prefix` already says what the prompt opened.

Bad input: no matching file -> FileNotFoundError; an unknown format name, an
unrecognisable first record, an unknown field in `fields`, a Parquet file without
a column the format needs -> ValueError, all from `open_traces` before any record
is read. A bad row never raises: it yields `Malformed(where, error, line)`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import posixpath
import re
from typing import Any, Callable, Iterator, Union

from distill_jax import storage

MAX_UNIT_BYTES = 64 << 20
EXTENSIONS = (".jsonl", ".json", ".parquet")
# Sidecar files distill-generate writes beside its shards; not traces.
_SIDECARS = ("manifest.json", "summary.json")
_LABELS_OPENR1 = ("correctness_math_verify", "correctness_llama", "is_reasoning_complete")
_PARQUET_BATCH_ROWS = 128
_MALFORMED_LINE_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A row that could not become a record: counted and reported by the caller."""
    where: str
    error: str
    line: str = ""                   # the raw line / row, first 2000 characters

    def as_dict(self) -> dict[str, str]:
        return {"where": self.where, "error": self.error, "line": self.line}


Record = dict[str, Any]
Item = Union[Record, Malformed]


# ---------------------------------------------------------------- normalisation

_THOUGHT_OPEN, _THOUGHT_CLOSE = "<|begin_of_thought|>", "<|end_of_thought|>"
_SOLUTION_OPEN, _SOLUTION_CLOSE = "<|begin_of_solution|>", "<|end_of_solution|>"
_MARKERS = (_THOUGHT_OPEN, _THOUGHT_CLOSE, _SOLUTION_OPEN, _SOLUTION_CLOSE)
_MARKER_RE = re.compile(r"\s*(<\|(?:begin|end)_of_(?:thought|solution)\|>)\s*")
# What goes before the next piece, by [next piece][previous piece].
_SEPARATORS = {
    "text": {None: "", "open": "", "close": "\n\n", "text": "\n\n"},
    "open": {None: "", "open": "", "close": "\n\n", "text": "\n\n"},
    "close": {None: "", "open": "", "close": "", "text": "\n"},
}


def normalise_response(text: str) -> str:
    """The response in the one internal form (rules in the module docstring)."""
    if "<|" in text and any(m in text for m in _MARKERS):
        parts = _MARKER_RE.split(text)
        out, prev = [], None
        for i, part in enumerate(parts):
            if i % 2 == 0:
                piece, emit = ("text", part) if part else (None, "")
            elif part == _THOUGHT_OPEN:
                piece, emit = "open", "<think>\n"
            elif part == _THOUGHT_CLOSE:
                piece, emit = "close", "</think>"
            else:                                    # solution markers: removed
                piece, emit = None, ""
            if piece is not None:
                out.append(_SEPARATORS[piece][prev] + emit)
                prev = piece
        text = "".join(out)
    close = text.find("</think>")
    if close >= 0 and not 0 <= text.find("<think>") < close:
        text = ("<think>" if text.startswith("\n") else "<think>\n") + text
    return text


# ---------------------------------------------------------------- formats

@dataclasses.dataclass(frozen=True)
class _Format:
    name: str
    # logical field -> default column names (the first present in a row is used)
    fields: dict[str, tuple[str, ...]]
    detect: tuple[str, ...]          # logical fields; any one present identifies the format
    required: tuple[tuple[str, ...], ...]   # each: logical fields, at least one present
    describe: str                    # key fields, for error messages


_COMMON = {"id": ("id", "prompt_id", "uuid"), "answer": ("answer",), "solution": (),
           "kind": (), "source": ("source",), "system": ("system",), "labels": (),
           "sample_index": ("sample_index",)}

FORMATS: dict[str, _Format] = {f.name: f for f in (
    _Format("distill", {}, (), (), "prompt_id, sample_index, text"),
    _Format("openr1", {**_COMMON, "id": ("uuid", "id"), "problem": ("problem",),
                       "solution": ("solution",), "generations": ("generations",),
                       "finish_reasons": ("finish_reasons",), "labels": _LABELS_OPENR1,
                       "system": (), "sample_index": ()},
            ("generations",), (("problem",), ("generations",)), "generations"),
    _Format("sharegpt", {**_COMMON, "problem": (), "conversations": ("conversations",)},
            ("conversations",), (("conversations",),), "conversations"),
    _Format("messages", {**_COMMON, "problem": (), "messages": ("messages",)},
            ("messages",), (("messages",),), "messages"),
    _Format("vllm", {**_COMMON, "problem": ("problem",), "prompt": ("prompt",),
                     "outputs": ("outputs",), "text": ("text",), "meta_info": ("meta_info",),
                     "token_ids": ("output_ids",)},
            ("outputs", "meta_info"), (("prompt", "problem"), ("outputs", "text")),
            "outputs or meta_info"),
)}
_DISTILL_FIELDS = ("prompt_id", "sample_index", "text")


def _expected() -> str:
    return "; ".join(f"{f.name} ({f.describe})" for f in FORMATS.values())


def _resolve_fields(fmt: _Format, fields: dict[str, Any] | None) -> tuple[dict, set[str]]:
    """(logical -> column candidates, the columns the caller named explicitly)."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(fmt.fields))
    if unknown:
        raise ValueError(f"unknown field name(s) {unknown} in fields= for format {fmt.name!r}; "
                         f"known: {sorted(fmt.fields) or 'none (distill records pass through)'}")
    resolved, explicit = dict(fmt.fields), set()
    for logical, column in fields.items():
        if column is None:
            resolved[logical] = ()
        elif isinstance(column, str):
            resolved[logical] = (column,)
            explicit.add(column)
        elif (logical == "labels" and isinstance(column, (list, tuple))
              and all(isinstance(c, str) for c in column)):
            resolved[logical] = tuple(column)
            explicit.update(column)
        else:
            raise ValueError(f"fields[{logical!r}] must be a column name (str) or None"
                             + (" or a list of names" if logical == "labels" else "")
                             + f", got {column!r}")
    return resolved, explicit


def _matches(fmt: _Format, names, columns: dict) -> bool:
    if fmt.name == "distill":
        return all(n in names for n in _DISTILL_FIELDS)
    return any(c in names for logical in fmt.detect for c in columns[logical])


def _missing(fmt: _Format, names, columns: dict) -> list[str]:
    """Required columns absent from `names` (each as 'a' or 'a or b')."""
    if fmt.name == "distill":
        return [n for n in ("prompt_id", "sample_index", "text", "finish_reason") if n not in names]
    missing = []
    for group in fmt.required:
        candidates = [c for logical in group for c in columns[logical]]
        if not any(c in names for c in candidates):
            missing.append(" or ".join(repr(c) for c in candidates) or f"<{'/'.join(group)}>")
    return missing


# ---------------------------------------------------------------- files

def _has_magic(p: str) -> bool:
    return glob.has_magic(p)


def _glob_root(pattern: str) -> str:
    parts = pattern.split(os.sep)
    literal = []
    for part in parts:
        if _has_magic(part):
            break
        literal.append(part)
    return os.sep.join(literal) or "."


def _files_matching(pattern: str) -> list[str]:
    return [f for f in storage.glob(pattern) if storage.isfile(f)]


def _identity(path: str) -> str:
    """What makes two names the same file: its real path locally (links), the URL
    itself on an object store (no links there)."""
    return os.path.realpath(path) if storage.is_local(path) else path


def _relpath(path: str, root: str) -> str:
    if storage.is_local(path):
        return os.path.relpath(path, root or ".").replace(os.sep, "/")
    # os.path.relpath would make both absolute under the working directory.
    return posixpath.relpath(path.partition("://")[2], root.partition("://")[2] or ".")


def _list_files(path: str, pattern: str) -> list[tuple[str, str]]:
    """[(file path, path relative to the input it was found under)], sorted per input."""
    entries = [e.strip() for e in path.split(",") if e.strip()]
    if not entries:
        raise FileNotFoundError(f"no trace path given ({path!r})")
    found, seen = [], set()
    for entry in entries:
        if storage.isdir(entry):
            files = _files_matching(storage.join(entry, pattern))
            if pattern == "*":
                files = [f for f in files if f.endswith(EXTENSIONS)
                         and storage.basename(f) not in _SIDECARS]
            root, what = entry, f"no {pattern if pattern != '*' else '.jsonl/.json/.parquet'} " \
                                f"files in directory {entry}"
        elif storage.isfile(entry):
            files, root, what = [entry], storage.dirname(entry), ""
        elif _has_magic(entry):
            files = _files_matching(entry)
            root, what = _glob_root(entry), f"no files match {entry}"
        else:
            raise FileNotFoundError(f"trace path {entry} does not exist")
        if not files:
            raise FileNotFoundError(what)
        for f in sorted(files):
            if not f.endswith(EXTENSIONS):
                raise ValueError(f"{f}: unsupported file type; expected one of {EXTENSIONS}")
            real = _identity(f)
            if real in seen:
                continue
            seen.add(real)
            found.append((f, _relpath(f, root)))
    names: dict[str, str] = {}
    for f, rel in found:
        if rel in names:
            raise ValueError(f"{names[rel]} and {f} have the same relative name {rel!r}, so their "
                             "unit keys and ids would collide; pass their common parent "
                             "directory (or a glob under it) instead")
        names[rel] = f
    return found


def _json_container(path: str) -> str:
    """'json' or 'jsonl' for a .json file (datasets' to_json writes JSON Lines)."""
    with storage.open(path, "rb") as f:
        head = f.read(4096).lstrip()
        if not head or head[:1] == b"[":
            return "json"
        if head[:1] != b"{":
            raise ValueError(f"{path}: not a JSON array, object or JSON Lines file")
        f.seek(0)
        first = f.readline()
    try:
        obj = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "json"                # a pretty-printed object spanning lines
    if isinstance(obj, dict) and any(isinstance(obj.get(k), list) for k in ("data", "rows")):
        return "json"
    return "jsonl"


def _load_json_rows(path: str) -> list:
    try:
        with storage.open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict):
        for key in ("data", "rows"):
            if isinstance(data.get(key), list):
                return data[key]
        raise ValueError(f"{path}: a JSON object without a list under 'data' or 'rows' "
                         f"(keys: {sorted(data)[:20]})")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return data


def _split_jsonl(path: str, max_unit_bytes: int) -> list[tuple[int, int, int]]:
    """[(start byte, end byte, first line)] cut at line starts, one pass."""
    units, block = [], 1 << 20
    start, start_line, pos, newlines = 0, 1, 0, 0
    with storage.open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            i = 0
            while True:
                want = start + max_unit_bytes - 1 - pos     # cut at the first newline from here
                if want >= len(chunk):
                    break
                j = chunk.find(b"\n", max(want, i))
                if j < 0:
                    break
                newlines += chunk.count(b"\n", i, j + 1)
                end = pos + j + 1
                units.append((start, end, start_line))
                start, start_line, i = end, newlines + 1, j + 1
            newlines += chunk.count(b"\n", i)
            pos += len(chunk)
    if start < pos:
        units.append((start, pos, start_line))
    return units


def _first_jsonl_record(path: str, max_lines: int = 1000) -> dict | None:
    with storage.open(path, "rb") as f:
        for _, raw in zip(range(max_lines), f):
            try:
                obj = json.loads(raw.decode("utf-8")) if raw.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


# ---------------------------------------------------------------- units

@dataclasses.dataclass(frozen=True, eq=False)
class _Reader:
    """What turns a row into records (picklable, shared by a set's units)."""
    format: str
    columns: dict[str, tuple[str, ...]]
    kind: str
    source: str


@dataclasses.dataclass(frozen=True)
class TraceUnit:
    """One independently readable piece of one file.

    `key` is stable while the file is unchanged: "rel:bytes=START-END" (JSONL,
    half-open byte range), "rel:rowgroups=A-B" (Parquet, half-open), "rel:all" (JSON).
    """
    path: str
    relpath: str
    container: str                   # "jsonl" | "json" | "parquet"
    start: int                       # byte offset / first row group
    stop: int                        # byte offset / row group, exclusive
    first: int                       # first line (1-based, JSONL) / first row (0-based)
    num_bytes: int                   # bytes on disk (JSONL, JSON) / uncompressed (Parquet)
    reader: _Reader = dataclasses.field(compare=False, repr=False)
    columns: tuple[str, ...] | None = None   # Parquet: the columns to read (None: all)

    @property
    def key(self) -> str:
        if self.container == "jsonl":
            return f"{self.relpath}:bytes={self.start}-{self.stop}"
        if self.container == "parquet":
            return f"{self.relpath}:rowgroups={self.start}-{self.stop}"
        return f"{self.relpath}:all"

    def records(self) -> Iterator[tuple[str, Item]]:
        """(where, normalised record or Malformed) for every row, in file order."""
        for where, loc, row, raw in self._rows():
            if isinstance(row, Malformed):
                yield where, row
                continue
            for item in _convert(row, where, f"{self.relpath}:{loc}", self.reader):
                if isinstance(item, Malformed) and not item.line:
                    item = dataclasses.replace(item, line=raw()[:_MALFORMED_LINE_CHARS])
                yield where, item

    def _rows(self) -> Iterator[tuple[str, str, Any, Callable[[], str]]]:
        if self.container == "jsonl":
            yield from self._jsonl_rows()
            return
        if self.container == "json":
            rows: Iterator = enumerate(_load_json_rows(self.path))
        else:
            rows = self._parquet_rows()
        for n, row in rows:
            where = f"{self.path}:row {n}"
            dump = lambda row=row: json.dumps(row, ensure_ascii=False, default=str)  # noqa: E731
            if not isinstance(row, dict):
                yield where, f"row {n}", Malformed(
                    where, f"expected a JSON object, got {type(row).__name__}",
                    dump()[:_MALFORMED_LINE_CHARS]), dump
            else:
                yield where, f"row {n}", row, dump

    def _jsonl_rows(self):
        with storage.open(self.path, "rb") as f:
            f.seek(self.start)
            pos, line_no = self.start, self.first
            while pos < self.stop:
                raw = f.readline()
                if not raw:
                    break
                pos += len(raw)
                where, this_line = f"{self.path}:{line_no}", line_no
                line_no += 1
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield where, str(this_line), Malformed(
                        where, f"not valid UTF-8 ({e.reason} at byte {e.start})",
                        raw.decode("utf-8", "replace")[:_MALFORMED_LINE_CHARS]), None
                    continue
                line = text.rstrip("\r\n")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    yield where, str(this_line), Malformed(
                        where, f"malformed JSON: {e.msg}", line[:_MALFORMED_LINE_CHARS]), None
                    continue
                if not isinstance(row, dict):
                    yield where, str(this_line), Malformed(
                        where, f"expected a JSON object, got {type(row).__name__}",
                        line[:_MALFORMED_LINE_CHARS]), None
                    continue
                yield where, str(this_line), row, lambda line=line: line

    def _parquet_rows(self):
        import pyarrow.parquet as pq
        n = self.first
        with _parquet_source(self.path) as source, pq.ParquetFile(source) as pf:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS,
                                         row_groups=list(range(self.start, self.stop)),
                                         columns=list(self.columns) if self.columns else None):
                for row in batch.to_pylist():
                    yield n, row
                    n += 1


@dataclasses.dataclass
class TraceSet:
    """The files behind a trace path, cut into units (the filter's resume granularity)."""
    format: str
    files: list[str]
    units: list[TraceUnit]
    fields: dict[str, tuple[str, ...]]

    def records(self) -> Iterator[tuple[str, Item]]:
        for unit in self.units:
            yield from unit.records()


def open_traces(path: str, format: str = "auto", fields: dict[str, Any] | None = None,
                pattern: str = "*", kind: str = "math", source: str = "",
                max_unit_bytes: int = MAX_UNIT_BYTES) -> TraceSet:
    """Lists and checks the trace files under `path` and cuts them into units.

    fields: our logical names -> the file's column names, e.g. {"problem": "question",
    "answer": "gold", "id": "uuid", "kind": "domain", "labels": ["correct"]}; None
    turns a default off. kind: the problem kind when no mapped `kind` column says.
    source: the record's source when the row has none (default: the format name).
    Reads only each file's head (and Parquet metadata); no record is converted here.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; known: auto, {', '.join(FORMATS)}")
    if not isinstance(max_unit_bytes, int) or max_unit_bytes <= 0:
        raise ValueError(f"max_unit_bytes must be a positive integer, got {max_unit_bytes!r}")
    if fields:
        everything = set().union(*(f.fields for f in FORMATS.values()))
        unknown = sorted(set(fields) - everything)
        if unknown:
            raise ValueError(f"unknown field name(s) {unknown} in fields=; known: "
                             f"{sorted(everything)}")
    files = _list_files(path, pattern)
    containers = [(f, rel, "parquet" if f.endswith(".parquet") else
                   "jsonl" if f.endswith(".jsonl") else _json_container(f)) for f, rel in files]

    # Every format's columns under the mapping (unknown-for-format names resolved later).
    candidates = {name: _resolve_fields(fmt, {k: v for k, v in (fields or {}).items()
                                              if k in fmt.fields})[0]
                  for name, fmt in FORMATS.items()}
    if format == "auto":
        first, names = _first_names(containers)
        matched = [n for n, fmt in FORMATS.items() if _matches(fmt, names, candidates[n])]
        if not matched:
            raise ValueError(f"{first}: cannot tell the trace format from its first record "
                             f"(fields: {sorted(names)}); expected one of: {_expected()}; "
                             "or pass format= and fields=")
        format = matched[0]
    elif format != "distill":        # a wrong explicit format: say so now, not per row
        first, names = _first_names(containers, required=False)
        fmt = FORMATS[format]
        if names is not None and not _matches(fmt, names, candidates[format]):
            raise ValueError(f"{first}: the first record has none of {fmt.name}'s key fields "
                             f"({fmt.describe}); fields: {sorted(names)}")
    fmt = FORMATS[format]
    columns, explicit = _resolve_fields(fmt, fields)
    reader = _Reader(format, columns, kind, source)

    units: list[TraceUnit] = []
    for f, rel, container in containers:
        if container == "jsonl":
            for start, stop, line in _split_jsonl(f, max_unit_bytes):
                units.append(TraceUnit(f, rel, "jsonl", start, stop, line, stop - start, reader))
        elif container == "json":
            units.append(TraceUnit(f, rel, "json", 0, 1, 0, storage.getsize(f), reader))
        else:
            units.extend(_parquet_units(f, rel, fmt, columns, explicit, reader, max_unit_bytes))
    return TraceSet(format, [f for f, _, _ in containers], units, columns)


def _first_names(containers, required: bool = True):
    """(file, field names of its first record) for the first file that has a record."""
    for f, _, container in containers:
        if container == "parquet":
            return f, set(_parquet_schema_names(f))
        row = (_first_jsonl_record(f) if container == "jsonl" else
               next((r for r in _load_json_rows(f) if isinstance(r, dict)), None))
        if row is not None:
            return f, set(row)
    if required:
        raise ValueError(f"{containers[0][0]}: no JSON object found to detect the trace format "
                         "from (the files are empty or malformed); pass format=")
    return containers[0][0], None


@contextlib.contextmanager
def _parquet_source(path: str) -> Iterator[Any]:
    """What pyarrow is given: a local path as it is (pyarrow's own file reader), a
    URL as a file object of the storage layer (pyarrow seeks to the parts it needs)."""
    if storage.is_local(path):
        yield path
        return
    with storage.open(path, "rb") as f:
        yield f


def _parquet_schema_names(path: str) -> list[str]:
    import pyarrow.parquet as pq
    try:
        with _parquet_source(path) as source:
            return list(pq.read_schema(source).names)
    except Exception as e:   # pyarrow raises ArrowInvalid / OSError for bad files
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e


def _parquet_units(path, rel, fmt, columns, explicit, reader, max_unit_bytes):
    import pyarrow.parquet as pq
    try:
        with _parquet_source(path) as source:
            meta = pq.ParquetFile(source).metadata
    except Exception as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    names = list(meta.schema.to_arrow_schema().names)
    missing = _missing(fmt, names, columns)
    missing += [repr(c) for c in sorted(explicit) if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} needed for format "
                         f"{fmt.name!r} (columns present: {names})")
    wanted = None
    if fmt.name != "distill":
        used = {c for cs in columns.values() for c in cs}
        wanted = tuple(n for n in names if n in used)
    units, group, row, first_row, size = [], None, 0, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if group is not None and size + rg.total_byte_size > max_unit_bytes:
            units.append(TraceUnit(path, rel, "parquet", group, g, first_row, size, reader, wanted))
            group = None
        if group is None:
            group, first_row, size = g, row, 0
        size += rg.total_byte_size
        row += rg.num_rows
    if group is not None:
        units.append(TraceUnit(path, rel, "parquet", group, meta.num_row_groups, first_row, size,
                               reader, wanted))
    return units


# ---------------------------------------------------------------- rows -> records

class _Bad(Exception):
    """A row problem: becomes a Malformed entry."""


def _get(row: dict, columns: dict, logical: str) -> Any:
    for c in columns.get(logical, ()):
        if row.get(c) is not None:
            return row[c]
    return None


def _has(row: dict, columns: dict, logical: str) -> bool:
    return any(c in row for c in columns.get(logical, ()))


def _convert(row: dict, where: str, location_id: str, r: _Reader) -> Iterator[Item]:
    if r.format == "distill":
        from distill_jax.filters.sample import make_sample
        try:
            make_sample(row, where)
        except (KeyError, TypeError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            yield Malformed(where, str(msg))
            return
        yield row
        return
    try:
        base = _base(row, location_id, r)
        convert = {"openr1": _openr1, "sharegpt": _conversation, "messages": _conversation,
                   "vllm": _vllm}[r.format]
        outputs = convert(row, r, base)
    except _Bad as e:
        yield Malformed(where, str(e))
        return
    for item in outputs:
        yield Malformed(where, item.args[0]) if isinstance(item, _Bad) else item


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what} is {type(value).__name__}, not a string")
    return value


def _base(row: dict, location_id: str, r: _Reader) -> dict[str, Any]:
    """The fields every record of this row shares."""
    c = r.columns
    row_id = _get(row, c, "id")
    if isinstance(row_id, (dict, list)):
        raise _Bad(f"id field is a {type(row_id).__name__}, not a string")
    gold = _get(row, c, "answer")
    gold = None if gold is None or (isinstance(gold, str) and not gold.strip()) else gold
    if gold is None and isinstance(_get(row, c, "solution"), str):
        from distill_jax.filters.math_answer import extract_answer
        gold = extract_answer(_get(row, c, "solution"))
    if gold is not None and not isinstance(gold, str):
        gold = json.dumps(gold) if isinstance(gold, (list, dict)) else str(gold)
    kind = _get(row, c, "kind")
    src = _get(row, c, "source")
    base = {
        "prompt_id": str(row_id) if row_id not in (None, "") else location_id,
        "reference": {"answer": gold} if gold is not None else {},
        "kind": str(kind) if kind not in (None, "") else r.kind,
        "source": str(src) if src not in (None, "") else (r.source or r.format),
    }
    system = _get(row, c, "system")
    if system not in (None, ""):
        base["system"] = _string(system, "system field")
    return base


def _record(base: dict, sample_index: int, text: str, finish_reason: Any, problem: str,
            user_message: str, labels: dict, r: _Reader, extra: dict | None = None) -> Record:
    record = {
        "prompt_id": base["prompt_id"], "sample_index": sample_index,
        "text": normalise_response(text),
        "finish_reason": "stop" if finish_reason in (None, "") else str(finish_reason),
        "problem": problem, "user_message": user_message, "reference": dict(base["reference"]),
        "kind": base["kind"], "source": base["source"], "assistant_prefix": "",
        "labels": labels, "format": r.format,
    }
    for key in ("system", "history"):
        if key in base:
            record[key] = base[key]
    record.update(extra or {})
    return record


def _labels(row: dict, r: _Reader, count: int | None) -> list[dict]:
    """Per-generation labels; list values must have one entry per generation."""
    out = [{} for _ in range(count or 1)]
    for name in r.columns.get("labels", ()):
        if name not in row:
            continue
        value = row[name]
        if count is not None and isinstance(value, list):
            if len(value) != count:
                raise _Bad(f"{name} has {len(value)} entries for {count} generations")
            for i, v in enumerate(value):
                out[i][name] = v
        else:
            for d in out:
                d[name] = value
    return out


def _sample_index(row: dict, r: _Reader) -> int:
    value = _get(row, r.columns, "sample_index")
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(f"sample_index is {value!r}, not an integer")
    return value


def _openr1(row: dict, r: _Reader, base: dict) -> list:
    c = r.columns
    if not _has(row, c, "problem"):
        raise _Bad(f"missing field {'/'.join(c['problem'])!r}")
    problem = _string(_get(row, c, "problem"), "problem")
    generations = _get(row, c, "generations")
    if not isinstance(generations, list):
        raise _Bad(f"missing field {'/'.join(c['generations'])!r}" if generations is None
                   else f"generations is {type(generations).__name__}, not a list")
    if not generations:
        raise _Bad("no generations")
    reasons = _get(row, c, "finish_reasons")
    if reasons is None:
        reasons = [None] * len(generations)
    if not isinstance(reasons, list) or len(reasons) != len(generations):
        got = len(reasons) if isinstance(reasons, list) else type(reasons).__name__
        raise _Bad(f"{len(generations)} generations but finish_reasons has {got}")
    labels = _labels(row, r, len(generations))
    out: list = []
    for i, (text, reason) in enumerate(zip(generations, reasons)):
        if not isinstance(text, str):
            out.append(_Bad(f"generation {i} is {type(text).__name__}, not a string"))
            continue
        out.append(_record(base, i, text, reason, problem, problem, labels[i], r))
    return out


_ROLES = {"system": "system", "developer": "system", "human": "user", "user": "user",
          "gpt": "assistant", "assistant": "assistant"}


def _content(value: Any, i: int) -> str:
    if isinstance(value, list):      # [{"type": "text", "text": ...}, ...]
        if all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
    return _string(value, f"turn {i}'s content")


def _conversation(row: dict, r: _Reader, base: dict) -> list:
    sharegpt = r.format == "sharegpt"
    logical, role_key, text_key = (("conversations", "from", "value") if sharegpt
                                   else ("messages", "role", "content"))
    turns = _get(row, r.columns, logical)
    if not isinstance(turns, list):
        raise _Bad(f"missing field {'/'.join(r.columns[logical])!r}" if turns is None
                   else f"{logical} is {type(turns).__name__}, not a list")
    parsed = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise _Bad(f"turn {i} is not an object with {role_key!r} and {text_key!r}")
        role = _ROLES.get(turn[role_key])
        if role is None:
            raise _Bad(f"turn {i} has role {turn[role_key]!r}; expected one of {sorted(_ROLES)}")
        parsed.append((role, _content(turn[text_key], i)))
    answer_at = max((i for i, (role, _) in enumerate(parsed) if role == "assistant"), default=-1)
    if answer_at < 0:
        raise _Bad("no assistant turn")
    user_at = max((i for i, (role, _) in enumerate(parsed[:answer_at]) if role == "user"),
                  default=-1)
    if user_at < 0:
        raise _Bad("no user turn before the last assistant turn")
    systems = [text for role, text in parsed if role == "system"]
    if systems:
        base = {**base, "system": "\n\n".join(systems)}
    history = [{"role": role, "content": text} for role, text in parsed[:user_at]
               if role != "system"]
    if history:
        base = {**base, "history": history}
    user_message = parsed[user_at][1]
    problem = _get(row, r.columns, "problem")
    problem = user_message if problem is None else _string(problem, "problem")
    return [_record(base, _sample_index(row, r), parsed[answer_at][1], None, problem,
                    user_message, _labels(row, r, None)[0], r)]


def _tokens(value: Any) -> dict:
    if isinstance(value, list) and all(isinstance(t, int) for t in value):
        return {"token_ids": value, "num_tokens": len(value)}
    return {}


def _vllm(row: dict, r: _Reader, base: dict) -> list:
    c = r.columns
    prompt = _get(row, c, "prompt")
    problem = _get(row, c, "problem")
    if problem is None and prompt is None:
        raise _Bad(f"no prompt: none of {list(c['prompt'] + c['problem'])} is set")
    problem = _string(problem if problem is not None else prompt, "problem")
    extra_prompt = {"prompt": _string(prompt, "prompt")} if prompt is not None else {}
    outputs = _get(row, c, "outputs")
    if outputs is not None:                                   # vLLM RequestOutput
        if not isinstance(outputs, list):
            raise _Bad(f"outputs is {type(outputs).__name__}, not a list")
        if not outputs:
            raise _Bad("no outputs")
        labels = _labels(row, r, len(outputs))
        out: list = []
        for i, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("text"), str):
                out.append(_Bad(f"output {i} has no text string"))
                continue
            out.append(_record(base, i, o["text"], o.get("finish_reason"), problem, problem,
                               labels[i], r, {**extra_prompt, **_tokens(o.get("token_ids"))}))
        return out
    text = _get(row, c, "text")                               # SGLang
    if text is None:
        raise _Bad(f"neither {list(c['outputs'])} nor {list(c['text'])} is set")
    meta = _get(row, c, "meta_info") or {}
    if not isinstance(meta, dict):
        raise _Bad(f"meta_info is {type(meta).__name__}, not an object")
    reason = meta.get("finish_reason")
    if isinstance(reason, dict):
        reason = reason.get("type")
    extra = {**extra_prompt, **_tokens(_get(row, c, "token_ids"))}
    if "num_tokens" not in extra and isinstance(meta.get("completion_tokens"), int):
        extra["num_tokens"] = meta["completion_tokens"]
    return [_record(base, _sample_index(row, r), _string(text, "text"), reason, problem,
                    problem, _labels(row, r, None)[0], r, extra)]
