r"""Validates catalog and relevance tables once; writes sharded Parquet.

  python -m dashclip_jax.data.prepare --catalog=.../styles.csv \
      --relevance=.../relevance_train.csv --relevance=.../qrels_test.csv \
      --out=/data/prepared --num_shards=64

At DashCLIP scale (400K products, 32M judged pairs) every training process
would otherwise parse and validate the whole CSV. Here that happens once;
the output is what the loaders read instead (a directory path works
wherever a file path did: `catalog_tables.load_catalog(out)`,
`relevance_tables.load_relevance(out + "/relevance_train", catalog,
shard=...)`; the format is prepared.py's):

  out/manifest.json          sources (path, size, sha256), row counts, what
                             was dropped (counts, first culprits), files
  out/catalog.parquet        the kept products: id, title, category, split,
                             image (relative to the catalog root in the
                             manifest) or image_bytes, where, extra columns
  out/<table>/queries.parquet     query_id, query: all queries, in order of
                                  first appearance
  out/<table>/part-00003-of-00064.parquet   query (int32 index into
                                  queries.parquet), product (int32 row of
                                  catalog.parquet), label (int8), pair
                                  (int64: the pair's place in the table)
  out/<table>/manifest.json  the table's part of the manifest

A query's pairs all live in one shard (`relevance.query_shards` of its id),
so stage 2 splits by query: its data shard i of n (`data.num_shards`, n
dividing --num_shards; trainers/inputs.py) reads files i, i + n, ... only.
Read back against the catalog it was prepared with, a table equals loading
its source directly (same queries in the same order, same pairs, labels);
against a subset catalog (one split) the pairs of other products are
skipped as "unknown product", as for the source.

Errors are one line, `prepare: error: <what, naming the culprit>`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence


from dashclip_jax.data import catalog_tables
from dashclip_jax.data import prepared
from dashclip_jax.data import relevance_tables


# ---------------------------------------------------------------------------
# Catalog.


# ---------------------------------------------------------------------------
# Relevance.


# ---------------------------------------------------------------------------
# Command line.


def prepare(catalog_path: str, relevance_paths: Sequence[str], out: str,
            num_shards: int, *, catalog_root: str | None = None,
            max_bad_fraction: float = 0.01) -> dict[str, Any]:
  """Validates the tables once and writes `out` -> the manifest."""
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards}: want at least 1")
  tables_by_name = {}
  for path in relevance_paths:
    table = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    if table in tables_by_name:
      raise ValueError(f"--relevance={path}: a second table named {table!r}")
    tables_by_name[table] = path
  for path in [catalog_path, *relevance_paths]:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such file")
  os.makedirs(out, exist_ok=True)
  root = (catalog_root if catalog_root is not None
          else os.path.dirname(os.path.abspath(catalog_path)))
  catalog = catalog_tables.load_catalog(catalog_path, root=root,
                                        max_bad_fraction=max_bad_fraction)
  manifest = {"format": prepared.FORMAT, "catalog": {
      "source": prepared.source_info(catalog_path),
      **prepared.write_catalog(catalog, out, root)}, "relevance": {}}
  for table, path in tables_by_name.items():
    rel = relevance_tables.load_relevance(path, catalog,
                                          max_bad_fraction=max_bad_fraction)
    entry = {"format": prepared.FORMAT, "source": prepared.source_info(path),
             **prepared.write_relevance(rel, os.path.join(out, table),
                                        num_shards)}
    prepared.write_json(os.path.join(out, table, prepared.MANIFEST), entry)
    manifest["relevance"][table] = entry
  prepared.write_json(os.path.join(out, prepared.MANIFEST), manifest)
  return manifest


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m dashclip_jax.data.prepare",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--catalog", required=True,
                      help="catalog CSV or Parquet (e.g. styles.csv)")
  parser.add_argument("--relevance", action="append", default=[],
                      help="relevance CSV or Parquet; repeat for several")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num_shards", type=int, default=1,
                      help="relevance shards per table (by query)")
  parser.add_argument("--catalog_root", default=None,
                      help="image root; default: the catalog's directory")
  parser.add_argument("--max_bad_fraction", type=float, default=0.01)
  args = parser.parse_args(argv)
  try:
    manifest = prepare(args.catalog, args.relevance, args.out,
                       args.num_shards, catalog_root=args.catalog_root,
                       max_bad_fraction=args.max_bad_fraction)
  except (FileNotFoundError, ValueError, OSError) as e:  # BadDataError too.
    raise SystemExit(f"prepare: error: {e}") from None
  counts = ", ".join(f"{t}: {e['rows']} pairs, {e['queries']} queries"
                     for t, e in manifest["relevance"].items())
  print(f"prepared {args.out}: {manifest['catalog']['rows']} products"
        + (f"; {counts}" if counts else ""), file=sys.stderr)


if __name__ == "__main__":
  main()
