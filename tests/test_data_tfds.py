"""CSV + image files and the TFDS/ArrayRecord path yield identical examples."""

import os

import numpy as np
from PIL import Image
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

# pylint: disable=g-import-not-at-top,wrong-import-position
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import sources
from dashclip_jax.data import tfds_builders
from dashclip_jax.data import train_datasets
from dashclip_jax.model import tokenizer as tokenizer_lib

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion")


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.BlipTokenizer.from_vocab()


def _csv_catalog(root, n=30):
  (root / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines = ["id,gender,articleType,productDisplayName\n"]
  for i in range(n):
    img = rng.integers(0, 255, (36, 28, 3), np.uint8)
    Image.fromarray(img).save(root / "images" / f"{1000 + i}.jpg")
    lines.append(f"{1000 + i},{['Men', 'Women'][i % 2]},"
                 f"{['Shirts', 'Bags', 'Watches'][i % 3]},Item {i} blue\n")
  lines.append("2000,Men,Shirts,No image on disk\n")  # Counted, not stored.
  (root / "styles.csv").write_text("".join(lines))
  rel = ["query_id,query,product_id,label\n"]
  for q in range(6):
    for i in range(0, n, 4):
      rel.append(f"q{q},query {q},{1000 + i},{(q + i) % 3}\n")
  (root / "rel.csv").write_text("".join(rel))


def _assert_same_catalog(a, b):
  assert a.ids == b.ids and a.titles == b.titles and a.split == b.split
  assert a.category_names == b.category_names
  np.testing.assert_array_equal(a.category, b.category)
  assert a.attributes == b.attributes and a.where == b.where
  for i in range(len(a)):
    np.testing.assert_array_equal(a.load_image(i), b.load_image(i))


def test_csv_and_arrayrecord_give_identical_examples(tmp_path, tok):
  root = tmp_path / "fashion"
  _csv_catalog(root)
  csv_cat = catalog_tables.load_catalog(str(root / "styles.csv"),
                                        test_fraction=0.3, max_bad_fraction=0.1)
  assert len(csv_cat) == 30 and csv_cat.bad.counts == {"missing image": 1}
  train = csv_cat.subset("train")
  csv_rel = relevance_tables.load_relevance(str(root / "rel.csv"), train,
                                            max_bad_fraction=0.9)
  out = str(tmp_path / "tfds")
  tfds_builders.prepare_catalog(csv_cat, out)
  tfds_builders.prepare_relevance({"train": (csv_rel, train)}, out)

  ar_cat = tfds_builders.load_catalog_tfds(out)
  _assert_same_catalog(ar_cat, csv_cat)
  ar_train = ar_cat.subset("train")
  ar_rel = tfds_builders.load_relevance_tfds(out, "train", ar_train)
  assert ar_rel.queries == csv_rel.queries
  for f in ("query", "product", "label"):
    np.testing.assert_array_equal(getattr(ar_rel, f), getattr(csv_rel, f))

  # Same pipeline output, augmentation included (images come from disk in
  # the ArrayRecord case, lazily per record).
  opts = train_datasets.PipelineOptions(batch_size=4, shard=(0, 1),
                                        num_epochs=1)
  kw = dict(image_size=24, tokenizer=tok)
  for a, b in zip(train_datasets.stage1_dataset(ar_train, opts, **kw),
                  train_datasets.stage1_dataset(train, opts, **kw)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  s2 = lambda c, r: list(train_datasets.stage2_dataset(c, r, opts, **kw))
  for a, b in zip(s2(ar_train, ar_rel), s2(train, csv_rel)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Through the config entry point too.
  src = sources.load_sources({"source": "tfds", "tfds_dir": out})
  assert src.train_catalog.ids == train.ids
  assert src.train_relevance.queries == csv_rel.queries


def test_real_fashion_subset_round_trips_when_present(tmp_path):
  if not os.path.isfile(os.path.join(FASHION, "styles.csv")):
    pytest.skip("real fashion catalog not present")
  cat = catalog_tables.load_catalog(os.path.join(FASHION, "styles.csv"))
  # Every 40th product keeps the test fast while covering both splits.
  sub = cat.take(range(0, len(cat), 40))
  out = str(tmp_path / "tfds")
  tfds_builders.prepare_catalog(sub, out)
  back = tfds_builders.load_catalog_tfds(out)
  _assert_same_catalog(back, sub)
