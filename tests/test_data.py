"""Catalog/relevance loading, bad-record counting, synthetic data, augment."""

import io
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
import pytest

from dashclip_jax.data import augment
from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import images as images_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import sources
from dashclip_jax.data import synthetic

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                       "data", "fashion")
HEADER = "id,title,category,image,split\n"


def _jpeg(path, seed, size=(40, 32)):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
      path, quality=90)


def _write_catalog(tmp_path, lines, n_images=10):
  root = tmp_path / "cat"
  (root / "images").mkdir(parents=True)
  for i in range(n_images):
    _jpeg(root / "images" / f"{i}.jpg", i)
  (root / "catalog.csv").write_text(HEADER + "".join(lines))
  return root


def _good_lines(n):
  return [f"{i},Product {i} title,cat{i % 3},images/{i}.jpg,train\n"
          for i in range(n)]


def test_catalog_reads_columns_and_aligns_images(tmp_path):
  root = _write_catalog(tmp_path, _good_lines(10))
  cat = catalog_tables.load_catalog(str(root / "catalog.csv"))
  assert cat.ids == [str(i) for i in range(10)]
  assert cat.titles[3] == "Product 3 title"
  assert cat.category_names == ["cat0", "cat1", "cat2"]
  np.testing.assert_array_equal(cat.category, [i % 3 for i in range(10)])
  expected = np.asarray(Image.open(root / "images" / "7.jpg").convert("RGB"))
  np.testing.assert_array_equal(cat.load_image(7), expected)
  assert cat.where[0] == "catalog.csv line 2"
  assert cat.bad.num_bad == 0


def test_every_planted_bad_catalog_row_is_counted_and_named(tmp_path):
  lines = _good_lines(10)
  outside = tmp_path / "outside.jpg"
  _jpeg(outside, 99)
  lines += [
      "10,Title, with comma,cat0,images/1.jpg,train\n",   # line 12: 6 fields
      "11,,cat0,images/1.jpg,train\n",                     # line 13: no title
      "12,Twelve,cat0,images/missing.jpg,train\n",         # line 14
      "13,Thirteen,cat0,../outside.jpg,train\n",           # line 15: escapes
      f"14,Fourteen,cat0,{outside},train\n",               # line 16: absolute
      "3,Duplicate,cat0,images/3.jpg,train\n",             # line 17
      ",No id,cat0,images/3.jpg,train\n",                  # line 18
  ]
  root = _write_catalog(tmp_path, lines)
  cat = catalog_tables.load_catalog(str(root / "catalog.csv"),
                                    max_bad_fraction=0.5)
  assert len(cat) == 10
  bad = cat.bad
  assert dict(bad.counts) == {
      "malformed row": 1, "empty title": 1, "missing image": 1,
      "path escapes catalog root": 2, "duplicate id": 1, "missing id": 1}
  assert bad.seen == 17
  # Every culprit is named by file and line, in file order.
  lines_named = [c.split(":")[0] for c in bad.culprits]
  assert lines_named == [f"catalog.csv line {n}" for n in range(12, 19)]
  assert "6 fields, expected 5" in bad.culprits[0]
  summary = bad.summary()
  assert "skipped 7 of 17" in summary and "catalog.csv line 12" in summary


def test_too_many_bad_rows_stop_with_a_clear_error(tmp_path):
  lines = _good_lines(3) + [f"{i},T,cat0,images/none{i}.jpg,train\n"
                            for i in range(3, 6)]
  root = _write_catalog(tmp_path, lines)
  with pytest.raises(br.BadDataError, match=r"catalog.csv line 5: missing "
                     r"image.*max_bad_fraction=0.1"):
    catalog_tables.load_catalog(str(root / "catalog.csv"), max_bad_fraction=0.1)


def test_check_images_counts_corrupt_files(tmp_path):
  root = _write_catalog(tmp_path, _good_lines(10))
  (root / "images" / "4.jpg").write_bytes(b"not a jpeg at all")
  cat = catalog_tables.load_catalog(str(root / "catalog.csv"),
                                    check_images=True, max_bad_fraction=0.2)
  assert "4" not in cat.ids and len(cat) == 9
  assert cat.bad.counts == {"corrupt image": 1}
  assert cat.bad.culprits[0].startswith("catalog.csv line 6: corrupt image")


def test_missing_split_column_uses_deterministic_hash(tmp_path):
  root = tmp_path / "c"
  (root / "images").mkdir(parents=True)
  for i in range(50):
    _jpeg(root / "images" / f"{i}.jpg", i, size=(8, 8))
  (root / "styles.csv").write_text(
      "id,productDisplayName,articleType\n" +
      "".join(f"{i},Title {i},Shirts\n" for i in range(50)))
  cat = catalog_tables.load_catalog(str(root / "styles.csv"), test_fraction=0.3)
  assert cat.split == [catalog_lib.hash_split(str(i), 0.3) for i in range(50)]
  assert 5 < cat.split.count("test") < 25
  assert len(cat.subset("train")) + len(cat.subset("test")) == 50


def test_relevance_rows_of_the_other_split_say_so(tmp_path):
  """A catalog without a split column is split by hash; a train relevance
  row naming a test product is skipped as "product in another split",
  naming the split (it read "unknown product 10235", though the product is
  in the catalog); a product in no split is still unknown."""
  root = tmp_path / "c"
  (root / "images").mkdir(parents=True)
  for i in range(20):
    _jpeg(root / "images" / f"{i}.jpg", i, size=(8, 8))
  (root / "styles.csv").write_text(
      "id,productDisplayName,articleType\n" +
      "".join(f"{i},Title {i},Shirts\n" for i in range(20)))
  split = {str(i): catalog_lib.hash_split(str(i), 0.3) for i in range(20)}
  test_id = next(i for i, s in split.items() if s == "test")
  train_ids = [i for i, s in split.items() if s == "train"][:3]
  (root / "relevance_train.csv").write_text(
      "query_id,query,product_id,label\n"
      + "".join(f"q{k},shirt {k},{p},2\n" for k, p in enumerate(train_ids))
      + f"q9,shirt,{test_id},2\nq9,shirt,999,1\n")
  got = sources.load_sources(dict(
      source="table", catalog_path=str(root / "styles.csv"),
      relevance_train_path=str(root / "relevance_train.csv"),
      test_fraction=0.3, max_bad_fraction=1.0))
  rel = got.train_relevance
  assert len(rel) == 3
  assert dict(rel.bad.counts) == {"product in another split": 1,
                                  "unknown product": 1}
  assert rel.bad.culprits == [
      f"relevance_train.csv line 5: product in another split (product "
      f"{test_id} is in the test split)",
      "relevance_train.csv line 6: unknown product (product_id '999')"]


def test_parquet_with_image_bytes_matches_csv_with_files(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  root = _write_catalog(tmp_path, _good_lines(6))
  csv_cat = catalog_tables.load_catalog(str(root / "catalog.csv"))
  table = pa.table({
      "sku": [f"{i}" for i in range(6)],
      "name": [f"Product {i} title" for i in range(6)],
      "aisle": [f"cat{i % 3}" for i in range(6)],
      "jpeg": [(root / "images" / f"{i}.jpg").read_bytes() for i in range(6)],
  })
  pq.write_table(table, tmp_path / "cat.parquet")
  cols = catalog_lib.CatalogColumns(id="sku", title="name", category="aisle",
                                    image=None, image_bytes="jpeg")
  pq_cat = catalog_tables.load_catalog(str(tmp_path / "cat.parquet"), cols)
  assert pq_cat.ids == csv_cat.ids and pq_cat.titles == csv_cat.titles
  np.testing.assert_array_equal(pq_cat.category, csv_cat.category)
  for i in range(6):
    np.testing.assert_array_equal(pq_cat.load_image(i), csv_cat.load_image(i))
  assert pq_cat.where[2] == "cat.parquet row 2"


def test_wrong_column_mapping_names_the_columns(tmp_path):
  root = _write_catalog(tmp_path, _good_lines(3))
  cols = catalog_lib.CatalogColumns(title="productDisplayName")
  with pytest.raises(ValueError, match="productDisplayName"):
    catalog_tables.load_catalog(str(root / "catalog.csv"), cols)


def test_wrong_relevance_column_mapping_names_the_columns(tmp_path):
  root = _write_catalog(tmp_path, _good_lines(3))
  cat = catalog_tables.load_catalog(str(root / "catalog.csv"))
  path = tmp_path / "rel.csv"
  path.write_text("query_id,query,product_id,label\nq1,red shirt,0,2\n")
  cols = relevance_lib.RelevanceColumns(query="search_term")
  with pytest.raises(ValueError, match=r"rel.csv: columns \['search_term'\] "
                     "not found"):
    relevance_tables.load_relevance(str(path), cat, cols)


def test_every_planted_bad_relevance_row_is_counted_and_named(tmp_path):
  root = _write_catalog(tmp_path, _good_lines(5))
  cat = catalog_tables.load_catalog(str(root / "catalog.csv"))
  rows = [
      "q1,red shirt,0,2", "q1,red shirt,1,1", "q2,blue bag,2,0",
      "q2,blue bag,3,2",
      "q3,hat,999,2",            # line 6: unknown product
      "q3,hat,1,3",              # line 7: label outside
      "q3,hat,1,x",              # line 8: label not a number
      ",,1,2",                   # line 9: empty query
      "q1,red shirt,0,1",        # line 10: duplicate pair
      "q4,too,many,fields,2",    # line 11: malformed
      "q2,green bag,4,2",        # line 12: query text differs
  ]
  path = tmp_path / "rel.csv"
  path.write_text("query_id,query,product_id,label\n" + "\n".join(rows) + "\n")
  rel = relevance_tables.load_relevance(str(path), cat, max_bad_fraction=0.9)
  assert len(rel) == 4 and rel.queries == ["red shirt", "blue bag"]
  np.testing.assert_array_equal(rel.label, [2, 1, 0, 2])
  np.testing.assert_array_equal(rel.product, [0, 1, 2, 3])
  assert dict(rel.bad.counts) == {
      "unknown product": 1, "label outside {0,1,2}": 2, "empty query": 1,
      "duplicate pair": 1, "malformed row": 1, "query text differs": 1}
  assert [c.split(":")[0] for c in rel.bad.culprits] == [
      f"rel.csv line {n}" for n in range(6, 13)]
  assert rel.qrels() == [{0: 2, 1: 1}, {3: 2}]
  with pytest.raises(br.BadDataError, match="rel.csv line 6"):
    relevance_tables.load_relevance(str(path), cat, max_bad_fraction=0.2)


def test_synthetic_data_is_deterministic_and_follows_its_rules():
  d = synthetic.synthetic_data()
  again = synthetic.synthetic_data.__wrapped__()  # Bypass the cache.
  assert d.catalog.ids == again.catalog.ids
  assert d.catalog.titles == again.catalog.titles
  assert d.train.queries == again.train.queries
  np.testing.assert_array_equal(d.train.label, again.train.label)
  assert all(d.catalog.image_bytes(i) == again.catalog.image_bytes(i)
             for i in range(len(d.catalog)))
  assert 300 <= len(d.catalog) <= 500
  assert set(d.catalog.split) == {"train", "test"}
  # Every judged pair carries the rule's label.
  by_id = {p.id: p for p in d.products}
  text_to_query = {}
  for rel, cat in ((d.train, d.train_catalog), (d.test, d.test_catalog)):
    for q, p, lab in zip(rel.query, rel.product, rel.label):
      product = by_id[cat.ids[p]]
      query = text_to_query.setdefault(rel.queries[q], _parse(rel.queries[q]))
      assert synthetic.label(query, product) == lab
    assert set(np.unique(rel.label)) <= {0, 1, 2}
  # Test qrels are complete: every label>0 test product is listed.
  qrels = d.test.qrels()
  for q, text in enumerate(d.test.queries):
    want = {i for i, pid in enumerate(d.test_catalog.ids)
            if synthetic.label(_parse(text), by_id[pid]) > 0}
    assert set(qrels[q]) == want


def _parse(text):
  words = text.split()
  kw = {"type": next(t for t in synthetic.TYPES if t.lower() == words[-1])}
  for w in words[:-1]:
    for attr, values in (("gender", synthetic.GENDERS),
                         ("colour", synthetic.COLOURS),
                         ("pattern", synthetic.PATTERNS),
                         ("brand", synthetic.BRANDS)):
      for v in values:
        if v.lower() == w:
          kw[attr] = v
  return synthetic.Query(**kw)


def test_synthetic_images_follow_attributes():
  d = synthetic.synthetic_data()
  masks = {}
  for i, p in enumerate(d.products[:120]):
    img = d.catalog.load_image(i).astype(np.int32)
    fg = np.abs(img - 255).sum(-1) > 30
    if p.pattern == "Solid" and p.colour != "White":
      # Fill colour: the median foreground pixel is the product's colour.
      med = np.median(img[fg], axis=0)
      assert np.abs(med - synthetic.COLOURS[p.colour]).max() <= 15, p
    assert p.colour.lower() in d.catalog.titles[i].lower()
    assert d.catalog.category_names[d.catalog.category[i]] == p.type
    masks.setdefault(p.type, []).append(fg)
  # Shape follows type: masks of one type overlap more than across types.
  iou = lambda a, b: (a & b).sum() / max((a | b).sum(), 1)
  types = sorted(masks)
  for t in types:
    same = np.mean([iou(a, b) for a in masks[t][:3] for b in masks[t][3:6]])
    other = np.mean([iou(masks[t][0], masks[u][0]) for u in types if u != t])
    assert same > other, t


def test_real_fashion_catalog_when_present():
  if not os.path.isfile(os.path.join(FASHION, "styles.csv")):
    pytest.skip("real fashion catalog not present")
  cat = catalog_tables.load_catalog(os.path.join(FASHION, "styles.csv"))
  assert len(cat) == 11882 and cat.bad.num_bad == 0
  assert len(cat.category_names) == 113
  assert cat.split.count("train") == 10697 and cat.split.count("test") == 1185
  train, test = cat.subset("train"), cat.subset("test")
  rel = relevance_tables.load_relevance(
      os.path.join(FASHION, "relevance_train.csv"), train)
  qrels = relevance_tables.load_relevance(
      os.path.join(FASHION, "qrels_test.csv"), test)
  assert rel.bad.num_bad == 0 and qrels.bad.num_bad == 0
  assert rel.num_queries == 3452 and qrels.num_queries == 600
  assert qrels.label.min() >= 1
  # Train relevance names only train products: against the test split every
  # row is an unknown product, counted and refused.
  with pytest.raises(br.BadDataError, match="unknown product"):
    relevance_tables.load_relevance(os.path.join(FASHION, "qrels_test.csv"),
                                    train)
  img = cat.load_image(0)
  assert img.shape == (128, 128, 3) and img.dtype == np.uint8


# --- augmentation ----------------------------------------------------------


def _photo(seed=0, h=60, w=80):
  rng = np.random.default_rng(seed)
  base = rng.integers(40, 200, (h // 4, w // 4, 3), np.uint8)
  return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def test_crop_params_follow_random_resized_crop():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = augment.crop_params(rng, 60, 80, (0.5, 1.0))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
    area = h * w / (60 * 80)
    assert 0.45 <= area <= 1.0
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
  # No try fits a 1x100 strip: centre crop clamped to the ratio range.
  assert augment.crop_params(rng, 1, 100, (0.9, 1.0)) == (0, 49, 1, 1)


def test_autocontrast_and_equalize_on_hand_worked_images():
  """The ops come from PIL.ImageOps; these check what BLIP's pipeline needs
  of them on channels worked by hand (and that both keep shape and dtype)."""
  # Channel 0 spans [50, 150], channel 1 is flat, channel 2 spans [0, 255].
  img = np.zeros((2, 2, 3), np.uint8)
  img[..., 0] = [[50, 100], [100, 150]]
  img[..., 1] = 77
  img[..., 2] = [[0, 255], [255, 0]]
  out = augment.autocontrast(img)
  assert out.shape == img.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], [[0, 127], [127, 255]])
  np.testing.assert_array_equal(out[..., 1], img[..., 1])  # Flat: unchanged.
  np.testing.assert_array_equal(out[..., 2], img[..., 2])  # Full range.
  # Equalize: 4 levels of 256 pixels each spread over [0, 255]; PIL's
  # step is (1024 - 256) // 255 = 3 and level k maps to (1 + 256 k) // 3.
  levels = np.repeat(np.array([10, 20, 30, 40], np.uint8), 256).reshape(
      64, 16)
  gray = np.repeat(levels[..., None], 3, axis=-1)
  eq = augment.equalize(gray)
  assert eq.shape == gray.shape and eq.dtype == np.uint8
  np.testing.assert_array_equal(np.unique(eq[..., 0]), [0, 85, 171, 255])
  np.testing.assert_array_equal(eq[..., 0], eq[..., 2])


def test_translate_and_the_no_op_enhancers_at_magnitude_5():
  img = _photo(2)
  out = augment.translate_x(img, 5.0)
  np.testing.assert_array_equal(out[:, :-5], img[:, 5:])
  assert (out[:, -5:] == 128).all()
  out = augment.translate_y(img, -5.0)
  np.testing.assert_array_equal(out[5:], img[:-5])
  # At M=5 brightness and sharpness have factor 1.0: no-ops, as in BLIP.
  rng = np.random.default_rng(0)
  for name in ("Brightness", "Sharpness", "Identity"):
    np.testing.assert_array_equal(augment.apply_op(img, name, 5, rng), img)


def _pil_reference(img, transform):
  """PIL's `transform(image, fill)` of img, with the pixels whose bilinear
  samples lie wholly inside (`inside`) or outside (`outside`) the source.

  At the source's edge PIL clamps where OpenCV blends in the fill, so the
  comparison skips the pixels one pixel around that edge.
  """
  ref = np.asarray(transform(Image.fromarray(img), augment.FILL))
  cover = np.pad(np.asarray(transform(Image.new("L", img.shape[1::-1], 255),
                                      0)), 1)
  grow = lambda f: np.asarray(Image.fromarray(cover).filter(f))[1:-1, 1:-1]
  return (ref.astype(int), grow(ImageFilter.MinFilter(3)) == 255,
          grow(ImageFilter.MaxFilter(3)) == 0)


def _pil_geometric(name, amount, size):
  """BLIP's ops (OpenCV matrices that move source pixels) as PIL transforms
  (which map output to input, pixel centres at +0.5 where OpenCV has 0)."""
  w, h = size
  if name == "Rotate":  # About OpenCV's (W/2, H/2), counter-clockwise.
    return lambda im, fill: im.rotate(amount, Image.BILINEAR, fillcolor=fill,
                                      center=(w / 2 + 0.5, h / 2 + 0.5))
  # ShearX [[1, f, 0], [0, 1, 0]]: output (x, y) samples input (x - f y, y).
  data = ((1, -amount, amount / 2, 0, 1, 0) if name == "ShearX" else
          (1, 0, 0, -amount, 1, amount / 2))
  return lambda im, fill: im.transform(im.size, Image.AFFINE, data,
                                       Image.BILINEAR, fillcolor=fill)


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY"])
def test_rotate_and_shear_match_pil(name):
  """At M=5 and M=10: +-15/30 degrees, shear +-0.15/0.3 (BLIP's levels),
  either sign, gray fill outside the source."""
  img = _photo(2)
  full = 30.0 if name == "Rotate" else 0.3  # The level at M=10.
  signs = set()
  for magnitude in (5, 10):
    for seed in range(4):
      out = augment.apply_op(img, name, magnitude,
                             np.random.default_rng(seed)).astype(int)
      err = {}
      for sign in (1, -1):
        ref, inside, outside = _pil_reference(img, _pil_geometric(
            name, sign * full * magnitude / 10, img.shape[1::-1]))
        assert inside.mean() > 0.7 and outside.any()
        err[sign] = np.abs(out - ref)[inside].max()
        if err[sign] <= 1:
          signs.add(sign)
          assert (out[outside] == 128).all()
      # One sign matches PIL (OpenCV's fixed-point bilinear: +-1), the
      # other is far off: the op moved the pixels.
      assert sorted(err.values())[0] <= 1 < 20 < sorted(err.values())[1], err
  assert signs == {1, -1}


@pytest.mark.parametrize("magnitude", [0, 2, 10])
def test_brightness_and_sharpness_match_pil(magnitude):
  """Away from M=5 both change the image, exactly as PIL's ImageEnhance."""
  img = _photo(1)
  factor = magnitude / 10 * 1.8 + 0.1  # BLIP's enhance_level_to_args.
  rng = np.random.default_rng(0)
  for name, enhancer in (("Brightness", ImageEnhance.Brightness),
                         ("Sharpness", ImageEnhance.Sharpness)):
    out = augment.apply_op(img, name, magnitude, rng)
    np.testing.assert_array_equal(
        out, np.asarray(enhancer(Image.fromarray(img)).enhance(factor)),
        err_msg=name)
    assert np.abs(out.astype(int) - img).max() > 5, name


def test_train_augment_is_a_function_of_the_rng():
  img = _photo(3)
  a = augment.train_augment(img, 48, np.random.default_rng(7), min_scale=0.2)
  b = augment.train_augment(img, 48, np.random.default_rng(7), min_scale=0.2)
  c = augment.train_augment(img, 48, np.random.default_rng(8), min_scale=0.2)
  assert a.shape == (48, 48, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_decode_image_names_culprit():
  with pytest.raises(images_lib.ImageError, match="styles.csv line 9"):
    images_lib.decode_image(b"\x89PNG garbage", "styles.csv line 9")
  buf = io.BytesIO()
  Image.new("L", (5, 4), 77).save(buf, format="PNG")
  out = images_lib.decode_image(buf.getvalue())
  assert out.shape == (4, 5, 3) and (out == 77).all()


def test_load_sources_by_config(tmp_path):
  from dashclip_jax.data import sources  # pylint: disable=g-import-not-at-top
  s = sources.load_sources(None)  # Default: the embedded synthetic data.
  d = synthetic.synthetic_data()
  assert s.train_catalog.ids == d.train_catalog.ids
  assert s.test_relevance.queries == d.test.queries
  root = _write_catalog(tmp_path, [
      f"{i},Product {i},cat0,images/{i}.jpg,{'test' if i < 3 else 'train'}\n"
      for i in range(10)])
  (root / "qrels_test.csv").write_text(
      "query_id,query,product_id,label\nq,product,1,2\n")
  cfg = {"source": "table", "catalog_path": str(root / "catalog.csv"),
         "relevance_test_path": str(root)}  # A folder: its qrels_test.csv.
  s = sources.load_sources(cfg)
  assert s.test_catalog.ids == ["0", "1", "2"] and len(s.train_catalog) == 7
  assert s.train_relevance is None and s.test_relevance.qrels() == [{1: 2}]
  # data.split: "all" ranks every product, judged by the test relevance.
  cat, rel = s.of_split("all")
  assert len(cat) == 10 and cat.ids[rel.product[0]] == "1"
  assert rel.num_products == 10 and rel.qrels() == [{1: 2}]
  assert s.of_split("train") == (s.train_catalog, None)
  with pytest.raises(ValueError, match="data.split must be one of test, "
                     "train, all, got 'val'"):
    s.of_split("val")
  with pytest.raises(ValueError, match="data.source"):
    sources.load_sources({"source": "webdataset"})


def test_load_sources_names_the_key_that_replaced_a_retired_one(tmp_path):
  from dashclip_jax.data import sources  # pylint: disable=g-import-not-at-top
  for old, new in (("catalog_dir", "data.path"),
                   ("catalog_file", "data.catalog_path"),
                   ("qrels_path", "data.relevance_test_path"),
                   ("qrels_max_bad_fraction",
                    "data.relevance_test_max_bad_fraction")):
    with pytest.raises(ValueError, match=rf"config.data.{old} is no longer "
                       rf"a config key: set config.{new} instead"):
      sources.load_sources({"source": "table", old: str(tmp_path)})
  with pytest.raises(ValueError, match="source='csv' is retired: set "
                     "source='table' with data.catalog_path"):
    sources.load_sources({"source": "csv"})


def test_many_bad_records_of_one_kind_do_not_hide_another():
  bad = br.BadRecords("catalog x.csv", max_bad_fraction=1.0)
  for line in range(2, 12):
    bad.bad(f"x.csv line {line}", "missing image")
  bad.bad("x.csv line 12", "empty title")
  assert bad.counts == {"missing image": 10, "empty title": 1}
  named = [c.split(":")[0] for c in bad.culprits]
  assert named == ["x.csv line 2", "x.csv line 3", "x.csv line 4",
                   "x.csv line 12"]
  assert "x.csv line 12: empty title" in bad.summary()


def test_fashion_source_takes_given_relevance_files(tmp_path):
  """A curated relevance set replaces the folder's own; a folder path means
  its relevance_train.csv; a missing one is named."""
  root = tmp_path / "fashion"
  os.makedirs(root / "images")
  with open(root / "styles.csv", "w") as f:
    f.write("id,articleType,productDisplayName,split\n"
            "1,Shirts,Blue Shirt,train\n2,Watches,Gold Watch,train\n"
            "3,Shirts,Red Shirt,test\n")
  for pid in (1, 2, 3):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        root / "images" / f"{pid}.jpg")
  header = "query_id,query,product_id,label\n"
  (root / "relevance_train.csv").write_text(header + "q0,shirts,1,2\n")
  curated = tmp_path / "expanded"
  os.makedirs(curated)
  (curated / "relevance_train.csv").write_text(
      header + "q0,shirts,1,2\nq1,watches,2,2\nq1,watches,1,0\n")
  cfg = {"source": "fashion", "path": str(root)}
  assert len(sources.load_sources(cfg).train_relevance.query_ids) == 1
  for given in (str(curated), str(curated / "relevance_train.csv")):
    rel = sources.load_sources(dict(cfg, relevance_train_path=given))
    assert list(rel.train_relevance.query_ids) == ["q0", "q1"]
  with pytest.raises(FileNotFoundError, match="data.relevance_train_path"):
    sources.load_sources(dict(cfg, relevance_train_path=str(tmp_path / "x")))
