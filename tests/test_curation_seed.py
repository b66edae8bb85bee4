"""Seed labels in: bad rows counted and named, splits, hash; candidates."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from dashclip_jax.curation import mining
from dashclip_jax.curation import seed as seed_lib
from dashclip_jax.data import bad_records
from dashclip_jax.data import synthetic

SYNTHETIC = dict(num_products=96, num_train_queries=40, num_test_queries=4,
                 image_size=32, seed=0, bad_images=0)  # configs/curate.py:tiny


def _write_seed(path, n_good=40):
  data = synthetic.synthetic_data(**SYNTHETIC)
  rel, catalog = data.train, data.train_catalog
  rows = [(rel.query_ids[q], rel.queries[q], catalog.ids[p], int(l))
          for q, p, l in list(zip(rel.query, rel.product, rel.label))[:n_good]]
  rows.insert(5, ("sq99990", "red shirt", "no-such-product", 2))
  rows.insert(9, ("sq99991", "", catalog.ids[0], 1))
  rows.insert(12, ("sq99992", "blue shirt", catalog.ids[1], 7))
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("query_id", "query", "product_id", "label"))
    w.writerows(rows)
  return catalog


def test_planted_bad_seed_rows_are_counted_and_named(tmp_path):
  path = str(tmp_path / "seed.csv")
  catalog = _write_seed(path)
  data = seed_lib.from_files(path, "", catalog, max_bad_fraction=0.1)
  assert len(data.seed) == 40
  for reason in ("unknown product: 1", "empty query: 1",
                 "label outside {0,1,2}: 1"):
    assert reason in data.bad
  # Named by file and line (header = line 1; planted at rows 5, 9, 12).
  for culprit in ("seed.csv line 7: unknown product (product_id "
                  "'no-such-product')", "seed.csv line 11: empty query",
                  "seed.csv line 14: label outside {0,1,2} (label '7')"):
    assert culprit in data.bad
  with pytest.raises(bad_records.BadDataError,
                     match="skipped 3 of 43 .*max_bad_fraction=0.05"):
    seed_lib.from_files(path, "", catalog, max_bad_fraction=0.05)


def test_bad_seed_rows_stop_the_job_with_one_line(tmp_path):
  path = str(tmp_path / "seed.csv")
  _write_seed(path)
  r = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.curation.main",
       "--config=configs/curate.py:tiny", f"--workdir={tmp_path / 'w'}",
       f"--config.seed_data.path={path}"],
      capture_output=True, text=True, timeout=600, cwd=os.getcwd())
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("dashclip_jax.curation.main: error: ")
  assert "unknown product" in last and "max_bad_fraction=0.01" in last
  assert "Traceback" not in r.stderr


def test_split_is_query_disjoint_and_the_hash_canonical():
  data = synthetic.synthetic_data(**SYNTHETIC)
  sd = seed_lib.from_split(data.train, 0.3)
  assert not set(sd.seed.queries) & set(sd.unlabelled_queries)
  assert sd.seed.num_queries + len(sd.unlabelled_queries) == (
      data.train.num_queries)
  assert sd.truth.num_queries == len(sd.unlabelled_queries)
  assert 0.15 < sd.seed.num_queries / data.train.num_queries < 0.45
  cat = data.train_catalog
  order = np.random.default_rng(0).permutation(len(sd.seed))
  shuffled = type(sd.seed)(**{**sd.seed.__dict__,
                              "query": sd.seed.query[order],
                              "product": sd.seed.product[order],
                              "label": sd.seed.label[order]})
  assert seed_lib.digest(shuffled, cat) == seed_lib.digest(sd.seed, cat)
  relabel = sd.seed.label.copy()
  relabel[0] = (relabel[0] + 1) % 3
  changed = type(sd.seed)(**{**sd.seed.__dict__, "label": relabel})
  assert seed_lib.digest(changed, cat) != seed_lib.digest(sd.seed, cat)


def test_candidates_are_knn_plus_random_without_labelled_or_repeats():
  rng = np.random.default_rng(0)
  products = rng.normal(size=(30, 8)).astype(np.float32)
  queries = products[[3, 7]] + 0.01  # Query q is nearest product 3, 7.
  labelled = np.array([[0, 3]])  # (query, product) pairs.
  out = mining.candidates(queries, products, k=4, num_random=5, seed=0,
                          labelled=labelled)
  for q in (0, 1):
    rows = out["product"][out["query"] == q]
    src = out["source"][out["query"] == q]
    assert len(set(rows.tolist())) == len(rows)
    assert list(src).count("random") == 5
  assert 3 not in out["product"][out["query"] == 0]  # Labelled: left out.
  assert out["product"][out["query"] == 1][0] == 7   # Its nearest first.
  assert list(out["source"][out["query"] == 0]).count("knn") == 3
