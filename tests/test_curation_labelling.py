"""Labelling at scale: kill -9 mid-run, rerun, same files; no shard twice."""

import os
import subprocess
import sys

from dashclip_jax.curation import label_shards
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib

# Labels 72 pairs of the tiny synthetic catalog in shards of 16 (5 shards)
# with a saved teacher; `kill_at` >= 0 kills the process with SIGKILL once
# that shard is written under its temporary name, before its rename.
SCRIPT = r"""
import os, signal, sys
import numpy as np
from dashclip_jax.curation import label_shards
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.data import synthetic

def run(teacher_dir, out_dir, kill_at):
  data = synthetic.synthetic_data(num_products=40, num_train_queries=8,
                                  num_test_queries=2, image_size=32)
  rel, catalog = data.train, data.train_catalog
  n = 72
  query = np.arange(n) % rel.num_queries
  products = (np.arange(n) * 7) % len(catalog)
  def kill(shard, tmp):
    if shard == int(kill_at):
      os.kill(os.getpid(), signal.SIGKILL)
  label_shards.label_pairs(
      teacher_lib.load_teacher(teacher_dir, batch_size=8), catalog,
      [rel.query_ids[q] for q in query], [rel.queries[q] for q in query],
      products, out_dir, shard_size=16, batch_size=8, progress=False,
      before_commit=kill)
"""


def _subprocess(*args):
  return subprocess.run(
      [sys.executable, "-c", SCRIPT + "\nimport logging\nlogging.basicConfig("
       "level=logging.INFO, force=True)\nrun(*sys.argv[1:])",
       *map(str, args)],
      capture_output=True, text=True, timeout=600, cwd=os.getcwd())


def _files(directory):
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


def test_kill_mid_labelling_then_rerun_gives_the_same_files(tmp_path):
  config, params, _ = teacher_lib.initial_params(
      "text", "", size="tiny", fields=("title", "category"), max_length=16,
      query_max_length=6, image_size=0, dropout=0.0, seed=0)
  teacher_dir = tmp_path / "teacher"
  teacher_lib.save_teacher(str(teacher_dir), config, params, {})
  whole, resumed = tmp_path / "whole", tmp_path / "resumed"
  namespace = {}
  exec(SCRIPT, namespace)  # pylint: disable=exec-used
  namespace["run"](str(teacher_dir), str(whole), -1)

  killed = _subprocess(teacher_dir, resumed, 2)
  assert killed.returncode == -9, killed.stderr[-2000:]
  left = sorted(os.listdir(resumed))
  assert [n for n in left if n.endswith(".parquet")] == [
      "part-00000-of-00005.parquet", "part-00001-of-00005.parquet"]
  assert any(".parquet.tmp" in n for n in left)  # Shard 2, never renamed.
  before = {n: os.stat(resumed / n) for n in left if n.endswith(".parquet")}

  rerun = _subprocess(teacher_dir, resumed, -1)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "2 of this process's 5 shards already written" in rerun.stderr
  for name, st in before.items():  # Not labelled again, not rewritten.
    now = os.stat(resumed / name)
    assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
  assert _files(resumed) == _files(whole)
  assert len([n for n in _files(whole) if n.endswith(".parquet")]) == 5


def test_pairs_digest_is_the_sha256_of_the_pair_lines():
  """The vectorised digest hashes exactly "query_id\\tproduct_id\\n" per pair
  (what manifests written before it hold), across chunk boundaries."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  queries = [f"q{i} é,\"x" for i in rng.integers(0, 50, 101)]
  products = np.array([f"p{i}" for i in rng.integers(0, 50, 101)], object)
  want = hashlib.sha256("".join(
      f"{q}\t{p}\n" for q, p in zip(queries, products)).encode()).hexdigest()
  assert label_shards.pairs_digest(queries, products) == want
  assert label_shards.pairs_digest(queries[:1], products[:1]) == hashlib.sha256(
      f"{queries[0]}\t{products[0]}\n".encode()).hexdigest()
  for chunk in (1, 7, 100):
    assert label_shards.pairs_digest(queries, products, chunk=chunk) == want


def test_expanded_csv_reads_back_with_commas_quotes_and_newlines(tmp_path):
  import csv  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  rows = {"query_id": ["a", "b,1", "c"],
          "query": ['red "slim" jeans', "navy, shirt", "two\nlines é"],
          "product_id": ["10", "11", "12"], "label": [2, 0, 1]}
  table = pa.table(dict(rows, p0=[0.0] * 3, extra=["x"] * 3))
  path = label_shards.write_expanded(table, str(tmp_path / "exp"), {"n": 3})
  with open(path, newline="", encoding="utf-8") as f:
    got = list(csv.reader(f))
  assert got[0] == ["query_id", "query", "product_id", "label"]
  assert got[1:] == [list(map(str, r)) for r in zip(*rows.values())]


def test_check_manifest_writes_then_refuses_other_settings(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from dashclip_jax.runtime.config_files import ConfigError  # pylint: disable=g-import-not-at-top
  out = tmp_path / "gen"
  label_shards.check_manifest(str(out), {"seed": 1, "writer": "template"},
                              name="generate.json", what="queries generated")
  assert json.loads((out / "generate.json").read_text()) == {
      "seed": 1, "writer": "template"}
  label_shards.check_manifest(str(out), {"seed": 1, "writer": "template"},
                              name="generate.json")  # Same settings: resumes.
  with pytest.raises(ConfigError, match=r"queries generated with other seed "
                     r"\(seed: 1\)"):
    label_shards.check_manifest(str(out), {"seed": 2, "writer": "template"},
                                name="generate.json", what="queries generated")


def _rows(query_ids, product_ids, labels):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  n = len(labels)
  return pa.table({"query_id": query_ids, "query": ["q"] * n,
                   "product_id": product_ids,
                   "label": pa.array(labels, pa.int8()),
                   "p0": [0.0] * n, "p1": [0.0] * n, "p2": [0.0] * n,
                   "label_source": ["teacher"] * n, "teacher_id": ["t"] * n})


def test_aisle_policy_relabels_positives_outside_the_label2_aisles():
  aisle_of = {"1": "shoes", "2": "shoes", "3": "bags", "4": "belts"}
  # Query a means shoes and belts (its label 2s): its label-1 bag goes to
  # 0, its label-1 shoe stays. Query b has no label 2: left as it is. In
  # query c the bag is label 2, so c's label-1 bag stays, and its shoe
  # (label 1, no label-2 shoe in c) goes to 0.
  rows = _rows(["a", "a", "a", "a", "b", "b", "c", "c"],
               ["1", "2", "3", "4", "1", "3", "3", "1"],
               [2, 1, 1, 2, 1, 1, 2, 1])
  got, n = label_shards.aisle_consistent(rows, aisle_of)
  assert got["label"].to_pylist() == [2, 1, 0, 2, 1, 1, 2, 0] and n == 2
  assert got.drop(["label"]).equals(rows.drop(["label"]))
  # Split into chunks (as read from shards): the same answer.
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  chunked = pa.concat_tables([rows.slice(0, 3), rows.slice(3)])
  assert label_shards.aisle_consistent(chunked, aisle_of)[0].equals(got)
  empty = rows.slice(0, 0)
  assert label_shards.aisle_consistent(empty, aisle_of) == (empty, 0)


def test_aisle_field_must_be_a_catalog_column():
  import pytest  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from dashclip_jax.runtime.config_files import ConfigError  # pylint: disable=g-import-not-at-top
  catalog = synthetic.synthetic_data(num_products=24, num_train_queries=4,
                                     image_size=8).train_catalog
  by_category = label_shards.product_aisles(catalog, "category")
  i = 0
  assert by_category[catalog.ids[i]] == catalog.category_names[
      catalog.category[i]]
  assert label_shards.product_aisles(catalog, "group")[catalog.ids[i]] == (
      catalog.attributes["group"][i])
  with pytest.raises(ConfigError, match=r"label.aisle_field: 'aisle' is not "
                     r"a column of .* \(it has: category, brand, colour"):
    label_shards.product_aisles(catalog, "aisle")
