"""Tables as column batches: pyarrow arrays of a few columns, a batch of
rows at a time (CSV through pyarrow's reader, or Python's for irregular
files; Parquet), and the counted skips of their bad rows (`report_bad`).
Loaders validate whole columns at once (Python per bad row, never per good
one)."""

from __future__ import annotations

import bisect
import dataclasses
import os
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dashclip_jax.data import tables


def to_numpy(array) -> np.ndarray:
  """A pyarrow array as numpy (a copy where arrow's layout needs one)."""
  return array.to_numpy(zero_copy_only=False)


@dataclasses.dataclass
class ColumnBatch:
  """Consecutive records of a table as text columns.

  Attributes:
    start: index of the first record in the whole table (records count
      malformed rows too, in file order).
    columns: name -> pyarrow string array (N,), each cell as `tables.cell_text`
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
  """pyarrow array -> string array, `tables.cell_text` of each cell.

  Text is trimmed by pyarrow; any other type (ints, floats, ...) is converted
  by `tables.cell_text` once per distinct value.
  """
  if isinstance(array, pa.ChunkedArray):
    array = array.combine_chunks()
  if pa.types.is_dictionary(array.type):
    values = text_column(array.dictionary)
    return pc.fill_null(pc.take(values, array.indices), "")
  if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    return pc.utf8_trim(pc.fill_null(array, ""), tables.PY_WHITESPACE).cast(
        pa.string())
  if pa.types.is_integer(array.type):  # str(int) is arrow's cast.
    return pc.fill_null(array.cast(pa.string()), "")
  values = pc.unique(array)
  texts = pa.array([tables.cell_text(v) for v in values.to_pylist()],
                   pa.string())
  return pc.take(texts, pc.index_in(array, value_set=values))


def rows_to_batches(rows: Iterable[tables.Row], names: Sequence[str],
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
        c.append(tables.cell_text(row.get(n)))
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
  header, records = tables.csv_records(path)
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
  _, records = tables.csv_records(path, names)
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
                        batch_rows: int = tables.BATCH_ROWS) -> T:
  """`consume(batches)` over columns `names` of a CSV or Parquet table.

  A CSV goes through pyarrow first; if that turns out irregular (see the
  module docstring) `consume` runs again, from the start, on the python
  reader's batches, so it must keep no state between calls.
  """
  if tables.is_parquet(path):
    return consume(_parquet_batches(path, names, batch_rows))
  try:
    return consume(_arrow_csv_batches(path, names, batch_rows))
  except IrregularCSV:
    return consume(_python_csv_batches(path, names, batch_rows))
