r"""Relevance loading time and peak memory: this tree vs another checkout.

  python bench/scale_tables.py --out=/tmp/scale --products=400000 \
      --pairs=3200000
  git archive main dashclip_jax | tar -x -C /tmp/main_tree
  python bench/relevance_load.py --table=/tmp/scale/relevance_train.csv \
      --catalog=/tmp/scale/catalog.parquet --other=/tmp/main_tree

Each implementation runs in a fresh process that builds the catalog in
memory from the ids of `--catalog` (so only relevance loading is timed),
loads the table (a CSV/Parquet file or a prepared table directory, with
`--shard` one process's shards of it) with `relevance.load_relevance` and
reports seconds, pairs, peak RSS (ru_maxrss) and peak virtual memory
(VmPeak, what RLIMIT_AS caps).

Measured (Dec 2026, the shared 2-core CPU machine, load average 4-6;
scale_tables.py tables over 400K products; peak RSS includes the ~170 MB of
the process and catalog before loading):

  table                              main before issue 28   this tree
  3.2M pairs, CSV                    30.3 s, 610 MB         2.6 s, 388 MB
  32M pairs, CSV                     (issue 28: ~205 s, 4.6 GB)  20.9 s, 1412 MB
  32M prepared, all 8 shards         -                      5.6 s, 1421 MB
  32M prepared, shard (0, 8): 4.0M   -                      0.7 s, 396 MB
  prepare (400K catalog, 32M + 1.6M pairs, 8 shards): 42 s, 2.2 GB.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
import pyarrow.parquet as pq
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
table, catalog_path, shard = sys.argv[1:4]
ids = [str(i) for i in pq.read_table(catalog_path, columns=["id"])
       .column("id").to_pylist()]
cat = catalog_lib.Catalog(
    name="ids", ids=ids, titles=ids, category=np.zeros(len(ids), np.int32),
    category_names=[], split=["train"] * len(ids), images=ids, where=ids)
cat.index_of("")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
kw = {"shard": tuple(map(int, shard.split(",")))} if shard else {}
rel = relevance_tables.load_relevance(table, cat, **kw)
seconds = time.perf_counter() - start
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
print(json.dumps({
    "module": relevance_lib.__file__, "seconds": round(seconds, 2),
    "pairs": len(rel), "queries": rel.num_queries,
    "rss_before_mb": before // 1024,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    "vm_peak_mb": int(status["VmPeak"].split()[0]) // 1024}))
"""


def measure(tree: str, table: str, catalog: str, shard: str = "") -> dict:
  out = subprocess.run(
      [sys.executable, "-c", CHILD, table, catalog, shard], check=True,
      capture_output=True, text=True, cwd=tree,  # "" on sys.path is cwd.
      env=dict(os.environ, PYTHONPATH=tree))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--table", required=True)
  parser.add_argument("--catalog", required=True,
                      help="Parquet with an id column (scale_tables.py)")
  parser.add_argument("--shard", default="",
                      help="index,count: one process's share (this tree)")
  parser.add_argument("--other", default=None,
                      help="a tree holding another dashclip_jax (e.g. main)")
  args = parser.parse_args()
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if args.other:
    print(json.dumps({"tree": args.other,
                      **measure(args.other, args.table, args.catalog)}))
  print(json.dumps({"tree": here, "shard": args.shard,
                    **measure(here, args.table, args.catalog, args.shard)}))


if __name__ == "__main__":
  main()
