"""The evaluation job end to end: tiny catalogs, a fake and a real model."""

import json
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from dashclip_jax.evaluation import baselines
from dashclip_jax.evaluation import metrics
from dashclip_jax.evaluation import pipeline as eval_pipeline
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax.evaluation import report as report_lib
from dashclip_jax.evaluation import search as search_lib
from dashclip_jax import index as index_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval_config(arg):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "eval_config", os.path.join(REPO, "configs", "eval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class HashModel:
  """Bag of hashed title/query words: integer vectors, exact dot products."""

  def __init__(self, dim=64):
    self.dim = dim
    self.product_calls = 0

  def _embed(self, texts):
    out = np.zeros((len(texts), self.dim), np.float32)
    for i, t in enumerate(texts):
      for w in baselines.bm25_tokenize(t):
        out[i, zlib.crc32(w.encode()) % self.dim] += 1
    return out

  def encode_product(self, images, titles):
    assert len(images) == len(titles) and images[0].ndim == 3
    self.product_calls += 1
    return self._embed(titles)

  def encode_query(self, texts):
    return self._embed(texts)


TITLES = [  # id, title, category, split
    ("10", "Acme Men Blue Shirt", "Shirts", "test"),
    ("11", "Acme Men Red Shirt", "Shirts", "test"),
    ("12", "Bolt Women Blue Heels", "Heels", "test"),
    ("13", "Bolt Women Black Heels", "Heels", "test"),
    ("14", "Core Unisex Black Watch", "Watches", "test"),
    ("15", "Core Men Steel Watch", "Watches", "test"),
    ("20", "Acme Men Green Shirt", "Shirts", "train"),
    ("21", "Acme Men White Shirt", "Shirts", "train"),
    ("22", "Bolt Women Red Heels", "Heels", "train"),
    ("23", "Bolt Women Gold Heels", "Heels", "train"),
    ("24", "Core Women Gold Watch", "Watches", "train"),
    ("25", "Core Men Black Watch", "Watches", "train"),
]
QRELS = [  # query_id, query, product_id, label
    ("q1", "men blue shirt", "10", 2), ("q1", "men blue shirt", "11", 1),
    ("q2", "black heels", "13", 2), ("q2", "black heels", "12", 1),
    ("q3", "black watch", "14", 2), ("q3", "black watch", "15", 1),
    ("q4", "women heels", "12", 2), ("q4", "women heels", "13", 2),
]


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory):
  root = tmp_path_factory.mktemp("catalog")
  os.makedirs(root / "images")
  with open(root / "styles.csv", "w") as f:
    f.write("id,gender,masterCategory,subCategory,articleType,baseColour,"
            "season,year,usage,productDisplayName,split\n")
    for i, (pid, title, cat, split) in enumerate(TITLES):
      f.write(f"{pid},Men,Apparel,Topwear,{cat},Blue,Fall,2011,Casual,"
              f"{title},{split}\n")
      Image.fromarray(np.full((24, 18, 3), 20 * i, np.uint8)).save(
          root / "images" / f"{pid}.jpg")
  with open(root / "qrels_test.csv", "w") as f:
    f.write("query_id,query,product_id,label\n")
    for row in QRELS:
      f.write(",".join(map(str, row)) + "\n")
  return str(root)


def _fashion_cfg(catalog_dir, **overrides):
  cfg = _eval_config("fashion")
  cfg.data.path = catalog_dir
  cfg.data.max_probe_products = 0
  cfg.probes.zeros_per_query = 2
  cfg.update_from_flattened_dict(overrides)
  return cfg


def test_end_to_end_fake_model(tiny_catalog, tmp_path):
  cfg = _fashion_cfg(tiny_catalog, baselines=("bm25", "minilm"))
  model = HashModel()
  out = eval_pipeline.evaluate(cfg, str(tmp_path), models={"dashclip": model})
  test_titles = [t for _, t, _, s in TITLES if s == "test"]
  queries = ["men blue shirt", "black heels", "black watch", "women heels"]
  labels = np.zeros((4, 6), int)
  pos = {pid: j for j, (pid, _, _, s) in enumerate(TITLES[:6])}
  for qi, (qid, _, pid, lab) in enumerate(QRELS):
    labels[int(qid[1]) - 1, pos[pid]] = lab
  ids = ["q1", "q2", "q3", "q4"]
  # The job's sharded KNN + metrics == numpy ranking + metrics.
  want = metrics.retrieval_metrics(
      metrics.rank_by_score(model.encode_query(queries) @
                            model.encode_product([np.zeros((2, 2, 3))] * 6,
                                                 test_titles).T),
      labels, ids)
  for k, v in want.items():
    assert out["dashclip"][k] == pytest.approx(v), k
  # BM25 by hand: all six titles have 4 words, so a title's score is the
  # sum of the idfs of the query words it holds, and idf falls with df
  # (red/unisex/steel 1 title; men 3; the rest 2). q1 ranks 10 (3 words),
  # 11, 12 (blue), 15 (men); q2 13, then 12 and 14 tie (one df-2 word each),
  # 12 first; q3 14, then 13 (label 0) and 15 (label 1) tie, 13 first;
  # q4 ties 12 and 13, both label 2, so R@1 = 1/2 there.
  idcg_q3 = 3 + 1 / np.log2(3)
  assert out["bm25"] == pytest.approx(
      {"ndcg@10": (3 + 3.5 / idcg_q3) / 4, "recall@1": 3.5 / 4,
       "recall@5": 1.0, "recall@10": 1.0, "recall@50": 1.0, "mrr": 1.0})
  # Hand check of one figure: q1 ranks 10 first (2 words + shirt), so R@1=1.
  assert out["dashclip"]["recall@1"] >= 0.75
  # Probes ran on train -> test: titles name the category, so the hashed
  # bag of words separates the three aisles exactly.
  assert out["dashclip"]["aisle_acc"] == 1.0
  assert set(report_lib.METRIC_KEYS) <= set(out["dashclip"])
  assert set(report_lib.METRIC_KEYS) <= set(out["minilm"])
  assert "aisle_acc" not in out["bm25"]
  # Files: metrics.json == returned, report table, plots, export.
  with open(tmp_path / "metrics.json") as f:
    assert json.load(f) == out  # JSON floats round-trip exactly.
  report_md = (tmp_path / "report.md").read_text()
  assert "| dashclip | " in report_md and "| bm25 | " in report_md
  for name in ("dashclip", "minilm"):
    for kind in ("tsne", "cosine"):
      assert (tmp_path / f"{kind}_{name}.png").stat().st_size > 1000
  # The gallery: all 4 queries (fewer than gallery.num_queries) x 3 systems
  # x top 5, marked by the qrels (only labels > 0 are listed); bm25's q1
  # ranking is worked out above.
  page = (tmp_path / "gallery.html").read_text()
  cells = re.findall(r'<td class="cell[^"]*"[^>]*data-query="(\w+)" '
                     r'data-system="(\w+)" data-rank="(\d)" '
                     r'data-product="(\d+)" data-label="(\w+)"', page)
  assert len(cells) == 4 * 3 * 5
  assert [c[1:] for c in cells if c[0] == "q1" and c[1] == "bm25"] == [
      ("bm25", "1", "10", "2"), ("bm25", "2", "11", "1"),
      ("bm25", "3", "12", "unjudged"), ("bm25", "4", "15", "unjudged"),
      ("bm25", "5", "13", "unjudged")]
  assert Image.open(tmp_path / "gallery.png").size[0] > 1000
  assert "[gallery.html](gallery.html)" in report_md
  ids_out, emb = index_lib.read_embeddings(str(tmp_path / "export"))
  assert ids_out == ["10", "11", "12", "13", "14", "15"]
  np.testing.assert_array_equal(emb, model._embed(test_titles))
  np.testing.assert_array_equal(np.load(tmp_path / "export" / "products.npy"),
                                emb)
  qids, qemb = index_lib.read_embeddings(str(tmp_path / "export"), "queries")
  assert qids == ids
  np.testing.assert_array_equal(qemb, model.encode_query(queries))


def test_export_index_query_round_trip(tmp_path):
  model = HashModel(dim=128)
  titles = [f"brand{i} colour{i % 7} item{i % 11}" for i in range(300)]
  ids = [f"p{i}" for i in range(300)]
  emb = model._embed(titles)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  index_lib.export_embeddings(str(tmp_path), ids, titles, emb,
                               index_kind="hnsw")
  index = index_lib.ExportedIndex(str(tmp_path))
  # A query equal to a title finds that product first with cosine 1.
  hits = index.search(model.encode_query([titles[42], titles[7]]), k=5)
  assert hits[0][0][:2] == ("p42", titles[42])
  assert hits[0][0][2] == pytest.approx(np.linalg.norm(
      model._embed([titles[42]])))
  assert hits[1][0][0] == "p7"
  assert len(hits[0]) == 5
  text = search_lib.format_results(["x"], hits[:1])
  assert "p42" in text.splitlines()[1] and titles[42] in text
  with pytest.raises(ValueError, match=r"\(1, 3\) do not match .* 128"):
    index.search(np.ones((1, 3)), 2)
  with pytest.raises(FileNotFoundError, match="manifest.json missing"):
    index_lib.ExportedIndex(str(tmp_path / "nope"))


def test_config_errors_are_clear(tiny_catalog, tmp_path):
  with pytest.raises(ValueError, match=r"unknown \['bm52'\]"):
    eval_pipeline.evaluate(_fashion_cfg(tiny_catalog, baselines=("bm52",)),
                     str(tmp_path), models={"dashclip": HashModel()})
  with pytest.raises(ValueError, match="'init' but config.init_checkpoint"):
    eval_pipeline.evaluate(_fashion_cfg(tiny_catalog, baselines=("init",)),
                     str(tmp_path), models={"dashclip": HashModel()})
  with pytest.raises(FileNotFoundError, match="styles.csv"):
    eval_pipeline.evaluate(_fashion_cfg(str(tmp_path)), str(tmp_path),
                     models={"dashclip": HashModel()})
  model = HashModel()
  with pytest.raises(ValueError, match=r"gallery.queries: unknown \['q7'\]"):
    eval_pipeline.evaluate(_fashion_cfg(tiny_catalog, **{
        "gallery.queries": "q2,black watch,q7"}), str(tmp_path),
                     models={"dashclip": model})
  assert model.product_calls == 0  # Before any encoding.
  with pytest.raises(ValueError, match="unknown eval variant 'fasion'"):
    _eval_config("fasion")


class NanModel(HashModel):

  def encode_product(self, images, titles):
    out = super().encode_product(images, titles)
    out[[i for i, t in enumerate(titles) if "Red" in t]] = np.nan
    return out


def test_non_finite_embeddings_name_the_product(tiny_catalog, tmp_path):
  cfg = _fashion_cfg(tiny_catalog, baselines=())
  with pytest.raises(ValueError, match="dashclip: 1 product embeddings are "
                     "not finite, first product id '11'"):
    eval_pipeline.evaluate(cfg, str(tmp_path), models={"dashclip": NanModel()})


def test_qrels_naming_a_product_outside_the_split_is_an_error(tiny_catalog,
                                                               tmp_path):
  qrels = tmp_path / "q.csv"
  qrels.write_text("query_id,query,product_id,label\nq1,men shirt,10,2\n"
                   "q1,men shirt,20,2\n")  # 20 is a train product.
  cfg = _fashion_cfg(tiny_catalog, baselines=(), **{
      "data.relevance_test_path": str(qrels)})
  with pytest.raises(ValueError, match="20"):
    eval_pipeline.evaluate(cfg, str(tmp_path), models={"dashclip": HashModel()})


def test_cli_rejects_unknown_config_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.run",
       "--config=configs/eval.py:synthetic", "--config.data.catalgo_dir=x",
       f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
      timeout=120, env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode != 0
  assert "catalgo_dir" in proc.stderr


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
  # pylint: disable=g-import-not-at-top
  import jax
  from dashclip_jax.model import model_dir as model_dir_lib
  from dashclip_jax import model as model_lib
  # pylint: enable=g-import-not-at-top
  root = tmp_path_factory.mktemp("ckpts")
  config = model_lib.model_config("tiny")
  dirs = []
  for seed in (0, 1):
    dirs.append(model_dir_lib.save_model_dir(
        str(root / f"m{seed}"), model_lib.init_params(
            config, jax.random.key(seed)), config))
  return dirs


def test_real_tiny_checkpoint_synthetic_and_search_cli(tiny_checkpoints,
                                                       tmp_path):
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  cfg = _eval_config("synthetic")
  cfg.checkpoint, cfg.init_checkpoint = tiny_checkpoints
  cfg.baselines = ("init", "bm25", "dashclip_text")
  cfg.plots.enabled = False
  cfg.data.max_probe_products = 60
  out = eval_pipeline.evaluate(cfg, str(tmp_path))
  assert set(out) == {"dashclip", "init", "bm25", "dashclip_text"}
  assert out["dashclip_text"]["ndcg@10"] != out["dashclip"]["ndcg@10"]
  # Two different random models: different numbers.
  assert out["dashclip"]["ndcg@10"] != out["init"]["ndcg@10"]
  # The export holds exactly what the public inference API computes.
  data = synthetic.synthetic_data(**cfg.data.synthetic.to_dict())
  cat = data.test_catalog
  model = dashclip_jax.load(tiny_checkpoints[0])
  ids, emb = index_lib.read_embeddings(str(tmp_path / "export"))
  assert ids == list(cat.ids)
  # The job's sharded KNN figures equal a float64 numpy ranking of the
  # exported embeddings (BM25's figures: test_end_to_end_fake_model).
  labels = qrels_lib.labels_from_relevance(data.test)
  qids, qemb = index_lib.read_embeddings(str(tmp_path / "export"), "queries")
  assert qids == list(data.test.query_ids)
  scores = qemb.astype(np.float64) @ emb.astype(np.float64).T
  want = metrics.retrieval_metrics(metrics.rank_by_score(scores), labels, qids)
  # abs: a random tiny model's scores have float32 near-ties deep in the
  # ranking (two products swapped at rank 30/31 move MRR by 1.8e-5); any
  # real ranking error moves these figures by far more.
  assert {k: out["dashclip"][k] for k in want} == pytest.approx(want, abs=1e-4)
  want = model.encode_product([cat.load_image(i) for i in range(5)],
                              list(cat.titles[:5]))
  np.testing.assert_allclose(emb[:5], want, atol=1e-5)
  # The title-only product embedding ignores the vision tower entirely.
  other = dashclip_jax.load(tiny_checkpoints[1])
  swapped = dashclip_jax.inference.DashClipEncoder(
      model.config, {**model.params, "img": other.params["img"]},
      model.tokenizer)
  titles = list(cat.titles[:5])
  np.testing.assert_array_equal(swapped.encode_product_text(titles),
                                model.encode_product_text(titles))
  assert not np.allclose(swapped.encode_product(
      [cat.load_image(i) for i in range(5)], titles), want, atol=1e-3)
  # The CLI prints what the Python search returns.
  query = data.test.queries[0]
  hits = model.search([query], k=3, index=str(tmp_path / "export"))[0]
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.search",
       f"--export_dir={tmp_path / 'export'}", f"--query={query}", "--k=3"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == f"query: {query}"
  assert [ln.split()[2] for ln in lines[1:]] == [h[0] for h in hits]
