"""One config.data block for every job (issue 28, item 6).

Training, the main job's final evaluation, evaluation.run, curation and
ranking read `config.data` (configs/common.py data_block) through one
`data.sources.load_sources`: one override moves them all, and a key of the
old per-job blocks stops with one line naming the key that replaced it.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dashclip_jax.runtime import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = config_files.config_module(ROOT / "configs" / "common.py")
JOBS = {"stage1": "tiny", "stage2": "tiny", "eval": "fashion",
        "curate": "tiny", "ranking": "tiny"}

# A 16-product catalog in the fashion layout: 4 test, 12 train products.
TEST_IDS = ["1", "2", "3", "4"]
TRAIN_IDS = [str(i) for i in range(5, 17)]
TITLES = ["Acme Men Blue Shirt", "Bolt Women Red Heels",
          "Core Men Black Watch", "Dune Women Green Bag"]
TEST_QUERIES = [("t1", "blue shirt", "1"), ("t2", "red heels", "2"),
                ("t3", "black watch", "3")]
# 12 train queries, each with its label-2 product and a label-0 one.
TRAIN_QUERIES = [(f"r{i:02d}", f"query {i}", str(5 + i)) for i in range(12)]


def _config(job, overrides=None):
  return config_files.load_config(ROOT / "configs" / f"{job}.py", JOBS[job],
                                  overrides)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("fashion")
  os.makedirs(root / "images")
  with open(root / "styles.csv", "w") as f:
    f.write("id,gender,masterCategory,subCategory,articleType,baseColour,"
            "season,year,usage,productDisplayName,split\n")
    for pid in TEST_IDS + TRAIN_IDS:
      i = int(pid) - 1
      split = "test" if pid in TEST_IDS else "train"
      f.write(f"{pid},Men,Apparel,Topwear,Type{i % 4},Blue,Fall,2011,Casual,"
              f"{TITLES[i % 4]} {pid},{split}\n")
      Image.fromarray(np.full((12, 10, 3), 15 * i, np.uint8)).save(
          root / "images" / f"{pid}.jpg")
  header = "query_id,query,product_id,label\n"
  (root / "qrels_test.csv").write_text(header + "".join(
      f"{q},{t},{p},2\n" for q, t, p in TEST_QUERIES))
  (root / "relevance_train.csv").write_text(header + "".join(
      f"{q},{t},{p},2\n{q},{t},{5 + (int(p) - 4) % 12},0\n"
      for q, t, p in TRAIN_QUERIES))
  return str(root)


def test_every_job_config_has_the_one_data_block():
  want = COMMON.data_block("tiny").to_dict()
  for job in JOBS:
    data = _config(job).data.to_dict()
    assert sorted(data) == sorted(want), job
    assert sorted(data["synthetic"]) == sorted(want["synthetic"]), job
  # The main job's final evaluation keeps no data block of its own, and
  # eval.py:synthetic reads the catalog the demo main job trains on.
  assert "data" not in _config("stage2").final_eval
  demo = config_files.load_config(ROOT / "configs" / "stage2.py", "demo").data
  syn = config_files.load_config(ROOT / "configs" / "eval.py", "synthetic").data
  assert syn.synthetic.to_dict() == demo.synthetic.to_dict()
  assert syn.source == demo.source == "synthetic"


@pytest.mark.parametrize("source", ["fashion", "table"])
def test_one_override_moves_every_job(source, fashion_dir, tmp_path):
  """The same data keys on each job's config: each job reads the catalog
  and queries written above (a table source takes the same files by
  catalog_path + relevance_*_path)."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation.steps import context as curate_context
  from dashclip_jax.evaluation import eval_data
  from dashclip_jax.ranking import catalog_data
  from dashclip_jax.trainers import final_eval
  from dashclip_jax.trainers import inputs
  # pylint: enable=g-import-not-at-top
  data = {"data.source": source, "data.path": fashion_dir}
  if source == "table":
    data = {"data.source": source,
            "data.catalog_path": os.path.join(fashion_dir, "styles.csv"),
            "data.relevance_train_path": fashion_dir,  # Folders: their
            "data.relevance_test_path": fashion_dir}   # relevance files.
  test_qids = [q for q, _, _ in TEST_QUERIES]
  # Training (both stages read stage 2's config.data) and its final eval.
  stage2 = _config("stage2", data)
  src = inputs.load_sources(stage2.data)
  assert src.train_catalog.ids == TRAIN_IDS
  assert src.test_catalog.ids == TEST_IDS
  assert list(src.train_relevance.query_ids) == [q for q, _, _ in
                                                 TRAIN_QUERIES]
  final = eval_data.load_data(final_eval.eval_config(stage2, "m", None))
  assert final.catalog.ids == TEST_IDS and final.query_ids == test_qids
  # evaluation.run.
  ev = eval_data.load_data(_config("eval", data))
  assert ev.catalog.ids == TEST_IDS and ev.query_ids == test_qids
  assert ev.probe_catalog.ids == TRAIN_IDS  # data.probe_split=train.
  # Ranking: the sessions' products and queries (data.split=test).
  rank = catalog_data.load(_config("ranking", {
      **data, "attributes.colour": "baseColour", "attributes.usage": "usage",
      "attributes.brand": ""}))
  assert rank.catalog.ids == TEST_IDS and rank.query_ids == test_qids
  # Curation: the train catalog, its relevance split into seed + the rest.
  ctx = curate_context.context(_config("curate", {
      **data, "teacher.fields": "title,category,baseColour,gender",
      "seed_data.fraction": 0.5, "teacher.val_fraction": 0.5}),
                               str(tmp_path))
  assert ctx.catalog.ids == TRAIN_IDS
  assert sorted(ctx.query_ids) == [q for q, _, _ in TRAIN_QUERIES]
  assert 0 < ctx.num_seed_queries < len(TRAIN_QUERIES)


def test_relevance_test_path_moves_evaluation_and_ranking(fashion_dir,
                                                          tmp_path):
  qrels = tmp_path / "two_queries.csv"
  qrels.write_text("query_id,query,product_id,label\n"
                   "t9,green bag,4,2\nt1,blue shirt,1,2\n")
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import eval_data
  from dashclip_jax.ranking import catalog_data
  # pylint: enable=g-import-not-at-top
  data = {"data.source": "fashion", "data.path": fashion_dir,
          "data.relevance_test_path": str(qrels)}
  assert eval_data.load_data(_config("eval", data)).query_ids == ["t9", "t1"]
  rank = catalog_data.load(_config("ranking", {
      **data, "attributes.colour": "baseColour", "attributes.usage": "usage",
      "attributes.brand": ""}))
  assert rank.query_ids == ["t9", "t1"]
  # data.split=all: every product ranked, judged by the test relevance.
  everything = eval_data.load_data(_config("eval", {**data,
                                                    "data.split": "all"}))
  assert everything.catalog.ids == TEST_IDS + TRAIN_IDS


# (job, old key, the key the one line names instead).
RETIRED = [
    ("eval", "data.catalog_dir", "config.data.path"),
    ("eval", "data.catalog_file", "config.data.catalog_path"),
    ("eval", "data.qrels_path", "config.data.relevance_test_path"),
    ("eval", "data.qrels_max_bad_fraction",
     "config.data.relevance_test_max_bad_fraction"),
    ("stage2", "final_eval.data.qrels_path",
     "config.data.relevance_test_path"),
    ("stage2", "final_eval.data.split", "config.data.split"),
    ("curate", "max_bad_fraction", "config.data.max_bad_fraction"),
    ("curate", "data.catalog_dir", "config.data.path"),
    ("ranking", "data.columns.colour", "config.attributes.colour"),
]


@pytest.mark.parametrize("job,old,new", RETIRED)
def test_retired_key_names_its_replacement(job, old, new):
  with pytest.raises(config_files.ConfigError,
                     match=rf"^config.{old} is no longer a config key: set "
                     rf"{new} instead"):
    _config(job, {old: "1"})


# (entry module, its prog name, config, the retired override, the new key).
# evaluation.run parses its flags as curation and ranking do
# (flag_errors.exit_on_bad_config, then flags_parser).
CLI = {
    "main": ("dashclip_jax.main", "dashclip_jax.main",
             "configs/stage2.py:tiny", "final_eval.data.qrels_path",
             "--config.data.relevance_test_path"),
    "curate": ("dashclip_jax.curation.main", "dashclip_jax.curation.main",
               "configs/curate.py:tiny", "max_bad_fraction",
               "--config.data.max_bad_fraction"),
    "ranking": ("dashclip_jax.ranking.main", "dashclip_jax.ranking.main",
                "configs/ranking.py:tiny", "data.columns.colour",
                "--config.attributes.colour"),
}


@pytest.mark.parametrize("entry", sorted(CLI))
def test_cli_retired_key_is_one_line(entry, tmp_path):
  module, prog, config, old, new = CLI[entry]
  out = subprocess.run(
      [sys.executable, "-m", module, f"--config={config}",
       f"--config.{old}=x", f"--workdir={tmp_path / 'w'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode != 0
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{prog}: error: --config.{old} is no longer a "
                         f"config key: set {new} instead"), last
