"""What the labelling benchmarks share: the pairs they label and the timing.

`bench/teacher_throughput.py` and `bench/gpt_labeler_throughput.py` label
the same seeded sample of (query, product) pairs of the fashion catalog
(the embedded synthetic data when it is absent), each side timed over the
same batches, the sides alternating round by round (the machine's load
moves both alike) and each keeping its best.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.data import sources

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "fashion")
FASHION_FIELDS = ("title", "category", "baseColour", "gender", "usage")
SYNTHETIC_FIELDS = ("title", "category", "colour")


def pairs(n: int, seed: int = 0
          ) -> tuple[list[str], list[dict], tuple[str, ...]]:
  """-> (n queries, their n product records, the fields a judge reads):
  a seeded sample of the train relevance pairs."""
  if os.path.isdir(FASHION):
    src = sources.load_sources({"source": "fashion", "path": FASHION})
    fields = FASHION_FIELDS
  else:
    src, fields = sources.load_sources({}), SYNTHETIC_FIELDS
  rel, cat = src.train_relevance, src.train_catalog
  rows = np.random.default_rng(seed).choice(len(rel), n,
                                            replace=len(rel) < n)
  return ([rel.queries[rel.query[i]] for i in rows],
          [labeler_lib.product_record(cat, int(rel.product[i])) for i in rows],
          fields)


def timed(label_batch: Callable[..., np.ndarray], columns: Sequence[Sequence],
          batch: int) -> tuple[float, np.ndarray]:
  """-> (pairs/s, the stacked outputs) of `label_batch(*column_slices)`
  over consecutive batches of the parallel `columns`, after one untimed
  batch (warm-up, compilation)."""
  label_batch(*(c[:batch] for c in columns))
  n, start, out = len(columns[0]), time.perf_counter(), []
  for s in range(0, n, batch):
    out.append(label_batch(*(c[s:s + batch] for c in columns)))
  return n / (time.perf_counter() - start), np.concatenate(out)


def best_of_alternating(rounds: int, ours: Callable[[], tuple],
                        theirs: Callable[[], tuple]
                        ) -> tuple[float, float, np.ndarray, np.ndarray]:
  """-> (our best pairs/s, theirs, our last outputs, theirs): `rounds`
  rounds of ours then theirs, each a `timed` result."""
  rate_ours = rate_theirs = 0.0
  for _ in range(rounds):
    r, out_ours = ours()
    rate_ours = max(rate_ours, r)
    r, out_theirs = theirs()
    rate_theirs = max(rate_theirs, r)
  return rate_ours, rate_theirs, out_ours, out_theirs
