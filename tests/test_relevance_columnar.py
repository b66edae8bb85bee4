"""The column-batch relevance loader equals the row-by-row loop it replaced.

`_reference` is that loop (judging each row in turn); every case compares
the loader's pairs, queries and skip counts/culprits with it.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import column_batches
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import tables


HEADER = "query_id,query,product_id,label\n"


def _catalog(n):
  ids = [str(i) for i in range(n)]
  return catalog_lib.Catalog(
      name="mem", ids=ids, titles=ids, category=np.zeros(n, np.int32),
      category_names=[], split=["train"] * n, images=[b"x"] * n, where=ids)


def _reference(rows, catalog):
  """The sequential loop: -> (query_ids, queries, pairs, counts, culprits)."""
  bad = br.BadRecords("ref", max_bad_fraction=1.0)
  qindex, query_ids, queries, pairs, seen = {}, [], [], [], set()
  for where, row, error in rows:
    if row is None:
      bad.bad(where, tables.error_reason(error), error)
      continue
    qid, text, pid, raw = (tables.cell_text(row.get(c)) for c in
                           ("query_id", "query", "product_id", "label"))
    if not qid or not text:
      bad.bad(where, "empty query", f"query_id {qid!r}")
      continue
    try:
      label = int(raw)
    except ValueError:
      label = None
    if label not in (0, 1, 2):
      bad.bad(where, "label outside {0,1,2}", f"label {raw!r}")
      continue
    p = catalog.index_of(pid)
    if p is None:
      bad.bad(where, "unknown product", f"product_id {pid!r}")
      continue
    q = qindex.get(qid)
    if q is None:
      q = qindex[qid] = len(queries)
      query_ids.append(qid)
      queries.append(text)
    elif queries[q] != text:
      bad.bad(where, "query text differs",
              f"query_id {qid}: {text!r} vs {queries[q]!r}")
      continue
    if (q, p) in seen:
      bad.bad(where, "duplicate pair", f"{qid}, {pid}")
      continue
    seen.add((q, p))
    pairs.append((q, p, label))
    bad.ok()
  return query_ids, queries, pairs, bad


def _assert_same(rel, ref):
  query_ids, queries, pairs, bad = ref
  assert rel.query_ids == query_ids
  assert rel.queries == queries
  assert list(zip(rel.query.tolist(), rel.product.tolist(),
                  rel.label.tolist())) == pairs
  assert rel.bad.counts == bad.counts
  assert rel.bad.seen == bad.seen
  assert rel.bad.culprits == bad.culprits


# Every kind of bad row. q2's first row names an unknown product, so its
# text is fixed by its second row and the third differs from that.
PLANTED = [
    "q1,red shirt,0,2",        # line 2
    "q2,blue hat,999,2",       # line 3: unknown product
    "q2,green hat,1,1",        # line 4: fixes q2's text
    "q2,blue hat,2,2",         # line 5: query text differs
    "q1,red shirt,0,1",        # line 6: duplicate pair
    "q3, ,1,2",                # line 7: empty query
    ",x,1,2",                  # line 8: empty query id
    "q3,x,1,5",                # line 9: label outside
    "q3,x,1, 02 ",             # line 10: int(" 02 ") == 2, kept
    "q1,red shirt,0,x",        # line 11: a bad label before the duplicate
    " q4 ,  spaced\t,3,2",     # line 12: trimmed like cell_text
    "q4,spaced,3,0",           # line 13: duplicate once trimmed
    'q5,"quoted, comma",4,1',  # line 14
    "q2,green hat,999,0",      # line 15: unknown product
    "q6,a,5,1.0",              # line 16: int("1.0") fails
    "q6,a,5,1",                # line 17
    "q2,green hat,1,2",        # line 18: duplicate pair
    "q1,red shirt,0,1",        # line 19: duplicate pair (4th of its kind)
    "q1,red shirt,0,1",        # line 20: duplicate pair (not named)
]


def _load(path, cat, **kw):
  return relevance_tables.load_relevance(str(path), cat, max_bad_fraction=1.0,
                                         **kw)


def test_planted_rows_match_the_loop_on_the_pyarrow_path(tmp_path,
                                                         monkeypatch):
  path = tmp_path / "rel.csv"
  path.write_text(HEADER + "\n".join(PLANTED) + "\n")
  cat = _catalog(6)
  # A regular file never reaches the python reader.
  monkeypatch.setattr(column_batches, "_python_csv_batches", None)
  rel = _load(path, cat)
  _assert_same(rel, _reference(tables.read_csv_rows(str(path))[1], cat))
  assert rel.queries == ["red shirt", "green hat", "x", "spaced",
                         "quoted, comma", "a"]
  assert rel.bad.culprits[:3] == [
      "rel.csv line 3: unknown product (product_id '999')",
      "rel.csv line 5: query text differs (query_id q2: 'blue hat' vs "
      "'green hat')",
      "rel.csv line 6: duplicate pair (q1, 0)"]
  assert rel.bad.counts["duplicate pair"] == 5


@pytest.mark.parametrize("breakage", [
    "q7,y,1,2,extra",           # malformed row
    "",                         # a blank line
    'q7,"two\nlines",1,2',      # a quoted line break
    'q7,"open quote,1,2\nq8,z,1,2\nq9,z,2,2',  # unclosed quote
])
def test_irregular_csv_falls_back_with_exact_lines(tmp_path, breakage):
  rows = PLANTED[:5] + [breakage] + PLANTED[5:]
  path = tmp_path / "rel.csv"
  path.write_bytes((HEADER + "\n".join(rows) + "\n").encode())
  cat = _catalog(6)
  _assert_same(_load(path, cat),
               _reference(tables.read_csv_rows(str(path))[1], cat))


def test_crlf_bom_and_trailing_blank_lines_stay_on_pyarrow(tmp_path,
                                                           monkeypatch):
  path = tmp_path / "rel.csv"
  path.write_bytes(("\ufeff" + HEADER + "\n".join(PLANTED) + "\n\n\n")
                   .replace("\n", "\r\n").encode())
  cat = _catalog(6)
  monkeypatch.setattr(column_batches, "_python_csv_batches", None)
  rel = _load(path, cat)
  _assert_same(rel, _reference(tables.read_csv_rows(str(path))[1], cat))


def test_bad_utf8_rows_are_counted_and_named_not_replaced(tmp_path):
  """Latin-1 bytes: each such row is skipped as undecodable text, by line
  (it was read with replacement characters: "caf\ufffd", nothing counted).
  Bytes in a column the loader does not read change nothing."""
  path = tmp_path / "rel.csv"
  path.write_bytes(b"query_id,query,product_id,label,note\n"
                   b"q1,caf\xe9,1,2,\nq2,tea,1,2,\nq1,caf\xe9,2,2,\n"
                   b"q3,mug,2,1,cr\xe8me\n")
  cat = _catalog(3)
  rel = _load(path, cat)
  assert rel.queries == ["tea", "mug"] and len(rel) == 2
  assert dict(rel.bad.counts) == {"undecodable text": 2}
  assert [c.split(":")[0] for c in rel.bad.culprits] == [
      "rel.csv line 2", "rel.csv line 4"]
  assert "column 'query' has bytes b'\\xe9'" in rel.bad.culprits[0]


def test_random_tables_in_small_batches_match_the_loop():
  """Cross-batch state: query order, texts fixed in an earlier batch,
  duplicates across batches, culprits named in row order."""
  rng = np.random.default_rng(0)
  n = 3000
  qid = rng.integers(0, 60, n)
  table = {
      "query_id": [f"q{q}" if rng.random() > 0.02 else "" for q in qid],
      "query": [f"text {q}" if rng.random() > 0.03 else f"other {q}"
                for q in qid],
      "product_id": [str(p) for p in rng.integers(0, 45, n)],
      "label": [str(l) for l in rng.integers(-1, 4, n)],
  }
  rows = [(f"t row {i}", {k: v[i] for k, v in table.items()}, "")
          for i in range(n)]
  rows[17] = ("t row 17", None, "malformed row: 3 fields, expected 4")
  cat = _catalog(40)
  for batch_rows in (7, 1000, 5000):
    rel = relevance_tables.relevance_from_batches(
        column_batches.rows_to_batches(rows, list(table), batch_rows), cat,
        name="t", max_bad_fraction=1.0)
    _assert_same(rel, _reference(rows, cat))


def test_parquet_with_integer_columns_matches_the_loop(tmp_path):
  rng = np.random.default_rng(1)
  n = 500
  table = pa.table({
      "query_id": pa.array(rng.integers(0, 30, n)),
      "query": pa.array([f"t{q}" for q in rng.integers(0, 30, n)]),
      "product_id": pa.array(rng.integers(0, 25, n).astype(float)),
      "label": pa.array(rng.integers(0, 4, n), pa.int8()),
  })
  path = tmp_path / "rel.parquet"
  pq.write_table(table, path)
  cat = _catalog(20)
  ref = _reference(tables.read_parquet_rows(str(path))[1], cat)
  _assert_same(_load(path, cat), ref)
  rel = column_batches.with_column_batches(
      str(path), list(table.column_names),
      lambda b: relevance_tables.relevance_from_batches(
          b, cat, name=str(path), max_bad_fraction=1.0), batch_rows=33)
  _assert_same(rel, ref)
  assert rel.bad.culprits[0].startswith("rel.parquet row ")


def test_qrels_and_relevant_table_equal_per_pair_loops():
  rel = relevance_lib.Relevance(
      name="r", query_ids=["a", "b", "c"], queries=["a", "b", "c"],
      query=np.array([2, 0, 2, 0, 2, 1], np.int32),
      product=np.array([5, 1, 3, 4, 0, 2], np.int32),
      label=np.array([2, 1, 0, 2, 1, 0], np.int8), num_products=6)
  assert rel.qrels() == [{1: 1, 4: 2}, {}, {5: 2, 0: 1}]
  assert rel.qrels(2) == [{4: 2}, {}, {5: 2}]
  assert rel.qrels(0)[2] == {5: 2, 3: 0, 0: 1}
  np.testing.assert_array_equal(
      relevance_lib.relevant_table(rel, 4), [[1, 4], [-1, -1], [5, 0]])
  with pytest.raises(ValueError, match="query a has 2 relevant"):
    relevance_lib.relevant_table(rel, 1)


# Loads a relevance table under an address-space cap of `budget` bytes over
# the process's size after a warm-up load (imports, thread pools). pyarrow
# uses malloc and one thread, and malloc one arena, so the address space
# grows by what the loader allocates. JAX is never imported (RLIMIT_AS
# counts its reservations too).
_CAPPED = r"""
import resource, sys
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
pa.set_cpu_count(1)
pa.set_io_thread_count(1)
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance_tables

def vm_size():
  for line in open("/proc/self/status"):
    if line.startswith("VmSize:"):
      return int(line.split()[1]) * 1024

big, tiny, budget, num_products = sys.argv[1], sys.argv[2], *map(
    int, sys.argv[3:5])
ids = [str(i) for i in range(num_products)]
cat = catalog_lib.Catalog(
    name="m", ids=ids, titles=ids, category=np.zeros(len(ids), np.int32),
    category_names=[], split=["train"] * len(ids), images=ids, where=ids)
relevance_tables.load_relevance(tiny, cat)
limit = vm_size() + budget
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rel = relevance_tables.load_relevance(big, cat)
assert "jax" not in sys.modules
print(len(rel), rel.num_queries, int(rel.label.sum()))
"""


def test_a_million_pairs_load_under_a_memory_cap(tmp_path):
  """1M pairs within 112 MB of address space. Measured on this table: this
  loader peaks ~80 MB over the warm process, the row-by-row loop it
  replaced ~145 MB (its Python lists and set of pairs)."""
  rng = np.random.default_rng(0)
  n, num_queries, num_products = 1_000_000, 20_000, 20_000
  q = np.repeat(np.arange(num_queries), n // num_queries)
  k = np.tile(np.arange(n // num_queries), num_queries)
  p = (rng.integers(0, num_products, num_queries)[q] + k * 211) % num_products
  names = pa.array(np.arange(num_queries)).cast(pa.string())
  label = rng.integers(0, 3, n).astype(np.int8)
  table = pa.table({
      "query_id": pa.compute.binary_join_element_wise("q", names, "").take(q),
      "query": pa.compute.binary_join_element_wise("t ", names, "").take(q),
      "product_id": pa.array(p).cast(pa.string()),
      "label": label})
  pq.write_table(table, tmp_path / "big.parquet", row_group_size=1 << 18)
  pq.write_table(table.slice(0, 100), tmp_path / "tiny.parquet")
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
      [sys.executable, "-c", _CAPPED, str(tmp_path / "big.parquet"),
       str(tmp_path / "tiny.parquet"), str(112 << 20), str(num_products)],
      capture_output=True, text=True, cwd=root, env=dict(
          os.environ, PYTHONPATH=str(root), MALLOC_ARENA_MAX="1",
          ARROW_DEFAULT_MEMORY_POOL="system"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(n), str(num_queries), str(label.sum())]


@pytest.mark.parametrize("ids", [
    ["5", "7", "1000", "-3", "0"],                    # dense integers
    ["5", "7", str(10**17), "-3", str(-10**17)],      # sparse integers
    ["5", "007", "a", "7", ""],                       # any text
])
def test_product_lookup_agrees_with_index_of(ids):
  cat = _catalog(len(ids))
  cat.ids = ids
  asked = ["5", "7", "007", "-3", "-0", "0", "+5", " 5", "a", "", "999",
           str(10**17), str(-10**17), "1" * 25, "1000"]
  rows = relevance_lib.ProductIndex(cat).rows(pa.array(asked, pa.string()))
  assert rows.tolist() == [
      -1 if cat.index_of(a) is None else cat.index_of(a) for a in asked]


def test_a_repeated_catalog_id_finds_the_row_index_of_finds():
  cat = _catalog(4)
  cat.ids = ["5", "6", "5", "x"]
  for ids in (["5", "6", "5", "7"], ["5", "6", "5", "x"]):
    cat.ids, cat._index, cat._id_lookup = ids, None, None
    rows = relevance_lib.ProductIndex(cat).rows(pa.array(["5", "6", "7"]))
    assert rows.tolist() == [2, 1, ids.index("7") if "7" in ids else -1]


@pytest.mark.parametrize("values", [
    [" a ", "\x1cb\x1f", "\u3000c\xa0", "", None, "d\te", "\ufeffx"],
    [1, None, -7, 2**40],
    [1.0, 2.5, None, float("nan"), -0.0],
    [True, False, None],
])
def test_text_column_is_cell_text_of_each_cell(values):
  got = column_batches.text_column(pa.array(values)).to_pylist()
  assert got == [tables.cell_text(v) for v in values]
  got = column_batches.text_column(
      pa.array(values).dictionary_encode()).to_pylist()
  assert got == [tables.cell_text(v) for v in values]


def test_the_whitespace_pyarrow_trims_is_what_str_strip_strips():
  assert tables.PY_WHITESPACE == "".join(
      chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
