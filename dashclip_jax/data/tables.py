"""Reading catalog and relevance tables (CSV or Parquet).

Two views of a table:

  * rows: each row comes as (where, row dict or None, error): `where` names
    it for messages ("styles.csv line 17", "catalog.parquet row 3"), and a
    row that cannot be read (malformed CSV, an unclosed quote and the rows it
    swallows) comes as None with the reason, so the caller counts it
    (`bad_records.py`) instead of guessing. Text is never changed: a row
    whose bytes are not UTF-8 comes as None too (reason `UNDECODABLE`). Python per row: for catalogs and
    small tables.
  * column batches (`ColumnBatch`): the same records, a million at a time, as
    pyarrow string columns normalised like `cell_text`, for tables of
    millions of rows (relevance pairs).

A CSV is read into column batches by pyarrow when that provably gives the
rows the python reader gives, on the same physical lines: the file has only
"\\n" or "\\r\\n" line ends, a one-line header, and pyarrow's record count
equals the physical line count (minus the header and trailing blank lines).
A blank line, a quoted line break, an unclosed quote, a row with the wrong
number of fields or undecodable UTF-8 breaks that: pyarrow raises, or the
counts differ (known only at the end of the file), and `with_column_batches`
reads the file again with the python reader, whose messages name the lines
exactly. pyarrow and python's csv module agree on quoting otherwise (doubled
quotes, quotes inside unquoted fields, text after a closing quote).
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
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
  header, records = _csv_records(path)
  base = os.path.basename(path)
  return header, ((f"{base} line {n}", row, error)
                  for n, row, error in records)


def _csv_records(path: str, columns: Sequence[str] | None = None
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
  header, rows = _csv_records(path)
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


# ---------------------------------------------------------------------------
# Column batches.


@dataclasses.dataclass
class ColumnBatch:
  """Consecutive records of a table as text columns.

  Attributes:
    start: index of the first record in the whole table (records count
      malformed rows too, in file order).
    columns: name -> pyarrow string array (N,), each cell as `cell_text`
      makes it ("" for a missing cell and for a malformed record).
    errors: record index in the batch -> why it could not be read.
    where: record index in the batch -> culprit name ("rel.csv line 7").
  """
  start: int
  columns: dict[str, Any]
  errors: dict[int, str]
  where: Callable[[int], str]
  numbered: str | None = None  # "rel.csv line {}": record i is number
  first_number: int = 0        # first_number + i (then `where` says so).

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def wheres(self, rows: np.ndarray) -> list[str]:
    """Culprit names of records `rows` (batch indices)."""
    if self.numbered is None:
      return [self.where(i) for i in rows.tolist()]
    return list(map(self.numbered.format,
                    (np.asarray(rows) + self.first_number).tolist()))


class Names:
  """Culprit names of records read in batches, by record index in the table.

  Kept after the batches are gone, so a record found bad only at the end
  (a duplicate pair) is still named by its line.
  """

  def __init__(self):
    self._starts, self._where = [], []

  def add(self, batch: ColumnBatch) -> None:
    self._starts.append(batch.start)
    self._where.append(batch.where)

  def __call__(self, record: int) -> str:
    b = bisect.bisect_right(self._starts, record) - 1
    return self._where[b](record - self._starts[b])


def text_column(array) -> Any:
  """pyarrow array -> string array, `cell_text` of each cell.

  Text is trimmed by pyarrow; any other type (ints, floats, ...) is converted
  by `cell_text` once per distinct value.
  """
  if isinstance(array, pa.ChunkedArray):
    array = array.combine_chunks()
  if pa.types.is_dictionary(array.type):
    values = text_column(array.dictionary)
    return pc.fill_null(pc.take(values, array.indices), "")
  if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    return pc.utf8_trim(pc.fill_null(array, ""), PY_WHITESPACE).cast(
        pa.string())
  if pa.types.is_integer(array.type):  # str(int) is arrow's cast.
    return pc.fill_null(array.cast(pa.string()), "")
  values = pc.unique(array)
  texts = pa.array([cell_text(v) for v in values.to_pylist()], pa.string())
  return pc.take(texts, pc.index_in(array, value_set=values))


def rows_to_batches(rows: Iterable[Row], names: Sequence[str],
                    batch_rows: int = 1 << 16) -> Iterator[ColumnBatch]:
  """(where, row, error) triples -> column batches (Python per row)."""
  start = 0
  cells, errors, where = {n: [] for n in names}, {}, []

  def flush():
    batch = ColumnBatch(
        start=start, errors=dict(errors), where=list(where).__getitem__,
        columns={n: pa.array(c, pa.string()) for n, c in cells.items()})
    for c in cells.values():
      c.clear()
    errors.clear()
    where.clear()
    return batch

  for w, row, error in rows:
    if row is None:
      errors[len(where)] = error
      for c in cells.values():
        c.append("")
    else:
      for n, c in cells.items():
        c.append(cell_text(row.get(n)))
    where.append(w)
    if len(where) == batch_rows:
      batch = flush()
      start += len(batch)
      yield batch
  if where or not start:
    yield flush()


def report_bad(bad, reasons: Sequence[str], code: np.ndarray,
               detail: Callable[[int, int], str],
               where: Callable[[int], str]) -> None:
  """Counts the skips of vectorised checks as a row-by-row loop would.

  Args:
    bad: the `bad_records.BadRecords` to fill.
    reasons: reason of each code 1, 2, ... (several codes may share one).
    code: int (N,) per record: 0 good, k > 0 skipped for `reasons[k - 1]`.
    detail: (record, code) -> the culprit's detail text.
    where: record -> its culprit name.

  The first `bad.max_culprits` records of each reason are named, in record
  order across reasons; Python runs only for those.
  """
  firsts, more = [], {}
  for reason in dict.fromkeys(reasons):
    ks = [k + 1 for k, r in enumerate(reasons) if r == reason]
    rows = np.flatnonzero(np.isin(code, ks))
    firsts += [(int(i), reason) for i in rows[:bad.max_culprits]]
    more[reason] = max(0, len(rows) - bad.max_culprits)
  for i, reason in sorted(firsts):
    bad.bad(where(i), reason, detail(i, int(code[i])))
  for reason, n in more.items():  # Counted, not named.
    if n:
      bad.counts[reason] += n
      bad.seen += n
  bad.ok(int(np.count_nonzero(code == 0)))


class IrregularCSV(Exception):
  """pyarrow's reading of a CSV would not match the python reader's."""


def _line_stats(path: str) -> tuple[int, bool, bool]:
  """-> (physical lines not counting trailing blank ones, has a quote,
  regular line ends: only "\\n" or "\\r\\n")."""
  newlines = crs = crlfs = 0
  quote = False
  tail = b""
  prev_cr = False
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      newlines += chunk.count(b"\n")
      cr = chunk.count(b"\r")
      if cr or prev_cr:
        crs += cr
        crlfs += chunk.count(b"\r\n") + (prev_cr and chunk[:1] == b"\n")
      quote = quote or b'"' in chunk
      prev_cr = chunk[-1:] == b"\r"
      tail = (tail + chunk)[-4096:]
  body = tail.rstrip(b"\r\n")
  trailing = tail[len(body):]
  if not body:  # Nothing but line ends in the last 4096 bytes: let python.
    return -1, quote, False
  # Lines: one per "\n", plus an unterminated last one; trailing blank lines
  # are not records to either reader.
  lines = newlines - trailing.count(b"\n") + 1
  return lines, quote, crs == crlfs


def _arrow_csv_batches(path: str, names: Sequence[str],
                       batch_rows: int) -> Iterator[ColumnBatch]:
  """Column batches of a regular CSV; raises IrregularCSV otherwise."""
  header, records = _csv_records(path)
  first = next(records, None)
  records.close()
  if first is not None and first[0] != 2 or len(set(header)) != len(header):
    raise IrregularCSV(f"{path}: header spans lines or repeats a column")
  lines, quote, regular = _line_stats(path)
  if not regular:
    raise IrregularCSV(f"{path}: line ends other than \\n, \\r\\n")
  base = os.path.basename(path)
  # Blocks of 2 MB joined into batches. pyarrow reads ~64 MB ahead of a
  # file it opens itself; from a python file object it reads on demand.
  read = pcsv.ReadOptions(column_names=header, skip_rows=1,
                          use_threads=False, block_size=1 << 21)
  parse = pcsv.ParseOptions(newlines_in_values=quote)
  convert = pcsv.ConvertOptions(
      column_types={n: pa.string() for n in header}, include_columns=names,
      strings_can_be_null=False, quoted_strings_can_be_null=False)
  n, pending = 0, []
  try:
    with open(path, "rb") as f:
      for batch in pcsv.open_csv(f, read_options=read, parse_options=parse,
                                 convert_options=convert):
        pending.append(batch)
        if sum(map(len, pending)) >= batch_rows:
          yield _csv_batch(pa.Table.from_batches(pending), n, base, names)
          n += sum(map(len, pending))
          pending = []
    if pending:
      yield _csv_batch(pa.Table.from_batches(pending), n, base, names)
      n += sum(map(len, pending))
  except pa.ArrowInvalid as e:
    raise IrregularCSV(f"{path}: {e}") from e
  if n + 1 != lines:
    raise IrregularCSV(f"{path}: {n} records on {lines - 1} lines")


def _csv_batch(table, start: int, base: str,
               names: Sequence[str]) -> ColumnBatch:
  # Record k of a regular file is on line k + 2 (after the header line).
  return ColumnBatch(
      start=start, errors={},
      columns={n: text_column(table.column(n)) for n in names},
      where=lambda i: f"{base} line {start + i + 2}",
      numbered=f"{base} line {{}}", first_number=start + 2)


def _python_csv_batches(path: str, names: Sequence[str],
                        batch_rows: int) -> Iterator[ColumnBatch]:
  """Column batches through the python reader (any CSV; Python per row)."""
  _, records = _csv_records(path, names)
  base = os.path.basename(path)
  for batch in rows_to_batches(((n, row, e) for n, row, e in records), names,
                               min(batch_rows, 1 << 16)):
    lines = batch.where
    batch.where = lambda i, lines=lines: f"{base} line {lines(i)}"
    yield batch


def _parquet_batches(path: str, names: Sequence[str],
                     batch_rows: int) -> Iterator[ColumnBatch]:
  base = os.path.basename(path)
  n = 0
  for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows,
                                                 columns=list(names)):
    yield ColumnBatch(
        start=n, errors={},
        columns={c: text_column(batch.column(c)) for c in names},
        where=lambda i, n=n: f"{base} row {n + i}",
        numbered=f"{base} row {{}}", first_number=n)
    n += len(batch)


T = TypeVar("T")


def with_column_batches(path: str, names: Sequence[str],
                        consume: Callable[[Iterator[ColumnBatch]], T],
                        batch_rows: int = BATCH_ROWS) -> T:
  """`consume(batches)` over columns `names` of a CSV or Parquet table.

  A CSV goes through pyarrow first; if that turns out irregular (see the
  module docstring) `consume` runs again, from the start, on the python
  reader's batches, so it must keep no state between calls.
  """
  if is_parquet(path):
    return consume(_parquet_batches(path, names, batch_rows))
  try:
    return consume(_arrow_csv_batches(path, names, batch_rows))
  except IrregularCSV:
    return consume(_python_csv_batches(path, names, batch_rows))
