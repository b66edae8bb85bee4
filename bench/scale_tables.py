"""DashCLIP-scale synthetic tables: a catalog and judged pairs, quickly.

  python bench/scale_tables.py --out=/tmp/scale --products=400000 \
      --pairs=32000000 [--styles]

`make_scale_tables(out_dir, num_products, num_pairs, seed)` writes, with no
Python per pair (32M pairs in about a minute):

  * catalog.parquet: id, title, category, image, split (one product in ten
    is "test"); `image` points at one of a few tiny JPEGs under images/,
  * with `styles=True` also styles.csv in the public fashion layout
    (id, productDisplayName, articleType, split) and images/<id>.jpg hard
    links to those JPEGs (one link per product: a few seconds per 400K),
  * relevance_train.csv: `num_pairs` (query_id, query, product_id, label)
    rows over train products, 80 distinct products per query, labels
    0/1/2 at 50/20/30%,
  * qrels_test.csv: `num_pairs // 20` such rows over test products.

Every row is valid, so loading them measures the good path.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

PAIRS_PER_QUERY = 80
NUM_JPEGS = 8
CATEGORIES = ("Shirts", "Tshirts", "Jeans", "Watches", "Shoes", "Bags",
              "Dresses", "Caps")


def _strings(prefix: str, values: np.ndarray, suffix: str = "") -> pa.Array:
  """f"{prefix}{v}{suffix}" for an int array, built by pyarrow (no Python
  per row)."""
  text = pa.array(values).cast(pa.string())
  return pa.compute.binary_join_element_wise(prefix, text, suffix, "")


def _pairs(rng, products: np.ndarray, num_pairs: int, first_query: int
           ) -> pa.Table:
  """`num_pairs` rows of queries with 80 distinct products each."""
  num_queries = -(-num_pairs // PAIRS_PER_QUERY)
  q = np.repeat(np.arange(num_queries), PAIRS_PER_QUERY)[:num_pairs]
  k = np.tile(np.arange(PAIRS_PER_QUERY), num_queries)[:num_pairs]
  # A prime stride < len(products) makes a query's products distinct.
  stride = 7919 if len(products) > 7919 else 1
  base = rng.integers(0, len(products), num_queries)
  p = products[(base[q] + k * stride) % len(products)]
  label = rng.choice(np.array([0, 1, 2], np.int8), num_pairs,
                     p=[0.5, 0.2, 0.3])
  ids = _strings("q", np.arange(num_queries) + first_query)
  texts = pa.compute.binary_join_element_wise(
      "query", pa.array(np.arange(num_queries) + first_query).cast(
          pa.string()), pa.array(np.array(CATEGORIES)[
              np.arange(num_queries) % len(CATEGORIES)]), " ")
  return pa.table({"query_id": ids.take(q), "query": texts.take(q),
                   "product_id": p, "label": label})


def _write_csv(table: pa.Table, path: str) -> None:
  """Unquoted CSV (the generated text has no commas, quotes or newlines)."""
  with open(path, "wb") as f:
    f.write((",".join(table.column_names) + "\n").encode())
    pcsv.write_csv(table, f, pcsv.WriteOptions(include_header=False,
                                                quoting_style="none"))


def make_scale_tables(out_dir: str, num_products: int, num_pairs: int,
                      seed: int = 0, styles: bool = False) -> dict[str, str]:
  """Writes the tables (see the module docstring) -> {name: path}."""
  rng = np.random.default_rng(seed)
  images = os.path.join(out_dir, "images")
  os.makedirs(images, exist_ok=True)
  for k in range(NUM_JPEGS):
    pixels = rng.integers(0, 255, (16, 16, 3), np.uint8)
    Image.fromarray(pixels).save(os.path.join(images, f"_{k}.jpg"))
  ids = np.arange(num_products, dtype=np.int64) + 10000
  category = np.array(CATEGORIES)[ids % len(CATEGORIES)]
  split = np.where(ids % 10 == 0, "test", "train")
  catalog = pa.table({
      "id": ids,
      "title": pa.compute.binary_join_element_wise(
          "Product", pa.array(ids).cast(pa.string()), pa.array(category),
          " "),
      "category": category,
      "image": _strings("images/_", ids % NUM_JPEGS, ".jpg"),
      "split": split,
  })
  paths = {"catalog": os.path.join(out_dir, "catalog.parquet")}
  pq.write_table(catalog, paths["catalog"])
  if styles:
    paths["styles"] = os.path.join(out_dir, "styles.csv")
    _write_csv(
        catalog.select(["id", "title", "category", "split"]).rename_columns(
            ["id", "productDisplayName", "articleType", "split"]),
        paths["styles"])
    for i in ids.tolist():
      target = os.path.join(images, f"{i}.jpg")
      if not os.path.exists(target):
        os.link(os.path.join(images, f"_{i % NUM_JPEGS}.jpg"), target)
  train = _pairs(rng, ids[split == "train"], num_pairs, 0)
  paths["relevance_train"] = os.path.join(out_dir, "relevance_train.csv")
  _write_csv(train, paths["relevance_train"])
  del train
  test = _pairs(rng, ids[split == "test"], max(1, num_pairs // 20),
                first_query=10**9)
  paths["qrels_test"] = os.path.join(out_dir, "qrels_test.csv")
  _write_csv(test, paths["qrels_test"])
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--products", type=int, default=400_000)
  parser.add_argument("--pairs", type=int, default=3_200_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--styles", action="store_true",
                      help="also styles.csv + images/<id>.jpg hard links")
  args = parser.parse_args()
  start = time.perf_counter()
  paths = make_scale_tables(args.out, args.products, args.pairs, args.seed,
                            styles=args.styles)
  print(f"wrote {paths} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()
