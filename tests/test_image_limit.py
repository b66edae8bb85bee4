"""The image pixel limit (data.max_image_pixels, data/images.py): an image
over it is refused from its header, and skipped, counted and named like any
bad image."""

import io

import numpy as np
from PIL import Image
import pytest

from dashclip_jax.data import catalog_tables
from dashclip_jax.data import eval_datasets
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import sources
from dashclip_jax.data import train_datasets


def _jpeg(width, height):
  arr = np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                          dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG")
  return buf.getvalue()


@pytest.fixture
def pixel_limit(monkeypatch):
  """Sets the limit as a job's config does; undone after the test."""
  monkeypatch.setenv("DASHCLIP_MAX_IMAGE_PIXELS", "0")

  def set_limit(limit):
    sources.load_sources({"source": "synthetic", "max_image_pixels": limit,
                          "synthetic": {"num_products": 8,
                                        "num_train_queries": 2,
                                        "num_test_queries": 2}})
    assert images_lib.max_pixels() == limit
  return set_limit


def test_an_image_over_the_limit_is_refused_from_its_header(pixel_limit):
  pixel_limit(500)
  big = _jpeg(40, 30)  # 1,200 pixels.
  assert images_lib.decode_image(_jpeg(20, 20), "row 1").shape == (20, 20, 3)
  # Only the header is read: a file cut after it is refused for its size,
  # not for its missing pixels.
  header = big[:big.index(b"\xff\xc0") + 20]  # Up to the frame header.
  for data in (big, header):
    with pytest.raises(images_lib.ImageError) as e:
      images_lib.decode_image(data, "styles.csv line 3 (product 101)")
    assert e.value.where == "styles.csv line 3 (product 101)"
    assert e.value.reason == ("image of 40x30 = 1,200 pixels is over "
                              "data.max_image_pixels (500); not decoded")
  pixel_limit(0)  # No limit.
  assert images_lib.decode_image(big).shape == (30, 40, 3)


def test_an_image_over_the_limit_is_skipped_counted_and_named(tmp_path,
                                                              pixel_limit):
  (tmp_path / "images").mkdir()
  rows = [f"{100 + i},Shirts,Shirt {i},train" for i in range(6)]
  (tmp_path / "styles.csv").write_text(
      "id,articleType,productDisplayName,split\n" + "\n".join(rows) + "\n")
  for i in range(6):
    size = (40, 30) if i == 1 else (12, 10)  # Product 101: 1,200 pixels.
    (tmp_path / "images" / f"{100 + i}.jpg").write_bytes(_jpeg(*size))
  pixel_limit(500)
  cat = catalog_tables.load_catalog(str(tmp_path / "styles.csv"))
  it = iter(train_datasets.stage1_dataset(
      cat, train_datasets.PipelineOptions(batch_size=5, shard=(0, 1),
                                          num_epochs=1, max_bad_fraction=1.0),
      image_size=8))
  assert sum(len(b["product_id"]) for b in it) == 5
  products = eval_datasets.eval_products_dataset(cat, batch_size=6,
                                                 image_size=8, shard=(0, 1))
  batches = list(products)
  assert sum(int(b["valid"].sum()) for b in batches) == 5
  for culprits in (it.bad.culprits, products.bad.culprits):
    assert len(culprits) == 1, culprits
    assert culprits[0].startswith(
        "styles.csv line 3 (product 101): bad image (image of 40x30")
    assert "max_image_pixels" in culprits[0]
