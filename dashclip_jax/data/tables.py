"""Reading catalog and relevance tables (CSV or Parquet) as named rows.

Each row comes as (where, row dict or None, error): `where` names it for
messages ("styles.csv line 17", "catalog.parquet row 3"), and a row that
cannot be read (malformed CSV, an unclosed quote and the rows it swallows)
comes as None with the reason, so the caller counts it (`bad_records.py`)
instead of guessing. `cell_text` normalises one cell to stripped text;
`require_columns` stops a wrong column mapping before any row is read.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Iterator, Sequence

Row = tuple[str, dict | None, str]  # (where, row or None, error)


def read_csv_rows(path: str) -> tuple[list[str], Iterator[Row]]:
  """Header and rows of a CSV file; malformed rows come back as errors.

  A row with the wrong number of fields (e.g. an unquoted comma inside a title
  of the public fashion file) is reported, never guessed at. A quote left
  open swallows the lines after it into one field: each of those lines is
  reported as a lost row, named after the line where the quote opened. Rows
  are named by the line they start on.
  """
  f = open(path, newline="", encoding="utf-8", errors="replace")
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
    raise ValueError(f"{path}: empty CSV file (no header row)") from None
  header = [h.strip() for h in header]
  base = os.path.basename(path)

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
        where = f"{base} line {start}"
        if row is not None and not row:  # Blank line: not a record.
          continue
        if len(lines) > 1 and (error or len(row) != len(header) or
                               _swallows_rows(lines[1:], len(header))):
          # csv reads exactly one record's lines, so `lines` are the lost
          # rows: the first holds the open quote.
          lost = [k for k, l in enumerate(lines) if l.strip()]
          yield where, None, (f"unclosed quote: the field runs to line "
                              f"{reader.line_num} and swallows the "
                              f"{len(lost) - 1} rows after it")
          for k in lost[1:]:
            yield (f"{base} line {start + k}", None,
                   f"lost in the unclosed quote of line {start}")
          continue
        if error:
          yield where, None, error
          continue
        if len(row) != len(header):
          yield where, None, (f"malformed row: {len(row)} fields, expected "
                              f"{len(header)}")
          continue
        yield where, dict(zip(header, row)), ""
  return header, rows()


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
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
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


def read_table_rows(path: str) -> tuple[list[str], Iterator[Row]]:
  """CSV or Parquet (by extension)."""
  if path.endswith((".parquet", ".pq")):
    return read_parquet_rows(path)
  return read_csv_rows(path)


def require_columns(name: str, header: Sequence[str],
                    needed: Sequence[str]) -> None:
  """Fails early, naming them, when columns a mapping needs are absent."""
  missing = [c for c in needed if c not in header]
  if missing:
    raise ValueError(f"{name}: columns {missing} not found; the table has "
                     f"{list(header)}. Set the column mapping.")


def cell_text(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, float) and v.is_integer():
    v = int(v)  # Parquet/pandas may store integer ids as floats.
  return str(v).strip()
