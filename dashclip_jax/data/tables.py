"""Reading catalog and relevance tables (CSV or Parquet).

Two views of a table:

  * rows: each row comes as (where, row dict or None, error): `where` names
    it for messages ("styles.csv line 17", "catalog.parquet row 3"), and a
    row that cannot be read (malformed CSV, an unclosed quote and the rows it
    swallows) comes as None with the reason, so the caller counts it
    (`bad_records.py`) instead of guessing. Text is never changed: a row
    whose bytes are not UTF-8 comes as None too (reason `UNDECODABLE`). Python per row: for catalogs and
    small tables.
  * column batches (column_batches.py): the same records, a million at a
    time, as pyarrow string columns normalised like `cell_text`, for tables of
    millions of rows (relevance pairs).

A CSV is read into column batches by pyarrow when that provably gives the
rows the python reader gives, on the same physical lines: the file has only
"\\n" or "\\r\\n" line ends, a one-line header, and pyarrow's record count
equals the physical line count (minus the header and trailing blank lines).
A blank line, a quoted line break, an unclosed quote, a row with the wrong
number of fields or undecodable UTF-8 breaks that: pyarrow raises, or the
counts differ (known only at the end of the file), and
`column_batches.with_column_batches` reads the file again with the python
reader, whose messages name the lines exactly. pyarrow and python's csv
module agree on quoting otherwise (doubled quotes, quotes inside unquoted
fields, text after a closing quote).
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any, Iterator, Sequence

import pyarrow.parquet as pq

Row = tuple[str, dict | None, str]  # (where, row or None, error)

# Why a row that comes as None (an error) is skipped: its bytes are not
# UTF-8 (e.g. a Latin-1 title), or it is no row of the header's shape.
UNDECODABLE, MALFORMED = "undecodable text", "malformed row"
_NOT_UTF8 = "not UTF-8"  # How an UNDECODABLE row's error starts.
# The stand-ins of errors="surrogateescape" for bytes that are not UTF-8.
_ESCAPED = re.compile("[\udc80-\udcff]+")

# Records per column batch: a few MB of text per column; its transient
# arrays cost ~250 bytes a record, the pairs kept 17.
BATCH_ROWS = 1 << 18
# What str.strip() strips (every c with c.isspace()); pyarrow's
# utf8_trim_whitespace would keep \x1c-\x1f.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
                 "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                 "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


class TableError(ValueError):
  """A table the loaders cannot read at all (no header, a column the
  mapping names is absent); the message names the file. The entry points
  print it as one line."""


def error_reason(error: str) -> str:
  """The skip reason of a row that came as an error: UNDECODABLE or
  MALFORMED."""
  return UNDECODABLE if error.startswith(_NOT_UTF8) else MALFORMED


def read_csv_rows(path: str) -> tuple[list[str], Iterator[Row]]:
  """Header and rows of a CSV file; malformed rows come back as errors.

  The file is UTF-8 (a BOM is dropped). A row with bytes that are not is an
  error (`UNDECODABLE`, naming the columns and bytes), never read with
  replacement characters: a Latin-1 title would change silently.

  A row with the wrong number of fields (e.g. an unquoted comma inside a title
  of the public fashion file) is reported, never guessed at. A quote left
  open swallows the lines after it into one field: each of those lines is
  reported as a lost row, named after the line where the quote opened. Rows
  are named by the line they start on.
  """
  header, records = csv_records(path)
  base = os.path.basename(path)
  return header, ((f"{base} line {n}", row, error)
                  for n, row, error in records)


def csv_records(path: str, columns: Sequence[str] | None = None
                 ) -> tuple[list[str], Iterator[tuple[int, dict | None, str]]]:
  """`read_csv_rows` with each row named by its first line number; only
  undecodable bytes in `columns` (default: all) make a row an error."""
  # Bytes that are not UTF-8 become lone surrogates, found per record.
  f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
  lines = []  # The physical lines of the record being parsed.

  def physical_lines():
    for line in f:
      lines.append(line)
      yield line
  reader = csv.reader(physical_lines())
  try:
    header = next(reader)
  except StopIteration:
    f.close()
    raise TableError(f"{path}: empty CSV file (no header row)") from None
  header = [h.strip() for h in header]
  if any(_ESCAPED.search(h) for h in header):
    f.close()
    raise TableError(f"{path} line 1: the header is not UTF-8 text "
                     f"({_undecodable(header, header)})")
  checked = set(header if columns is None else columns)

  def rows():
    with f:
      while True:
        lines.clear()
        try:
          row = next(reader)
          error = ""
        except StopIteration:
          return
        except csv.Error as e:
          row, error = None, f"unparsable CSV: {e}"
        start = reader.line_num - max(len(lines), 1) + 1
        if row is not None and not row:  # Blank line: not a record.
          continue
        if len(lines) > 1 and (error or len(row) != len(header) or
                               _swallows_rows(lines[1:], len(header))):
          # csv reads exactly one record's lines, so `lines` are the lost
          # rows: the first holds the open quote.
          lost = [k for k, l in enumerate(lines) if l.strip()]
          yield start, None, (f"unclosed quote: the field runs to line "
                              f"{reader.line_num} and swallows the "
                              f"{len(lost) - 1} rows after it")
          for k in lost[1:]:
            yield start + k, None, f"lost in the unclosed quote of line {start}"
          continue
        if error:
          yield start, None, error
          continue
        if len(row) != len(header):
          yield start, None, (f"malformed row: {len(row)} fields, expected "
                              f"{len(header)}")
          continue
        if any(map(_ESCAPED.search, lines)):
          bad = [(h, v) for h, v in zip(header, row) if h in checked]
          if any(_ESCAPED.search(v) for _, v in bad):
            yield start, None, _undecodable(*zip(*bad))
            continue
        yield start, dict(zip(header, row)), ""
  return header, rows()


def _undecodable(names: Sequence[str], values: Sequence[str]) -> str:
  """The error of a row with bytes that are not UTF-8: where and which."""
  found = [(n, m.group()) for n, v in zip(names, values)
           if (m := _ESCAPED.search(v))]
  raw = lambda s: s.encode("utf-8", "surrogateescape")
  return (f"{_NOT_UTF8}: " + ", ".join(f"column {n!r} has bytes {raw(b)!r}"
                                       for n, b in found)
          + " (save the file as UTF-8)")


def _swallows_rows(continuation: list[str], num_fields: int) -> bool:
  """Whether a record's continuation lines read as records of their own:
  then a stray quote joined them, not a line break inside a quoted field."""
  for line in continuation:
    try:
      fields = next(csv.reader([line]), [])
    except csv.Error:
      continue
    if len(fields) == num_fields:
      return True
  return False


def read_parquet_rows(path: str) -> tuple[list[str], Iterator[Row]]:
  """Header and rows of a Parquet file, streamed by record batch."""
  pf = pq.ParquetFile(path)
  header = list(pf.schema_arrow.names)
  base = os.path.basename(path)

  def rows():
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
      for row in batch.to_pylist():
        yield f"{base} row {n}", row, ""
        n += 1
  return header, rows()


def is_parquet(path: str) -> bool:
  return path.endswith((".parquet", ".pq"))


def read_table_rows(path: str) -> tuple[list[str], Iterator[Row]]:
  """CSV or Parquet (by extension)."""
  if is_parquet(path):
    return read_parquet_rows(path)
  return read_csv_rows(path)


def read_header(path: str) -> list[str]:
  """Column names of a CSV (stripped, as `read_csv_rows`) or Parquet file."""
  if is_parquet(path):
    return list(pq.ParquetFile(path).schema_arrow.names)
  header, rows = csv_records(path)
  next(rows, None)  # Started, so that close() closes the file.
  rows.close()
  return header


def require_columns(name: str, header: Sequence[str],
                    needed: Sequence[str]) -> None:
  """Fails early, naming them, when columns a mapping needs are absent."""
  missing = [c for c in needed if c not in header]
  if missing:
    raise TableError(f"{name}: columns {missing} not found; the table has "
                     f"{list(header)}. Set the column mapping.")


def cell_text(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, float) and v.is_integer():
    v = int(v)  # Parquet/pandas may store integer ids as floats.
  return str(v).strip()
