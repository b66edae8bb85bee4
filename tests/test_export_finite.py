"""Non-finite embeddings never reach an export (dashclip_jax/index.py).

A NaN row used to be indexed: a search for k = N products then listed
fewer, and the missing products went unnamed. Writers and finish_export
refuse such rows in one line naming their ids.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashclip_jax import index as index_lib

IDS = [f"p{i}" for i in range(6)]
TITLES = [f"title {i}" for i in range(6)]


def _emb(n=6, e=4, seed=0):
  emb = np.random.default_rng(seed).normal(size=(n, e)).astype(np.float32)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _one_line(e):
  assert "\n" not in str(e)
  return str(e)


def test_export_refuses_nan_rows_and_names_them(tmp_path):
  emb = _emb()
  emb[1] = np.nan  # All NaN.
  emb[4, 2] = np.nan  # Partly NaN.
  with pytest.raises(index_lib.NonFiniteEmbeddingError) as e:
    index_lib.export_embeddings(str(tmp_path / "x"), IDS, TITLES, emb,
                                 index_kind="flat")
  msg = _one_line(e.value)
  assert "2 of 6 product embeddings" in msg and "p1, p4" in msg
  assert not os.path.exists(tmp_path / "x" / index_lib.MANIFEST)


def test_query_writer_refuses_infinite_rows(tmp_path):
  emb = _emb(3)
  emb[2, 0] = np.inf
  with pytest.raises(index_lib.NonFiniteEmbeddingError, match="query ids q2"):
    index_lib.write_queries(str(tmp_path), ["q0", "q1", "q2"],
                             ["a", "b", "c"], emb)


def test_finish_export_refuses_a_nan_part_written_elsewhere(tmp_path):
  emb = _emb()
  emb[3] = np.nan
  # A part written without the export's writers (e.g. another tool).
  table = pa.table({
      "id": IDS, "title": TITLES,
      "embedding": pa.FixedSizeListArray.from_arrays(
          pa.array(emb.reshape(-1), pa.float32()), 4)})
  pq.write_table(table, tmp_path / index_lib.part_file(0, 1))
  with pytest.raises(index_lib.NonFiniteEmbeddingError) as e:
    index_lib.finish_export(str(tmp_path), 1, index_kind="flat")
  msg = _one_line(e.value)
  assert msg.startswith(f"{tmp_path}: 1 of 6 product") and "ids p3)" in msg
  assert not os.path.exists(tmp_path / index_lib.INDEX_FILE)


def test_finite_export_finds_every_product(tmp_path):
  out = index_lib.export_embeddings(str(tmp_path), IDS, TITLES, _emb(),
                                     index_kind="flat")
  hits = index_lib.ExportedIndex(out).search(_emb(1, seed=1), k=len(IDS))
  assert sorted(h.product_id for h in hits[0]) == IDS
