"""The embedding tower's export reading, the ranking job end to end on the
tiny synthetic catalog, and its one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dashclip_jax import index as index_lib
from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import embeddings
from dashclip_jax.ranking import pipeline
from dashclip_jax.runtime import config_files


@pytest.fixture(scope="module")
def data():
  config = config_files.load_config("configs/ranking.py", "tiny")
  return catalog_data.load(config)


def attribute_export(out_dir, data, noise=1.0, seed=0, products=None,
                     query_ids=None):
  """An export whose product embedding sums one random vector per
  attribute value (plus noise) and whose query embedding is the mean of its
  label-2 products': a model that knows the catalog, for the plumbing."""
  rng = np.random.default_rng(seed)
  dim = 16
  vectors = {a: rng.normal(size=(len(data.names[a]), dim))
             for a in catalog_data.ATTRIBUTES}
  emb = sum(vectors[a][data.codes[a]] for a in catalog_data.ATTRIBUTES)
  emb = emb + noise * rng.normal(size=emb.shape)
  queries = np.stack([emb[row == 2].mean(0) for row in data.labels])
  queries = queries + noise * rng.normal(size=queries.shape)
  rows = np.arange(data.num_products) if products is None else products
  index_lib.export_embeddings(
      str(out_dir), [data.catalog.ids[i] for i in rows],
      [data.catalog.titles[i] for i in rows], emb[rows].astype(np.float32),
      query_ids=query_ids or data.query_ids, query_texts=data.queries,
      query_emb=queries.astype(np.float32), index_kind="flat")
  return emb.astype(np.float32), queries.astype(np.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_tower_reads_the_export_by_product_id(data, tmp_path):
  shuffled = np.random.default_rng(0).permutation(data.num_products)
  emb, queries = attribute_export(tmp_path / "a", data, products=shuffled)
  tables = embeddings.read_tables(str(tmp_path / "a"), data)
  np.testing.assert_allclose(tables.product, _unit(emb), rtol=1e-6)
  np.testing.assert_allclose(tables.query, _unit(queries), rtol=1e-6)
  # Other query ids (another export of the same texts): matched by text.
  attribute_export(tmp_path / "b", data, query_ids=[
      f"other{i}" for i in range(len(data.queries))])
  np.testing.assert_allclose(
      embeddings.read_tables(str(tmp_path / "b"), data).query,
      _unit(queries), rtol=1e-6)


def test_missing_product_id_is_a_clear_error(data, tmp_path):
  keep = np.arange(1, data.num_products)  # Product 0 is not exported.
  attribute_export(tmp_path, data, products=keep)
  with pytest.raises(embeddings.MissingEmbeddingError) as e:
    embeddings.read_tables(str(tmp_path), data)
  assert str(e.value) == (
      f"embedding export {tmp_path} has no embedding for product id "
      f"{data.catalog.ids[0]} (1 of {data.num_products} missing)")


def test_tower_names_and_sources():
  config = config_files.load_config(
      "configs/ranking.py", "tiny",
      {"embeddings": "/x", "alternatives": "minilm, init=model:/m,o=/e"})
  assert pipeline.towers(config) == {"dashclip": "/x", "minilm": "minilm",
                                     "init": "model:/m", "o": "/e"}
  assert [k for k, _, _ in pipeline.plan(config, ["dashclip", "minilm"])] == [
      "baseline", "tower:dashclip", "tower:minilm", "single:dashclip"]
  with pytest.raises(config_files.ConfigError, match="'bad'"):
    embeddings.parse_tower("bad")


def _main(*args):
  # One device: the job's mesh is tested in test_ranking_models.py; 8 fake
  # devices here would only add collectives that a loaded machine stalls
  # past XLA's 40 s rendezvous limit.
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(
      [sys.executable, "-m", "dashclip_jax.ranking.main", *args], env=env,
      capture_output=True, text=True, timeout=300, check=False)


def test_ranking_job_tiny_end_to_end(data, tmp_path):
  attribute_export(tmp_path / "export", data)
  run = _main("--config=configs/ranking.py:tiny",
              f"--config.embeddings={tmp_path / 'export'}",
              f"--config.cache_dir={tmp_path / 'cache'}",
              f"--workdir={tmp_path / 'run'}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith("ranking (AUC on the next week")
  for name in ("report.md", "metrics.json", "roc.png", "config.json"):
    assert os.path.isfile(tmp_path / "run" / name), name
  with open(tmp_path / "run" / "metrics.json") as f:
    saved = json.load(f)
  results = saved["results"]
  assert set(results) == {"all", "history", "no_history", "history_gain"}
  models = results["all"]["models"]
  assert list(models) == ["baseline", "tower:dashclip", "single:dashclip",
                          "oracle"]
  for name, m in models.items():
    assert 0.5 < m["auc"] < 1 and m["auc_ci"][0] <= m["auc"] <= m[
        "auc_ci"][1], name
  # The export knows the catalog: its tower must add to the baseline.
  assert models["tower:dashclip"]["auc"] > models["baseline"]["auc"]
  assert "delta_auc" in models["tower:dashclip"]
  assert "tower:dashclip vs single:dashclip" in results["all"]["comparisons"]
  assert not saved["setup"]["simulation_cached"]
  assert os.path.isfile(os.path.join(saved["setup"]["simulation"],
                                     "sessions.npz"))
  report = open(tmp_path / "run" / "report.md").read()
  assert "| DCN + dashclip tower |" in report and "p=" in report


def test_entry_point_errors_are_one_line(data, tmp_path):
  bad = _main("--config=configs/ranking.py:tiny", "--config.colour=1",
              f"--workdir={tmp_path}")
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "dashclip_jax.ranking.main: error: --config.colour: no such config key")
  none = _main("--config=configs/ranking.py:tiny", f"--workdir={tmp_path}")
  assert none.stderr.strip().splitlines()[-1] == (
      "dashclip_jax.ranking.main: error: --config.embeddings is required: an "
      "embedding export directory (dashclip_jax/index.py layout) "
      "or 'minilm'")
  attribute_export(tmp_path / "export", data, products=np.arange(
      1, data.num_products))
  missing = _main("--config=configs/ranking.py:tiny",
                  f"--config.embeddings={tmp_path / 'export'}",
                  f"--workdir={tmp_path / 'run'}")
  last = missing.stderr.strip().splitlines()[-1]
  assert missing.returncode != 0 and last.startswith(
      "dashclip_jax.ranking.main: error: embedding export ") and (
          f"product id {data.catalog.ids[0]} (1 of" in last), last
