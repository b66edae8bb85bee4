"""The main job's final evaluation: its data and its multi-process export.

(The two-process run itself is tests/test_main.py, which also checks the
final evaluation's metrics there against one process.)
"""

import os

import numpy as np
import pytest
from PIL import Image

from dashclip_jax import index as index_lib
from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import report as report_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.trainers import final_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage2_config(arg):
  return config_files.load_config(os.path.join(REPO, "configs", "stage2.py"),
                                  arg)


@pytest.fixture(scope="module")
def fashion_copy(tmp_path_factory):
  """A 6-product catalog in the fashion layout (styles.csv + images/)."""
  root = tmp_path_factory.mktemp("fashion_copy")
  os.makedirs(root / "images")
  rows = [("1", "Acme Men Blue Shirt", "test"), ("2", "Bolt Red Heels", "test"),
          ("3", "Core Black Watch", "test"), ("4", "Acme Men Green Shirt",
                                              "train"),
          ("5", "Bolt Gold Heels", "train"), ("6", "Core Steel Watch",
                                              "train")]
  with open(root / "styles.csv", "w") as f:
    f.write("id,gender,masterCategory,subCategory,articleType,baseColour,"
            "season,year,usage,productDisplayName,split\n")
    for i, (pid, title, split) in enumerate(rows):
      f.write(f"{pid},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,"
              f"{title},{split}\n")
      Image.fromarray(np.full((16, 12, 3), 30 * i, np.uint8)).save(
          root / "images" / f"{pid}.jpg")
  with open(root / "qrels_test.csv", "w") as f:
    f.write("query_id,query,product_id,label\nq1,blue shirt,1,2\n"
            "q2,red heels,2,2\n")
  return str(root)


@pytest.mark.parametrize("variant", ["tiny", "demo"])
def test_final_eval_follows_the_runs_data(variant, fashion_copy, tmp_path):
  # As `--config.data.source=fashion --config.data.path=...` leaves it.
  config = _stage2_config(variant)
  config.data.source = "fashion"
  config.data.path = fashion_copy
  cfg = final_eval.eval_config(config, "model_dir", "init_dir")
  assert cfg.data.to_dict() == config.data.to_dict()  # Passed through.
  assert cfg.checkpoint == "model_dir" and cfg.init_checkpoint == "init_dir"
  # The report names the run's data, not the synthetic catalog.
  data = eval_data.load_data(cfg)
  assert len(data.catalog) == 3 and data.query_ids == ["q1", "q2"]
  report_lib.write_report({}, data, cfg, str(tmp_path))
  line = next(l for l in (tmp_path / "report.md").read_text().splitlines()
              if l.startswith("- Data:"))
  assert os.path.join(fashion_copy, "styles.csv") in line, line
  assert "synthetic" not in line
  # No data in the block that an override could set in vain.
  assert "data" not in config.final_eval


def test_final_eval_follows_synthetic_overrides():
  config = _stage2_config("tiny")
  config.data.synthetic.num_products = 40
  config.data.synthetic.seed = 3
  cfg = final_eval.eval_config(config, "model_dir", None)
  assert cfg.data.source == "synthetic" and "init" not in cfg.baselines
  assert cfg.data.synthetic.num_products == 40 and cfg.data.synthetic.seed == 3
  # The catalog it ranks is the one the run tested on.
  data = eval_data.load_data(cfg)
  from dashclip_jax.trainers import inputs  # pylint: disable=g-import-not-at-top
  assert data.catalog.ids == inputs.load_sources(config.data).test_catalog.ids


def test_final_eval_reads_a_table_source(fashion_copy):
  """Any source the run trains on (here a table, which the old translation
  between the two schemas could not follow with its own columns)."""
  config = _stage2_config("tiny")
  config.data.source = "table"
  config.data.catalog_path = os.path.join(fashion_copy, "styles.csv")
  config.data.relevance_test_path = os.path.join(fashion_copy,
                                                 "qrels_test.csv")
  data = eval_data.load_data(final_eval.eval_config(config, "m", None))
  assert data.query_ids == ["q1", "q2"] and len(data.catalog) == 3


def test_export_from_parts_of_several_processes(tmp_path):
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(7, 4)).astype(np.float32)
  ids = [f"p{i}" for i in range(7)]
  titles = [f"title {i}" for i in range(7)]
  # Process 0 holds rows 0..3, process 1 rows 4..6.
  for part, rows in enumerate((slice(0, 4), slice(4, 7))):
    if part == 1:
      with pytest.raises(FileNotFoundError,
                         match="products-00001-of-00002.parquet is missing"):
        index_lib.finish_export(str(tmp_path), 2)
    index_lib.write_products_part(str(tmp_path), part, 2, ids[rows],
                                  titles[rows], emb[rows],
                                  categories=["c"] * len(ids[rows]))
  index_lib.finish_export(str(tmp_path), 2, index_kind="flat")
  got_ids, got = index_lib.read_embeddings(str(tmp_path))
  assert got_ids == ids
  np.testing.assert_array_equal(got, emb)
  np.testing.assert_array_equal(np.load(tmp_path / "products.npy"), emb)
  index = index_lib.ExportedIndex(str(tmp_path))
  assert index.manifest["num_products"] == 7 and index.index.ntotal == 7
  assert index.search(emb[5:6], k=1)[0][0][:2] == ("p5", "title 5")
  # A later single-process export into the same directory replaces them.
  index_lib.export_embeddings(str(tmp_path), ids[:2], titles[:2], emb[:2],
                              index_kind="flat")
  assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".parquet")) == [
      "products-00000-of-00001.parquet"]
  assert index_lib.read_embeddings(str(tmp_path))[0] == ids[:2]


def test_final_eval_takes_the_runs_bad_record_limits(fashion_copy, tmp_path):
  """A run that tolerates 5% bad catalog rows is evaluated with the same
  tolerance (it used to stop at evaluation.run's own 1% after training)."""
  root = tmp_path / "damaged"
  os.makedirs(root / "images")
  lines = open(os.path.join(fashion_copy, "styles.csv")).read().splitlines()
  with open(root / "styles.csv", "w") as f:
    f.write("\n".join(lines + ["7,Men,Apparel"]) + "\n")  # 1 of 7 malformed.
  for name in os.listdir(os.path.join(fashion_copy, "images")):
    os.link(os.path.join(fashion_copy, "images", name), root / "images" / name)
  with open(root / "qrels_test.csv", "w") as f:  # 1 of 3 rows unknown.
    f.write("query_id,query,product_id,label\nq1,blue shirt,1,2\n"
            "q2,red heels,2,2\nq3,green hat,99,2\n")
  config = _stage2_config("tiny")
  config.data.source, config.data.path = "fashion", str(root)
  config.data.max_bad_fraction = 0.4
  cfg = final_eval.eval_config(config, "model_dir", None)
  assert (cfg.data.max_bad_fraction,
          cfg.data.relevance_test_max_bad_fraction) == (0.4, -1.0)
  data = eval_data.load_data(cfg)
  assert len(data.catalog) == 3 and data.query_ids == ["q1", "q2"]
  config.data.max_bad_fraction = 0.01
  with pytest.raises(ValueError, match="max_bad_fraction=0.01"):
    eval_data.load_data(final_eval.eval_config(config, "model_dir", None))
