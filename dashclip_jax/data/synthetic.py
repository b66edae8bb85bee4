"""Embedded synthetic catalog (issue 4 e): the default data on a fresh machine.

Generated deterministically by code (no stored data, no download): a few
hundred products whose rendered images follow their attributes,

  * shape   <- product type (t-shirt, trousers, shoe, bag, watch, ...),
  * fill    <- colour,
  * texture <- pattern (solid, striped, dotted, checked),

plus titles ("Corvo Women Striped Red Skirt"), aisle categories (the type;
types are grouped into sibling groups like the fashion set's subCategory),
and shopping queries with graded labels made by the fashion set's rule:

  label 2: the product has the query's type and meets every other constraint
           (gender, colour, pattern, brand; a Men/Women query accepts Unisex),
  label 1: the query's type with exactly one other constraint unmet, or a
           sibling type meeting all others,
  label 0: anything else.

Train relevance lists, per query over TRAIN products, every label-2 product
(up to 30), label-1 up to 15, 10 hard 0s (same or sibling type) and 10 random
0s. Test relevance (qrels) lists every (query, TEST product) with label > 0;
every other test product is label 0 -- the same layout as the fashion set.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import cv2
import numpy as np
from PIL import Image, ImageDraw

from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import catalog_tables
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables

# type -> (sibling group, singular noun used in titles)
TYPES = {
    "Tshirts": ("Topwear", "T-shirt"),
    "Shirts": ("Topwear", "Shirt"),
    "Jackets": ("Topwear", "Jacket"),
    "Trousers": ("Bottomwear", "Trousers"),
    "Shorts": ("Bottomwear", "Shorts"),
    "Skirts": ("Bottomwear", "Skirt"),
    "Shoes": ("Footwear", "Shoes"),
    "Sandals": ("Footwear", "Sandals"),
    "Bags": ("Accessories", "Bag"),
    "Watches": ("Accessories", "Watch"),
    "Caps": ("Accessories", "Cap"),
}
COLOURS = {
    "Black": (30, 30, 30), "White": (242, 242, 242), "Red": (200, 30, 40),
    "Blue": (30, 70, 200), "Green": (40, 150, 60), "Yellow": (240, 205, 40),
    "Pink": (240, 130, 180), "Brown": (130, 80, 40),
}
PATTERNS = ("Solid", "Striped", "Dotted", "Checked")
GENDERS = ("Men", "Women", "Unisex")
BRANDS = ("Alder", "Brisk", "Corvo", "Dune", "Ember", "Fjell")

# Shapes in unit coordinates of the product's box: ("poly", points),
# ("ellipse", box), ("pie", box, start, end), ("ring", box, width).
_LONG_SLEEVES = [(0.35, 0.05), (0.65, 0.05), (0.95, 0.2), (1.0, 0.9),
                 (0.85, 0.9), (0.75, 0.4), (0.75, 1.0), (0.25, 1.0),
                 (0.25, 0.4), (0.15, 0.9), (0.0, 0.9), (0.05, 0.2)]
SHAPES = {
    "Tshirts": [("poly", [(0.3, 0.1), (0.7, 0.1), (1.0, 0.3), (0.85, 0.45),
                          (0.75, 0.38), (0.75, 1.0), (0.25, 1.0), (0.25, 0.38),
                          (0.15, 0.45), (0.0, 0.3)])],
    "Shirts": [("poly", _LONG_SLEEVES)],
    "Jackets": [("poly", _LONG_SLEEVES), ("ellipse", (0.3, -0.12, 0.7, 0.2))],
    "Trousers": [("poly", [(0.2, 0.0), (0.8, 0.0), (0.85, 1.0), (0.58, 1.0),
                           (0.5, 0.3), (0.42, 1.0), (0.15, 1.0)])],
    "Shorts": [("poly", [(0.15, 0.2), (0.85, 0.2), (0.9, 0.75), (0.55, 0.75),
                         (0.5, 0.45), (0.45, 0.75), (0.1, 0.75)])],
    "Skirts": [("poly", [(0.3, 0.15), (0.7, 0.15), (0.9, 0.85), (0.1, 0.85)])],
    "Shoes": [("poly", [(0.05, 0.55), (0.45, 0.55), (0.55, 0.35), (0.7, 0.35),
                        (0.95, 0.7), (0.95, 0.8), (0.05, 0.8)])],
    "Sandals": [("poly", [(0.05, 0.72), (0.95, 0.72), (0.95, 0.8),
                          (0.05, 0.8)]),
                ("poly", [(0.25, 0.45), (0.35, 0.45), (0.4, 0.72),
                          (0.3, 0.72)]),
                ("poly", [(0.55, 0.45), (0.65, 0.45), (0.7, 0.72),
                          (0.6, 0.72)])],
    "Bags": [("poly", [(0.15, 0.4), (0.85, 0.4), (0.85, 0.95), (0.15, 0.95)]),
             ("ring", (0.3, 0.12, 0.7, 0.6), 0.06)],
    "Watches": [("poly", [(0.4, 0.0), (0.6, 0.0), (0.6, 1.0), (0.4, 1.0)]),
                ("ellipse", (0.25, 0.25, 0.75, 0.75))],
    "Caps": [("pie", (0.15, 0.25, 0.85, 0.95), 180, 360),
             ("poly", [(0.5, 0.56), (1.0, 0.56), (1.0, 0.66), (0.5, 0.66)])],
}


@dataclasses.dataclass(frozen=True)
class Product:
  id: str
  type: str
  colour: str
  pattern: str
  gender: str
  brand: str

  @property
  def title(self) -> str:
    pattern = "" if self.pattern == "Solid" else self.pattern + " "
    return (f"{self.brand} {self.gender} {pattern}{self.colour} "
            f"{TYPES[self.type][1]}")


@dataclasses.dataclass(frozen=True)
class Query:
  """A shopping query: a type plus optional constraints (None = any)."""
  type: str
  gender: str | None = None
  colour: str | None = None
  pattern: str | None = None
  brand: str | None = None

  @property
  def text(self) -> str:
    words = [self.gender, self.brand, self.colour, self.pattern]
    words = [w.lower() for w in words if w] + [self.type.lower()]
    return " ".join(words)


def label(query: Query, product: Product) -> int:
  """Graded relevance by the fashion set's rule (module docstring)."""
  unmet = 0
  if query.gender and product.gender not in (query.gender, "Unisex"):
    unmet += 1
  for attr in ("colour", "pattern", "brand"):
    want = getattr(query, attr)
    if want and getattr(product, attr) != want:
      unmet += 1
  if product.type == query.type:
    return 2 if unmet == 0 else (1 if unmet == 1 else 0)
  if TYPES[product.type][0] == TYPES[query.type][0]:
    return 1 if unmet == 0 else 0
  return 0


# ---------------------------------------------------------------------------
# Rendering.


def _shape_mask(kind: str, size: int, box: tuple[float, float, float, float]
                ) -> np.ndarray:
  """bool (size, size): where the product's shape is, inside `box` (pixels)."""
  x0, y0, x1, y1 = box
  sx = lambda u: x0 + u * (x1 - x0)
  sy = lambda v: y0 + v * (y1 - y0)
  mask = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(mask)
  for part in SHAPES[kind]:
    if part[0] == "poly":
      draw.polygon([(sx(u), sy(v)) for u, v in part[1]], fill=255)
    elif part[0] == "ellipse":
      u0, v0, u1, v1 = part[1]
      draw.ellipse([sx(u0), sy(v0), sx(u1), sy(v1)], fill=255)
    elif part[0] == "pie":
      u0, v0, u1, v1 = part[1]
      draw.pieslice([sx(u0), sy(v0), sx(u1), sy(v1)], part[2], part[3],
                    fill=255)
    elif part[0] == "ring":
      u0, v0, u1, v1 = part[1]
      width = max(1, int(round(part[2] * (x1 - x0))))
      draw.ellipse([sx(u0), sy(v0), sx(u1), sy(v1)], outline=255, width=width)
  return np.asarray(mask) > 127


def _pattern_mask(pattern: str, size: int, period: int, phase: int
                  ) -> np.ndarray:
  """bool (size, size): where the pattern's second colour goes."""
  yy, xx = np.mgrid[0:size, 0:size]
  if pattern == "Striped":
    return ((yy + phase) // (period // 2)) % 2 == 1
  if pattern == "Checked":
    return (((yy + phase) // period) + ((xx + phase) // period)) % 2 == 1
  if pattern == "Dotted":
    cy = (yy + phase) % period - period / 2
    cx = (xx + phase) % period - period / 2
    return cy**2 + cx**2 <= (period / 4)**2
  return np.zeros((size, size), bool)


def render(product: Product, size: int, rng: np.random.Generator
           ) -> np.ndarray:
  """Studio-style image of a product -> uint8 (size, size, 3) on white."""
  scale = rng.uniform(0.68, 0.84) * size
  cx = size / 2 + rng.uniform(-0.05, 0.05) * size
  cy = size / 2 + rng.uniform(-0.05, 0.05) * size
  box = (cx - scale / 2, cy - scale / 2, cx + scale / 2, cy + scale / 2)
  shape = _shape_mask(product.type, size, box)
  colour = np.asarray(COLOURS[product.colour], np.float32)
  colour = np.clip(colour + rng.uniform(-12, 12, size=3), 0, 255)
  # Dark colours get a light pattern, light ones a dark pattern.
  second = (colour + 110 if colour.mean() < 90 else colour * 0.5)
  period = max(4, size // int(rng.integers(6, 10)))
  pat = _pattern_mask(product.pattern, size, period, int(rng.integers(period)))
  img = np.full((size, size, 3), 255, np.float32)
  img[shape] = colour
  img[shape & pat] = np.clip(second, 0, 255)
  # A thin dark outline so white products stand out from the background.
  edge = cv2.dilate(shape.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
  img[edge & ~shape] = 90
  return img.round().astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", optimize=False)
  return buf.getvalue()


# ---------------------------------------------------------------------------
# Catalog and queries.


@dataclasses.dataclass
class SyntheticData:
  """The embedded data set, same layout as the fashion catalog.

  Attributes:
    catalog: all products (`catalog.split` is "train"/"test").
    train_catalog, test_catalog: the two splits.
    train: graded relevance over `train_catalog`.
    test: qrels over `test_catalog` (label > 0 only; others are 0).
    products: the attribute records, aligned with `catalog`.
  """
  catalog: catalog_lib.Catalog
  train_catalog: catalog_lib.Catalog
  test_catalog: catalog_lib.Catalog
  train: relevance_lib.Relevance
  test: relevance_lib.Relevance
  products: list[Product]


def _products(n: int, rng: np.random.Generator) -> list[Product]:
  types = list(TYPES)
  out = []
  for i in range(n):
    out.append(Product(
        id=str(100000 + i),
        # Cycle the types so each gets its share even for small n.
        type=types[i % len(types)] if i < 2 * len(types) else
        types[int(rng.integers(len(types)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        gender=GENDERS[int(rng.integers(len(GENDERS)))],
        brand=BRANDS[int(rng.integers(len(BRANDS)))]))
  return out


def _random_query(rng: np.random.Generator, anchor: Product) -> Query:
  """A query built around a real product, so it has a label-2 match."""
  pick = lambda p: rng.random() < p
  gender = anchor.gender if pick(0.4) and anchor.gender != "Unisex" else None
  return Query(type=anchor.type, gender=gender,
               colour=anchor.colour if pick(0.5) else None,
               pattern=anchor.pattern if pick(0.3) else None,
               brand=anchor.brand if pick(0.25) else None)


def _queries(n: int, products: list[Product], rng: np.random.Generator
             ) -> list[Query]:
  out, seen = [], set()
  for _ in range(50 * n):
    if len(out) == n:
      break
    q = _random_query(rng, products[int(rng.integers(len(products)))])
    if q.text not in seen:
      seen.add(q.text)
      out.append(q)
  return out


def _train_rows(queries, products, rng):
  """Fashion-set style sampling of judged pairs (see module docstring)."""
  rows = []
  for qi, q in enumerate(queries):
    labels = np.array([label(q, p) for p in products])
    hard = [i for i, p in enumerate(products)
            if labels[i] == 0 and TYPES[p.type][0] == TYPES[q.type][0]]
    chosen = []
    for lab, cap in ((2, 30), (1, 15)):
      idx = np.flatnonzero(labels == lab)
      chosen += [(int(i), lab) for i in rng.permutation(idx)[:cap]]
    hard = rng.permutation(np.array(hard, np.int64))[:10]
    rest = np.setdiff1d(np.flatnonzero(labels == 0), hard)
    chosen += [(int(i), 0) for i in hard]
    chosen += [(int(i), 0) for i in rng.permutation(rest)[:10]]
    for i, lab in chosen:
      rows.append((f"sq{qi:05d}", q.text, products[i].id, lab))
  return rows


def _test_rows(queries, products):
  rows = []
  for qi, q in enumerate(queries):
    for p in products:
      lab = label(q, p)
      if lab > 0:
        rows.append((f"st{qi:05d}", q.text, p.id, lab))
  return rows


def _as_rows(rows, name):
  keys = ("query_id", "query", "product_id", "label")
  for n, r in enumerate(rows):
    yield f"{name} row {n}", dict(zip(keys, r)), ""


def bad_image_rows(num_products: int, bad_images: int) -> list[int]:
  """Catalog rows whose image `synthetic_data(bad_images=...)` damages:
  spread evenly over the catalog (so over both splits)."""
  count = min(max(bad_images, 0), num_products)
  return [(2 * j + 1) * num_products // (2 * count) for j in range(count)]


def _damage(png: bytes, kind: int) -> bytes:
  """Undecodable variants of an image: truncated, header only, not one."""
  return (png[:len(png) // 2], png[:16], b"this is not an image")[kind % 3]


@functools.lru_cache(maxsize=4)
def synthetic_data(num_products: int = 400, num_train_queries: int = 160,
                   num_test_queries: int = 60, image_size: int = 96,
                   test_fraction: float = 0.2, seed: int = 0,
                   bad_images: int = 0) -> SyntheticData:
  """Builds the embedded data set (deterministic in its arguments; cached).

  Args:
    num_products: catalog size.
    num_train_queries, num_test_queries: queries per split.
    image_size: rendered image side in pixels (the pipeline resizes).
    test_fraction: share of products in "test" (hash of the id).
    seed: generation seed.
    bad_images: damage this many products' images (`bad_image_rows`;
      truncated, header-only or non-image bytes) to exercise the handling
      of bad data; queries and labels are unchanged.

  Returns:
    SyntheticData; images are PNG bytes in memory (~1 KB each).
  """
  rng = np.random.default_rng(seed)
  products = _products(num_products, rng)
  damaged = {r: k for k, r in enumerate(bad_image_rows(num_products,
                                                       bad_images))}
  rows = []
  for n, p in enumerate(products):
    img = _png(render(p, image_size, np.random.default_rng([seed, n])))
    if n in damaged:
      img = _damage(img, damaged[n])
    rows.append((f"synthetic product {n}", {
        "id": p.id, "title": p.title, "category": p.type, "image": img,
        "split": catalog_lib.hash_split(p.id, test_fraction),
        "group": TYPES[p.type][0], "gender": p.gender, "colour": p.colour,
        "pattern": p.pattern, "brand": p.brand}, ""))
  columns = catalog_lib.CatalogColumns(
      image=None, image_bytes="image",
      extra=("group", "gender", "colour", "pattern", "brand"))
  catalog = catalog_tables.catalog_from_rows(
      rows, columns=columns, root=None, name="synthetic", max_bad_fraction=0)
  train_cat, test_cat = catalog.subset("train"), catalog.subset("test")
  split_products = {s: [p for p, c in zip(products, catalog.split) if c == s]
                    for s in ("train", "test")}
  train_q = _queries(num_train_queries, split_products["train"], rng)
  test_q = _queries(num_test_queries, split_products["test"], rng)
  train = relevance_tables.relevance_from_rows(
      _as_rows(_train_rows(train_q, split_products["train"], rng),
               "synthetic train"),
      train_cat, name="synthetic train", max_bad_fraction=0)
  test = relevance_tables.relevance_from_rows(
      _as_rows(_test_rows(test_q, split_products["test"]), "synthetic test"),
      test_cat, name="synthetic test", max_bad_fraction=0)
  return SyntheticData(catalog=catalog, train_catalog=train_cat,
                       test_catalog=test_cat, train=train, test=test,
                       products=products)
