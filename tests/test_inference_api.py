"""The inference conveniences: per-call batch size, progress bars, Parquet
output in the export's layout, and search over an embedding export."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

import dashclip_jax
import helpers
from dashclip_jax import index as index_lib

TITLES = ["red cotton shirt", "blue jeans for men", "steel watch",
          "black leather belt", "beach sandals", "wool scarf", "green cap"]
QUERIES = ["shirt for men", "watch", "sandals", "belt", "warm scarf"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return helpers.save_one_layer_tiny_model(
      tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def encoder(model_dir):
  return dashclip_jax.load(model_dir, batch_size=4)


def _images(n):
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (30 + 5 * i, 40, 3), dtype=np.uint8)
          for i in range(n)]


def _direct(encoder, images, texts):
  """Each encoder applied by hand to all rows at once (no batching)."""
  module, params = encoder.module, {"params": encoder.params}
  pixels = encoder.preprocess_images(images)
  ids, mask = encoder.tokenize(texts)
  call = lambda fn, *args: np.asarray(module.apply(params, *args, method=fn))
  return {
      "encode_image": call(lambda m, x: m.encode_image(x)[0], pixels),
      "encode_text": call(lambda m, i, k: m.encode_text(i, k)[0], ids, mask),
      "encode_query": call(lambda m, i, k: m.encode_query(i, k)[0], ids, mask),
      "encode_product": call(lambda m, x, i, k: m.encode_product(x, i, k)[0],
                             pixels, ids, mask),
      "encode_product_text": call(
          lambda m, i, k: m.encode_product_text(i, k)[0], ids, mask),
      "itm_score": call(lambda m, x, i, k: jax.nn.softmax(
          m.itm_logits(i, k, m.img(x))[0], axis=-1)[:, 1], pixels, ids, mask),
  }


def _call(encoder, name, images, texts, **kw):
  args = {"encode_image": (images,), "encode_product": (images, texts),
          "itm_score": (images, texts)}.get(name, (texts,))
  return getattr(encoder, name)(*args, **kw)


def test_batch_sizes_equal_default_and_unbatched_apply(encoder):
  images = _images(len(TITLES))
  direct = _direct(encoder, images, TITLES)
  for name, want in direct.items():
    default = _call(encoder, name, images, TITLES)  # 4: two batches, padded.
    np.testing.assert_allclose(default, want, atol=1e-6, err_msg=name)
    for size in (3, 8):  # Three batches with a padded tail; one padded batch.
      got = _call(encoder, name, images, TITLES, batch_size=size)
      assert got.shape == want.shape, name
      np.testing.assert_allclose(got, default, atol=1e-6,
                                 err_msg=f"{name} batch_size={size}")
  assert not np.allclose(direct["encode_product"], direct["encode_image"],
                         atol=1e-3)  # The six really are different encoders.


def test_a_call_batch_size_compiles_once_more(model_dir):
  encoder = dashclip_jax.load(model_dir, batch_size=4)
  encoder.encode_query(QUERIES)
  for n in (1, 4, 5):  # All ragged or whole runs of 3 share one shape.
    assert encoder.encode_query(QUERIES[:n], batch_size=3).shape == (n, 16)
  assert encoder._query._cache_size() == 2  # pylint: disable=protected-access
  assert encoder.encode_query([], batch_size=3).shape == (0, 16)
  assert encoder.itm_score([], []).shape == (0,)
  for bad in (0, -2, 2.5, True):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
      encoder.encode_query(QUERIES, batch_size=bad)


def test_show_progress_draws_a_tqdm_bar_on_stderr(encoder, capsys):
  encoder.encode_query(QUERIES * 2, batch_size=4)
  quiet = capsys.readouterr()
  assert "encode_query" not in quiet.err and "3/3" not in quiet.err
  encoder.encode_query(QUERIES * 2, batch_size=4, show_progress=True)
  out = capsys.readouterr()
  assert "encode_query" in out.err and "3/3" in out.err and "batch" in out.err
  assert out.out == ""
  encoder.encode_product(_images(2), TITLES[:2], show_progress=True)
  assert "encode_product" in capsys.readouterr().err


def _read(path):
  table = pq.read_table(path)
  return table, index_lib.table_embeddings(table)


def test_parquet_output_round_trips_in_row_groups(encoder, tmp_path):
  images, ids = _images(len(TITLES)), [f"p{i}" for i in range(len(TITLES))]
  categories = ["tops", "jeans", "watches", "belts", "shoes", "scarves", "caps"]
  path = encoder.encode_products_to_parquet(
      str(tmp_path / "out" / "products.parquet"), ids, images, TITLES,
      categories=categories, batch_size=3)
  assert pq.ParquetFile(path).metadata.num_row_groups == 3  # 3 + 3 + 1 rows.
  table, emb = _read(path)
  assert table.column("id").to_pylist() == ids
  assert table.column("title").to_pylist() == TITLES
  assert table.column("category").to_pylist() == categories
  np.testing.assert_allclose(emb, encoder.encode_product(images, TITLES),
                             atol=1e-6)
  # The export's own product part has exactly this layout.
  index_lib.export_embeddings(str(tmp_path / "export"), ids, TITLES, emb,
                               categories=categories, index_kind="flat")
  part = tmp_path / "export" / index_lib.part_file(0, 1)
  assert pq.read_schema(path).equals(pq.read_schema(part))
  # Without images: the title-only product embedding; queries likewise.
  path = encoder.encode_products_to_parquet(
      str(tmp_path / "titles.parquet"), ids, None, TITLES)
  assert pq.ParquetFile(path).metadata.num_row_groups == 2
  np.testing.assert_array_equal(_read(path)[1],
                                encoder.encode_product_text(TITLES))
  path = encoder.encode_queries_to_parquet(
      str(tmp_path / "queries.parquet"), range(5), QUERIES, batch_size=2)
  table, emb = _read(path)
  assert pq.ParquetFile(path).metadata.num_row_groups == 3
  assert table.column_names == ["id", "text", "embedding"]
  assert table.column("id").to_pylist() == ["0", "1", "2", "3", "4"]
  assert table.column("text").to_pylist() == QUERIES
  np.testing.assert_allclose(emb, encoder.encode_query(QUERIES), atol=1e-6)


def test_parquet_output_errors_leave_no_file(encoder, tmp_path):
  path = str(tmp_path / "q.parquet")
  with pytest.raises(ValueError, match="^4 ids for 5 texts$"):
    encoder.encode_queries_to_parquet(path, ["a", "b", "c", "d"], QUERIES)
  with pytest.raises(ValueError, match="ids must be unique: 'b' appears 2 "):
    encoder.encode_queries_to_parquet(path, ["a", "b", "c", "b", "e"],
                                      QUERIES)
  with pytest.raises(ValueError, match="3 category values for 2 ids"):
    encoder.encode_products_to_parquet(path, ["a", "b"], None, TITLES[:2],
                                       categories=["x", "y", "z"])
  # A bad image in the third batch: the rows before it are not left behind.
  images = _images(5)
  images[4] = images[4].astype(np.float32)
  with pytest.raises(TypeError, match="uint8"):
    encoder.encode_products_to_parquet(path, list("abcde"), images,
                                       TITLES[:5], batch_size=2)
  assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def export_dir(encoder, tmp_path_factory):
  """A product export written by the Parquet path + the export's finish."""
  out = str(tmp_path_factory.mktemp("export"))
  titles = [f"{t} {n}" for n in ("one", "two") for t in TITLES]
  images = _images(len(titles))
  encoder.encode_products_to_parquet(
      os.path.join(out, index_lib.part_file(0, 1)),
      [f"p{i}" for i in range(len(titles))], images, titles)
  return index_lib.finish_export(out, 1)  # The default HNSW index.


def test_search_equals_brute_force_cosine_ranking(encoder, export_dir):
  index = index_lib.ExportedIndex(export_dir)
  products = np.load(os.path.join(export_dir, "products.npy"))
  queries = encoder.encode_query(QUERIES).astype(np.float64)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  cosine = unit(queries) @ unit(products.astype(np.float64)).T
  k = 5
  got = encoder.search(QUERIES, k=k, index=export_dir)
  for row, hits in zip(cosine, got):
    order = np.argsort(-row, kind="stable")[:k]
    # Distinct scores, so the order is the ranking's, not a tie's.
    assert np.diff(row[order]).max() < -1e-6
    assert [h.product_id for h in hits] == [index.ids[j] for j in order]
    assert [h.title for h in hits] == [index.titles[j] for j in order]
    np.testing.assert_allclose([h.score for h in hits], row[order], atol=1e-6)
  assert encoder.attach_index(export_dir) is encoder
  again = encoder.search(QUERIES, k=k, batch_size=2)  # The attached index.
  assert [[h[:2] for h in hits] for hits in again] == [
      [h[:2] for h in hits] for hits in got]
  np.testing.assert_allclose([[h.score for h in hits] for hits in again],
                             [[h.score for h in hits] for hits in got],
                             atol=1e-6)


def test_search_errors_name_the_export(model_dir, export_dir, tmp_path):
  encoder = dashclip_jax.load(model_dir)
  with pytest.raises(ValueError, match="no product index: pass index="):
    encoder.search(QUERIES)
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError,
                     match=f"^embedding export not found: {missing}$"):
    encoder.attach_index(missing)
  with pytest.raises(FileNotFoundError, match="manifest.json missing"):
    encoder.search(QUERIES, index=str(tmp_path))
  other = index_lib.export_embeddings(
      str(tmp_path / "dim8"), ["a", "b"], ["x", "y"],
      np.eye(2, 8, dtype=np.float32), index_kind="flat")
  with pytest.raises(ValueError, match=(
      f"^embedding export {other} holds 8-d embeddings but this model's are "
      "16-d; export")):
    encoder.attach_index(other)
  assert encoder.index is None
  with pytest.raises(ValueError, match="k must be at least 1, got 0"):
    encoder.search(QUERIES, k=0, index=export_dir)
  # The CLI searches through the same method: the same check, one line.
  out = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.search",
       f"--export_dir={other}", f"--checkpoint={model_dir}", "--query=shirt"],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
      text=True, timeout=300, check=False,
      env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"search: error: --checkpoint={model_dir}: embedding export {other} "
      "holds 8-d embeddings but this model's are 16-d; export the catalog "
      "with this model")


def test_search_refuses_queries_without_words(encoder, export_dir):
  # Each used to rank the whole catalog by the encoder's bias alone.
  for queries, culprit in (([""], "query 0 ('')"),
                           (["watch", " \t "], "query 1 (' \\t ')"),
                           (["...!", ""], "query 0 ('...!')")):
    with pytest.raises(ValueError) as e:
      encoder.search(queries, index=export_dir)
    assert str(e.value).startswith(f"{culprit} has no words to search for")
  with pytest.raises(ValueError, match="2 queries in all"):
    encoder.search(["...!", ""], index=export_dir)
  with pytest.raises(ValueError, match="not the single str 'watch'"):
    encoder.search("watch", index=export_dir)
  # The CLI: one line, before the model or the export is loaded.
  for query in ("", "\t"):
    out = subprocess.run(
        [sys.executable, "-m", "dashclip_jax.evaluation.search",
         f"--export_dir={export_dir}", "--checkpoint=/no/such/model",
         f"--query={query}"],
        cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
        text=True, timeout=300, check=False,
        env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu"))
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f"search: error: --query: query 0 ({query!r}) has no words to "
        "search for; give each query some text"], out.stderr
