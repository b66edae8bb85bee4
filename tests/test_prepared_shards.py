"""Stage 2 over a prepared train relevance: every data shard reads only its
own shard files, and the batches and held-out metrics are those of reading
the table whole, with one process or two (jax.distributed, real processes:
tests/prepared_shards_worker.py)."""

import collections
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dashclip_jax import model as model_lib
from dashclip_jax.data import prepare
from dashclip_jax.data import prepared as prepared_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.train import sharding
from dashclip_jax.trainers import eval_inputs
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import stage2

HERE = pathlib.Path(__file__).resolve().parent
NUM_FILES = 4        # prepare --num_shards
TRAIN_BATCH = 8      # global stage-2 batch
EVAL_BATCH = 8       # global held-out eval batch
NUM_PRODUCTS = 60


def make_prepared(root: pathlib.Path) -> pathlib.Path:
  """A catalog (every 6th product in the test split) and 48 queries of 6
  judged products each, prepared into NUM_FILES shard files. Some queries'
  first pair names a test product: read against the train catalog it is
  skipped, so queries are numbered by their first *train* pair."""
  (root / "images").mkdir(parents=True)
  lines = ["id,title,category,image,split"]
  for i in range(NUM_PRODUCTS):
    (root / "images" / f"{i}.jpg").write_bytes(b"jpeg")
    lines.append(f"{i},Product {i},cat{i % 4},images/{i}.jpg,"
                 f"{'test' if i % 6 == 0 else 'train'}")
  (root / "catalog.csv").write_text("\n".join(lines) + "\n")
  rng = np.random.default_rng(0)
  rows = ["query_id,query,product_id,label"]
  pairs = [(q, p, l) for q in range(48) for p, l in zip(
      rng.choice(NUM_PRODUCTS, 6, replace=False), (2, 2, 1, 0, 0, 1))]
  # q7 has more relevant products than any other query: its shard's
  # `relevant_product_ids` are wider than the other's.
  pairs += [(7, p, 2) for p in range(NUM_PRODUCTS) if p % 6 and not any(
      q == 7 and p == x for q, x, _ in pairs)][:10]
  for k in rng.permutation(len(pairs)):  # Queries interleave in the table.
    q, p, l = pairs[k]
    rows.append(f"q{q},red shirt {q},{p},{l}")
  (root / "relevance_train.csv").write_text("\n".join(rows) + "\n")
  out = root / "prepared"
  prepare.prepare(str(root / "catalog.csv"), [str(root /
                                                  "relevance_train.csv")],
                  str(out), num_shards=NUM_FILES)
  return out


def data_config(path: str, num_shards: int, **kw) -> ml_collections.ConfigDict:
  cfg = config_files.config_module(
      pathlib.Path(__file__).parents[1] / "configs" / "common.py").data_block(
          "tiny")
  cfg.update(dict(dict(source="prepared", path=str(path),
                       num_shards=num_shards, heldout_query_fraction=0.3,
                       max_bad_fraction=0.5, image_size=32), **kw))
  return cfg


def csv_config(root: pathlib.Path) -> ml_collections.ConfigDict:
  """The same tables as CSV, read whole (today's path)."""
  cfg = data_config("", 0)
  cfg.update(dict(source="table", path=None,
                  catalog_path=str(root / "catalog.csv"),
                  relevance_train_path=str(root / "relevance_train.csv")))
  return cfg


def model_config():
  return model_lib.model_config("tiny")


def product_table(path) -> tuple[np.ndarray, np.ndarray]:
  """Fixed features (P, 3) of the train products (stage 2's frozen table)."""
  del path
  n = NUM_PRODUCTS - NUM_PRODUCTS // 6
  rng = np.random.default_rng(1)
  return rng.normal(size=(n, 3)).astype(np.float32), np.ones(n, bool)


def spy_on_shard_files(prepare_module, setattr_=setattr) -> list[str]:
  """-> the names of the shard files opened from now on, in order."""
  opened, real = [], prepare_module.pq.ParquetFile

  def spy(path, *args, **kwargs):
    name = os.path.basename(str(path))
    if name.startswith("part-"):
      opened.append(name)
    return real(path, *args, **kwargs)
  setattr_(prepare_module.pq, "ParquetFile", spy)
  return opened


def heldout_metrics(data, features, ok, mesh) -> dict[str, float]:
  """stage2.evaluate with a fixed embedding of the query tokens."""
  def embed_queries(params, batch):
    del params
    ids = batch["query_ids"].astype(jnp.float32)
    emb = jnp.stack([jnp.sin(ids @ jnp.arange(1.0, 1.0 + ids.shape[1])),
                     jnp.cos(ids[:, 1] * 0.37), jnp.sin(ids[:, 2] * 0.11)],
                    -1)
    return emb, batch["query_index"], batch["valid"]
  fns = (None, jax.jit(embed_queries,
                       out_shardings=sharding.replicated(mesh)),
         lambda params, f: f)
  rows = data.product_rows
  return stage2.evaluate(fns, {}, data, mesh,
                         features=(features[rows], ok[rows]))


def one_device_mesh():
  return sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)],
                            devices=jax.devices()[:1])


def train_batches(cfg, n=3):
  features, ok = product_table(None)
  it = inputs.stage2_train(cfg, model_config(), TRAIN_BATCH, seed=3,
                           frozen_tower=True, product_table=(features, ok))
  return [next(it) for _ in range(n)]


def _rows(rel):
  return collections.Counter(
      (rel.query_ids[q], p, l) for q, p, l in
      zip(rel.query.tolist(), rel.product.tolist(), rel.label.tolist()))


@pytest.fixture(autouse=True)
def fresh_reads():
  """Each test reads its data anew (inputs caches it per config)."""
  inputs._sources.cache_clear()  # pylint: disable=protected-access
  inputs._prepared_shards.cache_clear()  # pylint: disable=protected-access
  inputs._split.cache_clear()  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
  root = tmp_path_factory.mktemp("tables")
  return root, make_prepared(root)


def test_each_shard_reads_its_own_files_and_each_row_once(tables,
                                                          monkeypatch):
  root, prepared = tables
  opened = spy_on_shard_files(prepared_lib, monkeypatch.setattr)
  reads = {}
  real = prepared_lib.read_shard

  def read_shard(*args, shard, **kwargs):
    rel, pair = real(*args, shard=shard, **kwargs)
    reads[shard] = rel
    return rel, pair
  monkeypatch.setattr(prepared_lib, "read_shard", read_shard)
  cfg = data_config(prepared, 2)
  train_batches(cfg, 1)
  eval_inputs.stage2_eval(cfg, model_config(), EVAL_BATCH)
  # Shard s opened its files f % 2 == s once: for training and held-out
  # eval alike (nothing read the table whole).
  assert sorted(opened) == [prepared_lib.shard_name(f, NUM_FILES)
                            for f in range(NUM_FILES)]
  assert set(reads) == {(0, 2), (1, 2)}
  whole = inputs.load_sources(csv_config(root)).train_relevance
  got = _rows(reads[(0, 2)]) + _rows(reads[(1, 2)])
  assert got == _rows(whole) and sum(got.values()) == len(whole)
  # A query's rows are in one shard: the one of the documented hash.
  for s in (0, 1):
    ids = reads[(s, 2)].query_ids
    assert (relevance_lib.query_shards(ids, 2) == s).all()


def test_one_process_two_shards_equals_the_whole_table_eval(tables):
  """Held-out eval from shard reading == today's whole-table read of the
  same tables (CSV): same queries, products, labels, metrics."""
  root, prepared = tables
  mesh, (features, ok) = one_device_mesh(), product_table(None)
  got = eval_inputs.stage2_eval(data_config(prepared, 2), model_config(),
                                EVAL_BATCH)
  want = eval_inputs.stage2_eval(csv_config(root), model_config(), EVAL_BATCH)
  assert got.query_ids == want.query_ids and len(got.query_ids) >= 8
  np.testing.assert_array_equal(got.product_rows, want.product_rows)
  for f in ("indptr", "product", "label"):
    np.testing.assert_array_equal(getattr(got.labels, f),
                                  getattr(want.labels, f))
  for a, b in zip(got.query_batches, want.query_batches):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  m_got = heldout_metrics(got, features, ok, mesh)
  m_want = heldout_metrics(want, features, ok, mesh)
  assert m_got == m_want and 0 < m_got["eval/ndcg@10"] < 1


def test_one_shard_trains_exactly_as_the_csv(tables):
  """num_shards=1 reads every shard file: the batches of today's CSV path."""
  root, prepared = tables
  got, want = train_batches(data_config(prepared, 1)), train_batches(
      csv_config(root))
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_relevance_path_naming_a_prepared_table_is_read_by_shard(tables):
  root, prepared = tables
  cfg = csv_config(root)
  cfg.update(dict(num_shards=2,
                  relevance_train_path=str(prepared / "relevance_train")))
  src = inputs.load_sources(cfg)
  assert src.train_relevance is None
  assert src.train_table == str(prepared / "relevance_train")
  got = eval_inputs.stage2_eval(cfg, model_config(), EVAL_BATCH)
  want = eval_inputs.stage2_eval(csv_config(root), model_config(), EVAL_BATCH)
  assert got.query_ids == want.query_ids
  np.testing.assert_array_equal(got.labels.product, want.labels.product)


def test_shard_count_must_divide_the_prepared_files(tables):
  _, prepared = tables
  with pytest.raises(config_files.ConfigError,
                     match=r"num_shards=3 does not divide the 4 shard files"):
    train_batches(data_config(prepared, 3), 1)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_read_their_shards_and_match_one_process(tables,
                                                               tmp_path):
  """2 real processes (data.num_shards=2, one shard each) == 1 process with
  num_shards=2: the global batch is process 0's rows then process 1's, the
  held-out eval and its metrics are the same, and each process opened only
  its own shard files."""
  _, prepared = tables
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "prepared_shards_worker.py"),
       str(prepared), str(tmp_path / f"p{i}"), "2", f"localhost:{port}",
       "2", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    for i, p in enumerate(procs):
      _, err = p.communicate(timeout=300)
      assert p.returncode == 0, f"process {i}: {err[-3000:]}"
  finally:  # One failed: the other would wait for it in a collective.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()

  cfg = data_config(prepared, 2)
  want_batches = train_batches(cfg)
  want = eval_inputs.stage2_eval(cfg, model_config(), EVAL_BATCH)
  want_metrics = heldout_metrics(want, *product_table(None), one_device_mesh())
  for i in range(2):
    out = json.loads((tmp_path / f"p{i}.json").read_text())
    assert out["opened"] == [prepared_lib.shard_name(f, NUM_FILES)
                             for f in range(i, NUM_FILES, 2)]
    assert out["query_ids"] == want.query_ids
    assert out["metrics"] == pytest.approx(want_metrics, rel=0, abs=1e-12)
  parts = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
  for k, batch in enumerate(want_batches):
    for key, value in batch.items():
      np.testing.assert_array_equal(
          np.concatenate([p[f"batch{k}/{key}"] for p in parts]), value,
          err_msg=f"batch {k} {key}")
  for p in parts:
    np.testing.assert_array_equal(p["eval/product_rows"], want.product_rows)
    np.testing.assert_array_equal(p["eval/indptr"], want.labels.indptr)
    np.testing.assert_array_equal(p["eval/product"], want.labels.product)
    np.testing.assert_array_equal(p["eval/label"], want.labels.label)
