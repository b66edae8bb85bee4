"""Bad data is counted, named and surfaced: TFDS relevance, images in
training and evaluation, unclosed CSV quotes, culprit names."""

import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from dashclip_jax import model as model_lib
from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import eval_datasets
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import sources
from dashclip_jax.data import synthetic
from dashclip_jax.data import train_datasets
from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import pipeline as eval_pipeline
from dashclip_jax.runtime import config_files
from dashclip_jax.trainers import eval_inputs
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import stage2
from dashclip_jax.trainers import train_logger

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = model_lib.model_config("tiny")


def _config(name, arg):
  return config_files.load_config(os.path.join(REPO, "configs", f"{name}.py"),
                                  arg)


def _data_cfg(**overrides):
  """configs/stage1.py:tiny's data block: 96 synthetic products, a sixth of
  them with a damaged image."""
  d = _config("stage1", "tiny").data
  d.synthetic = dict(d.synthetic, bad_images=16)
  for k, v in overrides.items():
    d[k] = v
  return d


def _write_styles(root, rows, bad_image_ids=()):
  """styles.csv (fashion layout, given raw data lines) + images/<id>.jpg."""
  os.makedirs(root / "images", exist_ok=True)
  with open(root / "styles.csv", "w") as f:
    f.write("id,articleType,productDisplayName,split\n")
    f.write("".join(r + "\n" for r in rows))
  for r in rows:
    pid = r.split(",")[0]
    if pid.isdigit():
      Image.fromarray(np.full((12, 10, 3), int(pid) % 200, np.uint8)).save(
          root / "images" / f"{pid}.jpg")
  for pid in bad_image_ids:
    (root / "images" / f"{pid}.jpg").write_bytes(b"not an image at all")
  return str(root / "styles.csv")


# ---------------------------------------------------------------------------
# Item 3: bad TFDS relevance data surfaces as it does for CSV.


def test_bad_tfds_relevance_raises_like_csv(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from dashclip_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  syn = synthetic.synthetic_data(num_products=24, num_train_queries=4,
                                 num_test_queries=2, image_size=16)
  rel = syn.train
  # Labels outside {0, 1, 2} in most rows: BadDataError through the CSV path.
  broken = relevance_lib.Relevance(
      rel.name, rel.query_ids, rel.queries, rel.query, rel.product,
      np.where(np.arange(len(rel)) % 2, 7, rel.label).astype(np.int8),
      rel.num_products)
  out = str(tmp_path / "tfds")
  tfds_builders.prepare_catalog(syn.catalog, out)
  tfds_builders.prepare_relevance({"train": (broken, syn.train_catalog)}, out)
  cfg = {"source": "tfds", "tfds_dir": out, "test_fraction": 0.2}
  with pytest.raises(br.BadDataError, match=r"label outside \{0,1,2\}"):
    sources.load_sources(cfg)
  # A split that is not stored stays "no relevance", as before.
  ok = str(tmp_path / "tfds_ok")
  shutil.copytree(os.path.join(out, "dashclip_catalog"),
                  os.path.join(ok, "dashclip_catalog"))
  tfds_builders.prepare_relevance({"train": (rel, syn.train_catalog)}, ok)
  src = sources.load_sources({**cfg, "tfds_dir": ok})
  assert src.test_relevance is None
  assert src.train_relevance.queries == rel.queries


# ---------------------------------------------------------------------------
# Item 13: bad images in training are reported and the limit is enforced on
# the images seen, after a minimum sample stated in the config.


def test_synthetic_bad_images_are_damaged_as_planted():
  syn = synthetic.synthetic_data(num_products=30, image_size=16,
                                 bad_images=5)
  rows = synthetic.bad_image_rows(30, 5)
  assert len(rows) == 5
  for i in range(30):
    if i in rows:
      with pytest.raises(images_lib.ImageError):
        syn.catalog.load_image(i)
    else:
      assert syn.catalog.load_image(i).shape == (16, 16, 3)


def test_bad_fraction_is_enforced_after_the_configured_sample():
  cfg = _data_cfg(min_seen_for_bad_fraction=40)
  it = inputs.stage1_train(cfg, TINY, 8, seed=0)
  with pytest.raises(br.BadDataError, match="synthetic product") as e:
    for _ in range(7):  # 56 good images; about 9 bad among the first 57.
      next(it)
  assert "min_seen_for_bad_fraction" in str(e.value)
  seen = it._iters[0].bad.seen  # pylint: disable=protected-access
  assert 40 <= seen <= 57
  # Below the sample size the fraction is not judged yet (but counted).
  it = inputs.stage1_train(_data_cfg(min_seen_for_bad_fraction=1000), TINY, 8,
                           seed=0)
  for _ in range(7):
    next(it)
  seen, bad, _ = it.bad_report()
  assert bad >= 8 and seen == 56 + bad


class _Writer:

  def __init__(self):
    self.rows = []

  def write(self, step, metrics):
    self.rows.append((step, dict(metrics)))

  def progress(self, step, metrics):
    del step, metrics


def test_train_logger_reports_bad_images_with_culprits(caplog):
  it = inputs.stage1_train(_data_cfg(max_bad_fraction=0.5), TINY, 8, seed=0)
  tc = _config("stage1", "tiny").train
  writer = _Writer()
  logger = train_logger.TrainLogger(writer, tc, lambda s: 0.0, 0, data=it)
  metrics = {"loss": jnp.float32(1.0), "nonfinite": jnp.float32(0.0)}
  with caplog.at_level(logging.WARNING):
    for step in range(1, 3):
      next(it)
      logger.step(step, metrics, last=False)
  assert [s for s, _ in writer.rows] == [2]  # log_every=2.
  # The planted truth: the same data without damage is read in the same
  # order (the shuffle does not know which images are bad), so the bad
  # images read before the 16th good one are the planted rows among them.
  clean_cfg = _data_cfg(max_bad_fraction=0.5)
  clean_cfg.synthetic = dict(clean_cfg.synthetic, bad_images=0)
  clean = inputs.stage1_train(clean_cfg, TINY, 8, seed=0)
  order = np.concatenate([next(clean)["product_id"] for _ in range(6)])
  where = inputs.load_sources(clean_cfg).train_catalog.where
  planted = {f"synthetic product {r}" for r in synthetic.bad_image_rows(
      96, 16)}
  is_bad = np.array([where[i] in planted for i in order])
  want_bad = int(np.flatnonzero(~is_bad)[15]) - 15  # Before the 16th good.
  assert want_bad > 0
  m = writer.rows[-1][1]
  assert m["train/bad_images"] == want_bad
  assert m["train/examples_seen"] == 16 + want_bad
  assert m["train/bad_image_fraction"] == pytest.approx(want_bad /
                                                        (16 + want_bad))
  named = [where[i] for i in order[:16 + want_bad][is_bad[:16 + want_bad]]]
  bad = it._iters[0].bad  # pylint: disable=protected-access
  assert [c.split(" (")[0] for c in bad.culprits] == named[:3]
  assert named[0] in caplog.text and "bad image" in caplog.text


# ---------------------------------------------------------------------------
# Item 14: bad images at evaluation are counted, named and skipped.


class _TitleModel:
  """Bag-of-letters encoder over titles (images are only checked)."""

  def _embed(self, texts):
    out = np.zeros((len(texts), 26), np.float32)
    for i, t in enumerate(texts):
      for ch in t.lower():
        if "a" <= ch <= "z":
          out[i, ord(ch) - 97] += 1
    return out

  def encode_product(self, images, titles):
    assert all(im.ndim == 3 for im in images)
    return self._embed(titles)

  def encode_query(self, texts):
    return self._embed(texts)


def _eval_catalog(tmp_path, qrels_extra=()):
  rows = [f"{10 + i},{['Shirts', 'Heels'][i % 2]},"
          f"{['blue shirt', 'red heels'][i % 2]} {i},{split}"
          for i, split in enumerate(["test"] * 6 + ["train"] * 6)]
  path = _write_styles(tmp_path, rows, bad_image_ids=("11", "13", "18"))
  qrels = ["query_id,query,product_id,label",
           "q1,blue shirt,10,2", "q1,blue shirt,12,1",
           "q2,red heels,11,2", "q2,red heels,13,2",  # Both unreadable.
           "q3,red heels,15,2", "q3,red heels,11,1", *qrels_extra]
  (tmp_path / "qrels_test.csv").write_text("\n".join(qrels) + "\n")
  return os.path.dirname(path)


def _eval_cfg(catalog_dir):
  cfg = _config("eval", "fashion")
  cfg.data.path = catalog_dir
  cfg.baselines = ("bm25",)
  cfg.plots.enabled = False
  cfg.export.enabled = False
  cfg.probes.relevance = False
  return cfg


def test_eval_run_skips_undecodable_images_and_says_what_it_ranked(tmp_path):
  cfg = _eval_cfg(_eval_catalog(tmp_path / "cat"))
  out = eval_pipeline.evaluate(cfg, str(tmp_path / "out"),
                               models={"dashclip": _TitleModel()})
  report = (tmp_path / "out" / "report.md").read_text()
  assert "4 products x 2 queries" in report
  assert "2 products skipped" in report and "styles.csv line 3" in report
  assert "1 query skipped" in report and "q2" in report
  assert "1 probe product skipped" in report and "styles.csv line 10" in report
  # q1 finds 10 first, q3 finds 15 first, among the 4 readable products.
  assert out["dashclip"]["recall@1"] == 1.0
  assert out["bm25"]["recall@1"] == 1.0


def test_eval_skips_queries_without_a_label2_product_and_names_them(tmp_path):
  """A label-1-only query (or one whose label-2 products are outside the
  ranked split) has no Recall@K/MRR: skipped and named, not a traceback."""
  root = _eval_catalog(tmp_path / "cat", qrels_extra=(
      "q4,blue shirt,14,1", "q5,blue shirt,16,2"))  # 16 is a train product.
  cfg = _eval_cfg(root)
  cfg.data.relevance_test_max_bad_fraction = 0.2  # 16: a train product.
  data = eval_data.load_data(cfg)
  assert data.query_ids == ["q1", "q3"]
  assert "1 query skipped (no label-2 product in the ranked split: q4)" in (
      data.description)
  assert "1 query skipped (no readable label-2 product: q2)" in (
      data.description)


def test_eval_qrels_limit_is_a_config_key(tmp_path):
  root = _eval_catalog(tmp_path / "cat", qrels_extra=("q1,blue shirt,99,1",))
  cfg = _eval_cfg(root)
  with pytest.raises(br.BadDataError,
                     match="relevance_test_max_bad_fraction"):
    eval_pipeline.evaluate(cfg, str(tmp_path / "out"),
                           models={"dashclip": _TitleModel()})
  cfg.data.relevance_test_max_bad_fraction = 0.2
  out = eval_pipeline.evaluate(cfg, str(tmp_path / "out"),
                               models={"dashclip": _TitleModel()})
  assert out["dashclip"]["recall@1"] == 1.0


def test_heldout_eval_counts_names_and_skips_unreadable_products(caplog):
  # Product 1 is unreadable: the best match of q0 and q1's only label 2.
  features = np.array([[0.8, 0.2], [1.0, 0.0], [0.1, 1.0]], np.float32)
  ok = np.array([True, False, True])
  labels = np.array([[2, 2, 0], [0, 2, 1]], np.int32)
  fns, params, data, mesh = helpers.two_query_heldout_eval(
      labels, product_names=["a.csv line 2 (product 7)",
                             "a.csv line 3 (product 8)",
                             "a.csv line 4 (product 9)"])
  with caplog.at_level(logging.WARNING):
    out = stage2.evaluate(fns, params, data, mesh, features=(features, ok))
  # Without product 1, q0 finds its other label 2 first; q1 is not ranked.
  assert out["eval/recall@1"] == 1.0 and out["eval/mrr"] == 1.0
  assert out["eval/products_ranked"] == 2
  assert out["eval/products_skipped"] == 1
  assert out["eval/queries_ranked"] == 1
  assert "a.csv line 3 (product 8)" in caplog.text and "q1" in caplog.text


def test_stage2_eval_names_its_products():
  d = _data_cfg(heldout_query_fraction=0.25)
  data = eval_inputs.stage2_eval(d, TINY, 8)
  cat = inputs.load_sources(d).train_catalog
  assert data.product_names == [f"{cat.where[r]} (product {cat.ids[r]})"
                                for r in data.product_rows]


# ---------------------------------------------------------------------------
# Item 15: an unclosed quote loses rows: every one is counted and the line
# where the quote opened is named.


def test_unclosed_quote_to_the_end_counts_every_lost_row(tmp_path):
  rows = [f"{100 + i},Shirts,Shirt {i},train" for i in range(14)]
  rows[3] = '103,Shirts,"Shirt 3 with a quote,train'  # File line 5.
  cat = catalog_tables.load_catalog(_write_styles(tmp_path, rows),
                                    max_bad_fraction=1.0)
  assert cat.ids == ["100", "101", "102"]
  assert cat.bad.counts == {"malformed row": 11}
  assert cat.bad.culprits[0].startswith("styles.csv line 5: malformed row")
  assert "unclosed quote" in cat.bad.culprits[0]
  assert "line 15" in cat.bad.culprits[0]  # Where the swallowing ends.


def test_unclosed_quote_closed_later_is_not_taken_for_a_title(tmp_path):
  rows = [f"{100 + i},Shirts,Shirt {i},train" for i in range(14)]
  rows[3] = '103,Shirts,"Shirt 3 with a quote'  # Opens at file line 5 ...
  rows[8] = '108,Shirts,Shirt 8",train'         # ... closes at line 10.
  rows[11] = '111,Shirts,"Shirt 11\nsecond line",train'  # A real line break.
  cat = catalog_tables.load_catalog(_write_styles(tmp_path, rows),
                                    max_bad_fraction=1.0)
  assert cat.ids == [str(i) for i in (100, 101, 102, 109, 110, 111, 112,
                                      113)]
  assert cat.bad.counts == {"malformed row": 6}
  assert cat.bad.culprits[0].startswith("styles.csv line 5: malformed row")
  assert cat.titles[cat.ids.index("111")] == "Shirt 11\nsecond line"
  # Rows are named by the line they start on.
  assert cat.where[cat.ids.index("111")] == "styles.csv line 13"
  assert cat.where[cat.ids.index("112")] == "styles.csv line 15"


# ---------------------------------------------------------------------------
# Item 18: a bad-image culprit names its place once, by file and line.


def test_bad_image_culprit_names_file_and_line_once(tmp_path):
  rows = [f"{100 + i},Shirts,Shirt {i},train" for i in range(6)]
  cat = catalog_tables.load_catalog(
      _write_styles(tmp_path, rows, bad_image_ids=("101",)))
  with pytest.raises(images_lib.ImageError) as e:
    cat.load_image(1)
  assert str(e.value).count("styles.csv line 3") == 1
  assert "object at 0x" not in str(e.value)
  it = iter(train_datasets.stage1_dataset(
      cat, train_datasets.PipelineOptions(batch_size=5, shard=(0, 1),
                                          num_epochs=1, max_bad_fraction=1.0),
      image_size=8))
  list(it)
  products = eval_datasets.eval_products_dataset(cat, batch_size=6,
                                                 image_size=8, shard=(0, 1))
  list(products)
  for culprits in (it.bad.culprits, products.bad.culprits):
    assert len(culprits) == 1
    c = culprits[0]
    assert c.startswith("styles.csv line 3 (product 101): bad image (")
    assert c.count("styles.csv") == 1 and "object at 0x" not in c, c
