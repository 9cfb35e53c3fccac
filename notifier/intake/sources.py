"""Rows in from an operator's file, streamed: CSV or JSON Lines, one (line, row) pair at a time, never the file.

A row that cannot be read (bytes that are not in the file's encoding, a malformed JSON line, a cell over the
size limit, a CSV record that breaks the quoting) becomes a `Reject` with its line and the reason, and reading
goes on with the next one: one bad line never stops the good ones. A UTF-8 byte-order mark is dropped.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from notifier.errors import UsageError

# The longest cell (in characters) any field may hold; the csv module refuses a longer one as it reads it, so a
# 10 MB cell costs a reject, not 10 MB per row.
MAX_CELL = 131_072
FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class Reject:
    """A row left out of an import: its line in the file, the field at fault ('' for the whole row), and why."""

    line: int
    field: str
    reason: str


def file_format(path: Path, given: str | None) -> str:
    """csv or jsonl: as given (option or mapping file), else from the file's extension."""
    chosen = (given or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "csv"))
    if chosen not in FORMATS:
        raise UsageError(f"format {chosen!r} is not one of {', '.join(FORMATS)}")
    return chosen


def open_text(path: Path, encoding: str) -> IO[str]:
    """The file as text; undecodable bytes are kept as surrogates, so that only their own row is refused."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown encoding {encoding!r}") from None
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    try:
        return open(path, encoding=encoding, errors="surrogateescape", newline="")
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def csv_rows(stream: IO[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str] | Reject]]:
    """(line, {column: cell}) for each CSV record after the header, or (line, Reject) for one that cannot be read."""
    reader = csv.reader(stream, delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise UsageError(f"the header line cannot be read as CSV ({exc})") from None
    if undecodable(" ".join(header)):
        raise UsageError("the header line is not in the file's encoding (give the encoding in the mapping file)")
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, Reject(reader.line_num, "", f"cannot be read as CSV ({exc})")
            continue
        if not any(cells):
            continue  # a blank line
        if len(cells) != len(header):
            yield reader.line_num, Reject(reader.line_num, "", f"has {len(cells)} cells; the header has "
                                                             f"{len(header)}")
            continue
        yield reader.line_num, dict(zip(header, cells))


def jsonl_rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(line, object) for each JSON Lines record, or (line, Reject) for a line that is not one JSON object."""
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        if len(text) > MAX_CELL * 4:
            yield line, Reject(line, "", f"is longer than {MAX_CELL * 4} characters")
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            yield line, Reject(line, "", f"is not valid JSON ({str(exc).split(':')[0]})")
            continue
        if not isinstance(row, dict):
            yield line, Reject(line, "", "is not a JSON object")
            continue
        yield line, row


def read_yaml(path: Path, limit: int, error: type[UsageError] = UsageError) -> Any:
    """A small YAML file an operator wrote (network, mapping), parsed safely; `error` says what is wrong with it."""
    try:
        if path.stat().st_size > limit:
            raise error(f"{path}: over {limit} bytes")
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def undecodable(text: str) -> bool:
    """True when the text holds bytes the file's encoding could not decode (kept as lone surrogates)."""
    return any("\udc80" <= char <= "\udcff" for char in text)
