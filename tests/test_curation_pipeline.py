"""The tiny curation job end to end; the expanded set in stage 2's readers."""

import csv
import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import pipeline
from dashclip_jax.curation import steps
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import train_datasets
from dashclip_jax.runtime import config_files
from dashclip_jax.trainers import inputs

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion")


def _probs(table):
  return np.stack([table[c].to_numpy() for c in ("p0", "p1", "p2")], 1)


def _shards(directory):
  return pq.read_table(sorted(glob.glob(str(directory / "part-*.parquet"))))


def test_tiny_job_and_its_expanded_set_loads_into_stage2(tmp_path, monkeypatch):
  config = config_files.load_config("configs/curate.py", "tiny",
                                    {"label.progress": False,
                                   "run": "teacher,mine,label"})
  pipeline.run(config, str(tmp_path))
  # The tiny teacher is barely trained: a threshold at its median
  # confidence keeps about half of its labels.
  threshold = float(np.median(_probs(_shards(tmp_path / "labels")).max(1)))
  with config.unlocked():
    config.run, config.label.threshold = ",".join(steps.STEPS), threshold
  out = pipeline.run(config, str(tmp_path))  # Teacher and shards reused.
  ctx = context_lib.context(config, str(tmp_path))
  csv_path = tmp_path / "expanded" / "relevance_train.csv"
  rel = relevance_tables.load_relevance(str(csv_path), ctx.catalog,
                                        max_bad_fraction=0.0)
  rows = pq.read_table(tmp_path / "expanded" / "rows.parquet")
  assert len(rel) == rows.num_rows == out["expand"]["rows"]
  source = np.asarray(rows["label_source"].to_pylist())
  assert (source == "seed").sum() == len(ctx.data.seed)
  assert out["teacher"]["threshold"]["value"] == threshold
  teacher = rows.filter(np.asarray(source == "teacher"))
  assert set(teacher["teacher_id"].to_pylist()) == {
      json.load(open(tmp_path / "teacher" / "teacher.json"))["teacher_id"]}
  np.testing.assert_array_equal(_probs(teacher).argmax(1),
                                teacher["label"].to_numpy())
  # Exactly the confident rows: candidates of any label, mined negatives
  # of label 0 only.
  conf = _probs(_shards(tmp_path / "labels")).max(1)
  neg = _shards(tmp_path / "negatives")
  neg_kept = (_probs(neg).max(1) >= threshold) & (
      neg["label"].to_numpy() == 0)
  assert 0 < (conf >= threshold).sum() < len(conf)
  assert teacher.num_rows == (conf >= threshold).sum() + neg_kept.sum()
  # The sets stage 2 compares it with: without the negatives, seed alone.
  sets = out["expand"]["sets"]
  assert sets["expanded_no_negatives"]["rows"] == len(rel) - neg_kept.sum()
  assert sets["seed_only"]["rows"] == len(ctx.data.seed)
  assert len(relevance_tables.load_relevance(
      sets["seed_only"]["path"], ctx.catalog, max_bad_fraction=0.0)) == len(
          ctx.data.seed)
  # Mined negatives: label-0 rows of anchor products that stage 2's
  # `num_negatives` draws from.
  neg = pq.read_table(tmp_path / "negatives" / "candidates.parquet")
  pairs = set(zip(rows["query_id"].to_pylist(),
                  rows["product_id"].to_pylist()))
  mined = [k for k in zip(neg["query_id"].to_pylist(),
                          neg["product_id"].to_pylist()) if k in pairs]
  assert mined
  ds = train_datasets.stage2_dataset(
      ctx.catalog, rel, train_datasets.PipelineOptions(batch_size=8,
                                                       num_epochs=1),
      image_size=32, query_length=10, title_length=16, num_negatives=2,
      augment=False)
  batch = next(iter(ds))
  assert batch["neg_valid"].any() and set(batch["label"]) <= {1, 2}
  # Report: both agreement sets, the manifest's provenance.
  metrics = json.load(open(tmp_path / "report" / "metrics.json"))
  for name in ("validation", "truth"):
    assert set(metrics["metrics"][name]) >= {"kappa", "kappa_linear", "ece",
                                             "confusion", "per_class"}
    assert os.path.isfile(tmp_path / "report" / f"reliability_{name}.png")
  manifest = metrics["manifest"]
  assert manifest["seed"]["sha256"] and manifest["threshold"] == threshold
  assert manifest["candidates"]["k"] == config.mining.k
  assert "kappa (linear)" in open(tmp_path / "report" / "report.md").read()
  # A rerun reuses the teacher and the shards, and writes the same set.
  before = open(csv_path, "rb").read()
  with config.unlocked():
    config.run = "teacher,label,expand"
  pipeline.run(config, str(tmp_path))
  assert open(csv_path, "rb").read() == before
  # The aisle policy's wiring (its rule: test_curation_labelling): the
  # expand step hands it the kept teacher rows and the catalog column, and
  # writes back what it returns, the seed rows as they were. This barely
  # trained teacher's kept labels are all 0, so the policy itself would
  # change nothing here: a stand-in marks every row it is given 1.
  seen = {}

  def all_one(table, aisle_of):
    seen.update(table=table, aisle_of=aisle_of)
    return table.set_column(table.schema.get_field_index("label"), "label",
                            pa.array(np.ones(len(table), np.int8))), 7

  monkeypatch.setattr(label_shards, "aisle_consistent", all_one)
  with config.unlocked():
    config.run, config.label.aisle_field = "expand", "colour"
  pipeline.run(config, str(tmp_path))
  after = pq.read_table(tmp_path / "expanded" / "rows.parquet")
  is_seed = source == "seed"
  assert after.filter(is_seed).equals(rows.filter(is_seed))
  kept = seen["table"].num_rows  # The kept rows; negatives after them.
  assert seen["table"].equals(rows.filter(~is_seed).slice(0, kept))
  assert set(after.filter(~is_seed)["label"][:kept].to_pylist()) == {1}
  assert after.filter(~is_seed).slice(kept).equals(
      rows.filter(~is_seed).slice(kept))
  assert seen["aisle_of"] == dict(zip(ctx.catalog.ids,
                                      ctx.catalog.attributes["colour"]))
  assert json.load(open(tmp_path / "expanded" / "manifest.json"))[
      "aisle_policy"] == {"field": "colour", "relabelled_0": 7}


def _mini_fashion(root, num_queries):
  """A fashion folder (styles.csv, images/, relevance_train.csv) of the
  first `num_queries` train queries and their train products."""
  with open(os.path.join(FASHION, "styles.csv")) as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames
    styles = {r["id"]: r for r in reader if r["split"] == "train" and
              os.path.isfile(os.path.join(FASHION, "images", f"{r['id']}.jpg"))}
  with open(os.path.join(FASHION, "relevance_train.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r["product_id"] in styles]
  keep = set(sorted({r["query_id"] for r in rows})[:num_queries])
  rows = [r for r in rows if r["query_id"] in keep]
  ids = sorted({r["product_id"] for r in rows}, key=int)
  os.makedirs(root / "images")
  for i in ids:
    shutil.copy(os.path.join(FASHION, "images", f"{i}.jpg"), root / "images")
  for name, fields, table in (("styles.csv", header, [styles[i] for i in ids]),
                              ("relevance_train.csv", list(rows[0]), rows)):
    with open(root / name, "w", newline="") as f:
      writer = csv.DictWriter(f, fields)
      writer.writeheader()
      writer.writerows(table)


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="no fashion data")
def test_expanded_dir_is_stage2s_relevance_train_path(tmp_path):
  # The tiny job on a slice of the fashion data, then stage 2's fashion
  # config with the overrides the job prints: relevance_train_path is the
  # expanded/ directory itself, no data.source=csv.
  data, work = tmp_path / "fashion", tmp_path / "curate"
  _mini_fashion(data, num_queries=30)
  config = config_files.load_config("configs/curate.py", "tiny", {
      "data.source": "fashion", "data.path": str(data),
      "teacher.fields": "title,category,baseColour,gender",
      "seed_data.fraction": 0.5, "teacher.val_fraction": 0.3,
      "label.threshold": 0.0, "label.progress": False,
      "run": "teacher,mine,label,expand"})
  out = pipeline.run(config, str(work))
  command = out["summary"].splitlines()[-1].split()
  assert command[:3] == ["python", "-m", "dashclip_jax.main"]
  assert "--config=configs/stage2.py:fashion" in command
  assert not any("data.source" in a for a in command)
  overrides = dict(a[len("--config."):].split("=", 1) for a in command
                   if a.startswith("--config."))
  assert overrides.pop("init.checkpoint") == "S1"
  assert overrides == {"data.path": str(data),
                       "data.relevance_train_path": str(work / "expanded")}
  stage2 = config_files.load_config("configs/stage2.py", "fashion", overrides)
  kept, held = inputs.train_relevance(stage2.data)
  assert len(kept) + len(held) == out["expand"]["rows"]
  assert kept.name.startswith(str(work / "expanded" / "relevance_train.csv"))
  assert kept.bad.num_bad == 0
  rows = pq.read_table(work / "expanded" / "rows.parquet")
  assert set(rows["label_source"].to_pylist()) == {"seed", "teacher"}


def test_labelling_budget_keeps_a_sample_of_queries_with_their_candidates(
    tmp_path):
  config = config_files.load_config("configs/curate.py", "tiny",
                                    {"run": "teacher,mine"})
  pipeline.run(config, str(tmp_path))
  full = pq.read_table(tmp_path / "candidates.parquet").to_pylist()
  with config.unlocked():
    config.run, config.mining.max_queries = "mine", 5
  pipeline.run(config, str(tmp_path))  # The teacher and embeddings reused.
  capped = pq.read_table(tmp_path / "candidates.parquet").to_pylist()
  kept = {r["query_id"] for r in capped}
  assert len(kept) == 5 < len({r["query_id"] for r in full})
  # A kept query has exactly the candidates it had without the budget.
  assert capped == [r for r in full if r["query_id"] in kept]


def test_labelling_budget_bounds():
  from dashclip_jax.curation.steps import mine
  assert mine.budget_queries(10, 0, seed=0) is None
  assert mine.budget_queries(10, 10, seed=0) is None
  kept = mine.budget_queries(10, 4, seed=0)
  assert len(set(kept.tolist())) == 4 and kept.max() < 10
  np.testing.assert_array_equal(kept, mine.budget_queries(10, 4, seed=0))
  assert not np.array_equal(kept, mine.budget_queries(10, 4, seed=1))
  with pytest.raises(ValueError, match="max_queries"):
    mine.budget_queries(10, -1, seed=0)
