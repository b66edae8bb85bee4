"""grain train and eval datasets: resume, sharding, alignment, workers, bad
images, eval padding."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import eval_datasets
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import synthetic
from dashclip_jax.data import train_datasets
from dashclip_jax.model import preprocess
from dashclip_jax.model import tokenizer as tokenizer_lib

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion")
S = 32  # Small images keep the tests fast; the code path is the same.


@pytest.fixture(scope="module")
def data():
  return synthetic.synthetic_data()


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.BlipTokenizer.from_vocab()


def _stage1(cat, tok, augment=True, **kw):
  """Stage-1 batches of 4; `kw`: PipelineOptions fields."""
  opts = train_datasets.PipelineOptions(**{
      "batch_size": 4, "shard": (0, 1), "seed": 3, **kw})
  return train_datasets.stage1_dataset(cat, opts, image_size=S,
                                       augment=augment, tokenizer=tok)


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_stage1_resume_mid_epoch_gives_identical_batches(data, tok):
  cat = data.train_catalog.take(range(24))
  ds = _stage1(cat, tok, num_epochs=None)  # 6 batches per epoch, forever.
  it = iter(ds)
  for _ in range(4):
    next(it)
  # The trainer saves the state as JSON beside the model checkpoint.
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(5)]  # Crosses into epoch 2.
  resumed = iter(ds)
  resumed.set_state(state)
  for e in expected:
    _equal(next(resumed), e)
  # A fresh pipeline object with the same seed restores the same way.
  again = iter(_stage1(cat, tok, num_epochs=None))
  again.set_state(state)
  _equal(next(again), expected[0])


def test_epochs_reshuffle_and_seed_changes_order(data, tok):
  cat = data.train_catalog.take(range(24))
  ids = lambda ds: [b["product_id"].tolist() for b in ds]
  two = ids(_stage1(cat, tok, num_epochs=2))
  epoch1 = sum(two[:6], [])
  epoch2 = sum(two[6:], [])
  assert sorted(epoch1) == sorted(epoch2) == list(range(24))
  assert epoch1 != epoch2
  assert ids(_stage1(cat, tok, num_epochs=1)) == two[:6]
  assert ids(_stage1(cat, tok, num_epochs=1, seed=4)) != two[:6]


def test_two_process_sharding_covers_the_epoch_exactly_once(data, tok):
  cat = data.train_catalog.take(range(42))  # 42 = 2 shards x 21.
  seen = []
  for index in range(2):
    ds = _stage1(cat, tok, num_epochs=1, batch_size=3, shard=(index, 2))
    batches = list(ds)
    assert len(batches) == 7
    seen.append(np.concatenate([b["product_id"] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen).tolist()) == list(range(42))
  # grain ShardOptions work the same way.
  import grain  # pylint: disable=g-import-not-at-top
  opt = grain.sharding.ShardOptions(shard_index=1, shard_count=2)
  via_opt = np.concatenate([b["product_id"] for b in _stage1(
      cat, tok, num_epochs=1, batch_size=3, shard=opt)])
  np.testing.assert_array_equal(via_opt, seen[1])


def test_stage1_image_title_category_stay_aligned(data, tok):
  cat = data.train_catalog.take(range(16))
  for batch in _stage1(cat, tok, num_epochs=1, augment=False):
    for row, p in enumerate(batch["product_id"]):
      want_img = preprocess.normalize(
          preprocess.resize_square(cat.load_image(p), S))
      np.testing.assert_array_equal(batch["image"][row], want_img)
      ids, mask = tok([tokenizer_lib.pre_caption(cat.titles[p])], 30)
      np.testing.assert_array_equal(batch["ids"][row], ids[0])
      np.testing.assert_array_equal(batch["mask"][row], mask[0])
      assert batch["category"][row] == cat.category[p]
  b = next(iter(_stage1(cat, tok, num_epochs=1)))
  assert b["image"].shape == (4, S, S, 3) and b["image"].dtype == np.float32
  assert b["ids"].shape == (4, 30) and b["ids"].dtype == np.int32
  assert b["ids"][:, 0].tolist() == [tokenizer_lib.CLS_ID] * 4


def test_worker_processes_give_the_same_batches_and_resume(data, tok):
  cat = data.train_catalog.take(range(24))
  ref = list(_stage1(cat, tok, num_epochs=1))
  ds = _stage1(cat, tok, num_epochs=1, worker_count=2)
  it = iter(ds)
  got = [next(it) for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))
  got += list(it)
  assert len(got) == len(ref) == 6
  for a, b in zip(got, ref):
    _equal(a, b)
  resumed = iter(ds)
  resumed.set_state(state)
  _equal(next(resumed), ref[3])
  resumed.close()


def test_corrupt_images_are_skipped_counted_and_named(data, tok):
  cat = data.train_catalog.take(range(20))
  images = list(cat.images)
  for i in (2, 11, 17):
    images[i] = b"corrupt bytes"
  cat.images = images
  ds = _stage1(cat, tok, num_epochs=1, batch_size=4,
               max_bad_fraction=0.2)
  it = iter(ds)
  batches = list(it)
  got = np.concatenate([b["product_id"] for b in batches])
  # 17 good examples -> 4 full batches; none of them is a bad one.
  assert len(batches) == 4 and len(set(got.tolist())) == 16
  assert not {2, 11, 17} & set(got.tolist())
  assert it.bad.counts == {"bad image": 3} and it.bad.seen == 20
  named = sorted(c.split(": ")[0] for c in it.bad.culprits)
  assert named == sorted(f"{cat.where[i]} (product {cat.ids[i]})"
                         for i in (2, 11, 17))
  # The counts are part of the iterator state.
  assert it.get_state()["bad"]["counts"] == {"bad image": 3}
  with pytest.raises(br.BadDataError, match="synthetic product"):
    list(_stage1(cat, tok, num_epochs=1, max_bad_fraction=0.1))


def test_stage2_rows_are_aligned_and_masks_are_right(data, tok):
  cat, rel = data.train_catalog, data.train
  ds = train_datasets.stage2_dataset(
      cat, rel, train_datasets.PipelineOptions(batch_size=8, shard=(0, 1),
                                               num_epochs=1),
      image_size=S, num_negatives=3, tokenizer=tok, augment=False)
  labels = {(int(q), int(p)): int(l)
            for q, p, l in zip(rel.query, rel.product, rel.label)}
  relevant = rel.products_by_query([1, 2])
  zero_queries = rel.queries_by_product([0])
  it = iter(ds)
  for _ in range(3):
    b = next(it)
    assert b["neg_query_ids"].shape == (8, 3, 35)
    for i in range(8):
      q, p = int(b["query_index"][i]), int(b["product_id"][i])
      assert labels[(q, p)] == b["label"][i] >= 1
      assert b["label_weight"][i] == (1.0 if b["label"][i] == 2 else 0.5)
      ids, _ = tok([tokenizer_lib.pre_caption(rel.queries[q])], 35)
      np.testing.assert_array_equal(b["query_ids"][i], ids[0])
      ids, _ = tok([tokenizer_lib.pre_caption(cat.titles[p])], 35)
      np.testing.assert_array_equal(b["title_ids"][i], ids[0])
      np.testing.assert_array_equal(
          b["image"][i],
          preprocess.normalize(preprocess.resize_square(cat.load_image(p), S)))
      rp = b["relevant_product_ids"][i]
      assert sorted(rp[rp >= 0].tolist()) == sorted(relevant[q].tolist())
      negs = b["neg_query_index"][i][b["neg_valid"][i]]
      assert len(negs) == min(3, len(zero_queries[p]))
      assert len(set(negs.tolist())) == len(negs)
      for k, nq in enumerate(negs):
        assert labels[(int(nq), p)] == 0
        ids, _ = tok([tokenizer_lib.pre_caption(rel.queries[nq])], 35)
        np.testing.assert_array_equal(b["neg_query_ids"][i, k], ids[0])
      assert (b["neg_query_mask"][i][~b["neg_valid"][i]] == 0).all()
  # Resume mid-epoch (negatives are drawn from the per-example rng too).
  state = json.loads(json.dumps(it.get_state()))
  want = next(it)
  resumed = iter(ds)
  resumed.set_state(state)
  _equal(next(resumed), want)


def test_label1_policies(data):
  rel = data.train
  n1, n2 = int((rel.label == 1).sum()), int((rel.label == 2).sum())
  pairs = relevance_lib.stage2_pairs(rel, "positive", 0.5)
  assert len(pairs) == n1 + n2 and (pairs.weight == 1).all()
  pairs = relevance_lib.stage2_pairs(rel, "weighted", 0.3)
  assert len(pairs) == n1 + n2
  np.testing.assert_allclose(pairs.weight,
                             np.where(pairs.label == 1, 0.3, 1.0))
  pairs = relevance_lib.stage2_pairs(rel, "exclude", 0.5)
  assert len(pairs) == n2 and (pairs.label == 2).all()
  with pytest.raises(ValueError, match="label1_policy"):
    relevance_lib.stage2_pairs(rel, "ignore", 0.5)
  with pytest.raises(ValueError, match="max_relevant"):
    relevance_lib.relevant_table(rel, 2)


def test_eval_batches_pad_so_every_process_runs_the_same_count(data, tok):
  cat = data.test_catalog  # 73 products.
  seen, counts = [], []
  for index in range(3):
    ds = eval_datasets.eval_products_dataset(cat, batch_size=8, image_size=S,
                                             shard=(index, 3), tokenizer=tok)
    counts.append(len(ds))
    for b in ds:
      v = b["valid"].astype(bool)
      assert (b["product_id"][~v] == -1).all()
      assert (b["image"][~v] == 0).all()
      for row in np.flatnonzero(v):
        p = b["product_id"][row]
        np.testing.assert_allclose(
            b["image"][row], preprocess.eval_transform(cat.load_image(p), S))
      seen += b["product_id"][v].tolist()
  assert counts == [4, 4, 4]
  # Stage-1 key names for the image-text eval.
  b = eval_datasets.eval_products_dataset(cat, batch_size=8, image_size=S,
                                          shard=(0, 1), tokenizer=tok,
                                          text_prefix="")[0]
  assert {"ids", "mask", "image", "product_id", "valid"} == set(b)
  assert sorted(seen) == list(range(len(cat)))
  qseen = []
  for index in range(2):
    ds = eval_datasets.eval_queries_dataset(data.test, batch_size=16,
                                            shard=(index, 2), tokenizer=tok)
    assert len(ds) == 2
    for b in ds:
      v = b["valid"].astype(bool)
      qseen += b["query_index"][v].tolist()
      for row in np.flatnonzero(v):
        ids, _ = tok([tokenizer_lib.pre_caption(
            data.test.queries[b["query_index"][row]])], 35)
        np.testing.assert_array_equal(b["query_ids"][row], ids[0])
  assert sorted(qseen) == list(range(data.test.num_queries))


def test_real_fashion_pipeline_when_present(tok):
  if not os.path.isfile(os.path.join(FASHION, "styles.csv")):
    pytest.skip("real fashion catalog not present")
  cat = catalog_tables.load_catalog(os.path.join(FASHION, "styles.csv"))
  train = cat.subset("train")
  ds = _stage1(train, tok, num_epochs=None, batch_size=8, augment=False)
  it = iter(ds)
  next(it)
  state = it.get_state()
  b = next(it)
  for row, p in enumerate(b["product_id"]):
    path = os.path.join(FASHION, "images", f"{train.ids[p]}.jpg")
    want = preprocess.normalize(preprocess.resize_square(
        np.asarray(Image.open(path).convert("RGB")), S))
    np.testing.assert_array_equal(b["image"][row], want)
    ids, _ = tok([tokenizer_lib.pre_caption(train.titles[p])], 30)
    np.testing.assert_array_equal(b["ids"][row], ids[0])
  resumed = iter(ds)
  resumed.set_state(state)
  _equal(next(resumed), b)
  rel = relevance_tables.load_relevance(
      os.path.join(FASHION, "relevance_train.csv"), train)
  s2 = train_datasets.stage2_dataset(
      train, rel, train_datasets.PipelineOptions(batch_size=4, shard=(0, 1)),
      image_size=S, tokenizer=tok)
  b = next(iter(s2))
  labels = {(int(q), int(p)): int(l)
            for q, p, l in zip(rel.query, rel.product, rel.label)}
  for i in range(4):
    assert labels[(int(b["query_index"][i]), int(b["product_id"][i]))] >= 1
    for nq in b["neg_query_index"][i][b["neg_valid"][i]]:
      assert labels[(int(nq), int(b["product_id"][i]))] == 0


def test_training_data_path_does_not_import_tensorflow():
  code = (
      "import sys\n"
      "from dashclip_jax.data import sources, train_datasets\n"
      "s = sources.load_sources({'source': 'synthetic'})\n"
      "b = next(iter(train_datasets.stage1_dataset(s.train_catalog,"
      " train_datasets.PipelineOptions(batch_size=2, shard=(0, 1)),"
      " image_size=16)))\n"
      "print(sorted(m for m in sys.modules if m.split('.')[0] in"
      " ('tensorflow', 'tensorflow_datasets')))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True,
                       cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_real_fashion_two_process_sharding_covers_the_epoch_once(tok):
  if not os.path.isfile(os.path.join(FASHION, "styles.csv")):
    pytest.skip("real fashion catalog not present")
  test = catalog_tables.load_catalog(os.path.join(FASHION, "styles.csv")
                                     ).subset("test")
  # 1,185 products: shards of 592 (the odd one out is documented as left
  # out so both processes run the same number of steps), 74 batches of 8.
  per_shard = len(test) // 2
  batch = next(b for b in (8, 4, 2, 1) if per_shard % b == 0)
  seen = []
  for index in range(2):
    batches = list(_stage1(test, tok, num_epochs=1, batch_size=batch,
                           augment=False, shard=(index, 2)))
    seen.append(np.concatenate([b["product_id"] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen).tolist()) == list(range(2 * per_shard))


def test_config_pipeline_knobs_reach_the_datasets(monkeypatch):
  """data.worker_buffer_size / read_threads / max_relevant are the config's:
  the trainers' inputs pass them on (read_threads 0: the dataset's own)."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.runtime import config_files
  from dashclip_jax import model as model_lib
  from dashclip_jax.trainers import inputs
  # pylint: enable=g-import-not-at-top
  seen = []

  def recording(fn):
    def wrapped(*args, **kwargs):
      opts = next(a for a in args
                  if isinstance(a, train_datasets.PipelineOptions))
      seen.append({**vars(opts), **kwargs})
      return fn(*args, **kwargs)
    return wrapped
  for name in ("stage1_dataset", "stage2_dataset"):
    monkeypatch.setattr(train_datasets, name,
                        recording(getattr(train_datasets, name)))
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "stage2.py")
  tiny = model_lib.model_config("tiny")
  default = config_files.load_config(path, "tiny").data
  inputs.stage1_train(default, tiny, 8, seed=0)
  assert (seen[-1]["worker_buffer_size"], seen[-1]["read_threads"]) == (2,
                                                                        None)
  data = config_files.load_config(path, "tiny", {
      "data.worker_buffer_size": 3, "data.read_threads": 2,
      "data.max_relevant": 300}).data
  next(inputs.stage2_train(data, tiny, 8, seed=0))
  assert {k: seen[-1][k] for k in ("worker_buffer_size", "read_threads",
                                   "max_relevant")} == {
      "worker_buffer_size": 3, "read_threads": 2, "max_relevant": 300}
  # Too small a cap says which setting to raise (truncating would turn
  # relevant products into negatives).
  data.max_relevant = 1
  with pytest.raises(ValueError, match="max_relevant=1"):
    inputs.stage2_train(data, tiny, 8, seed=0)
