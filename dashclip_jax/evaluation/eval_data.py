"""What the evaluation ranks: the catalog split, its graded queries and the
aisle probe's training products (`load_data(cfg)` -> `EvalData`).

Products whose image cannot be decoded are dropped (counted, named) so every
system ranks the same products, and so are queries left without a label-2
product among them; the notes say what was dropped, in the report.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

from dashclip_jax.data import images as images_lib
from dashclip_jax.data import sources
from dashclip_jax.evaluation import metrics as metrics_lib
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax.runtime import config_files


@dataclasses.dataclass
class EvalData:
  """The ranked catalog, its graded queries and the probe's training products.

  Attributes:
    catalog: products ranked for every query (N rows).
    qrels: the graded pairs the qrels list (`qrels.SparseQrels`, Q x N);
      unlisted pairs are label 0 (the gallery marks them as unjudged).
    query_ids, queries: Q ids and texts.
    probe_catalog: products the aisle probe trains on (None: no probe).
    description: one line for the report.
  """
  catalog: Any
  qrels: qrels_lib.SparseQrels
  query_ids: list[str]
  queries: list[str]
  probe_catalog: Any
  description: str


def rank_depth(cfg, num_products: int) -> int:
  """Products ranked per query: config.knn.depth (0: all), at most N."""
  return min(cfg.knn.depth or num_products, num_products)


def categories_of(catalog) -> list[str]:
  """Category name per product ("" where the catalog has none)."""
  names = catalog.category_names
  return [names[c] if c >= 0 else "" for c in np.asarray(catalog.category)]


def _subsample(catalog, n: int, seed: int):
  if n <= 0 or len(catalog) <= n:
    return catalog
  keep = np.sort(np.random.default_rng(seed).choice(len(catalog), n,
                                                    replace=False))
  return catalog.take(keep, name=f"{catalog.name}[{n} sampled]")


def load_data(cfg) -> EvalData:
  """Reads the catalog split and graded queries named by `cfg.data`."""
  d = cfg.data
  src = sources.load_sources(d)
  full = src.catalog
  catalog, rel = src.of_split(d.split)
  if not len(catalog):
    raise config_files.ConfigError(
        f"{full.name}: no product has split {d.split!r} (splits: "
        f"{sorted(set(full.split))})")
  if rel is None:
    raise FileNotFoundError(
        f"{catalog.name}: no relevance data to grade the {d.split} split "
        "(set --config.data.relevance_"
        f"{'train' if d.split == 'train' else 'test'}_path)")
  where = f"{catalog.name}, queries {rel.name}"
  qrels = qrels_lib.qrels_from_relevance(rel)
  query_ids, queries = list(rel.query_ids), list(rel.queries)
  # Products whose image cannot be decoded are not ranked (counted, named),
  # nor are queries without a label-2 product among those ranked: Recall@K
  # and MRR are undefined for them (e.g. a catalog subset, or label-1-only
  # queries in the qrels).
  catalog, ok, notes = drop_unreadable(catalog, "product")
  readable = qrels.take_products(ok)
  has_any, ranked = qrels.has_relevant(), readable.has_relevant()
  for lost, why in ((~has_any, "no label-2 product in the ranked split"),
                    (has_any & ~ranked, "no readable label-2 product")):
    if lost.any():
      names = [q for q, l in zip(query_ids, lost) if l]
      notes.append(f"{_plural(len(names), 'query')} skipped ({why}: "
                   f"{_first(names)})")
  qrels = readable.take_queries(np.flatnonzero(ranked))
  query_ids = [q for q, r in zip(query_ids, ranked) if r]
  queries = [q for q, r in zip(queries, ranked) if r]
  if not query_ids:
    raise config_files.ConfigError(
        f"{where}: no query has a label-2 product among the ranked products "
        f"({'; '.join(notes)})")
  metrics_lib.check_labels(qrels, query_ids)
  probe = None
  if cfg.probes.aisle and d.probe_split:
    probe = full.subset(d.probe_split)
    probe = _subsample(probe, d.max_probe_products, cfg.probes.seed) if len(
        probe) else None
    if probe is not None:
      probe, _, probe_notes = drop_unreadable(probe, "probe product")
      notes += probe_notes
      probe = probe if len(probe) else None
  for note in notes:
    logging.warning("evaluation data: %s", note)
  return EvalData(catalog, qrels, query_ids, queries,
                  probe, f"{len(catalog)} products x {len(query_ids)} "
                  f"queries from {where}" + "".join(f"; {n}" for n in notes))


def _plural(n: int, noun: str) -> str:
  if n == 1:
    return f"1 {noun}"
  return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _first(names: Sequence[str], k: int = 5, sep: str = ", ") -> str:
  return sep.join(names[:k]) + (" ..." if len(names) > k else "")


def _image_error(catalog, i: int) -> str | None:
  try:
    catalog.load_image(i)
  except images_lib.ImageError as e:
    return str(e)
  return None


def drop_unreadable(catalog, what: str):
  """-> (catalog of the products whose image decodes, ok mask (N,), notes).

  Every image is decoded once here (threads), so that every system ranks
  the same products and a bad image never stops the evaluation.
  """
  with concurrent.futures.ThreadPoolExecutor(min(os.cpu_count() or 1, 8)
                                             ) as pool:
    errors = list(pool.map(lambda i: _image_error(catalog, i),
                           range(len(catalog))))
  ok = np.array([e is None for e in errors], bool)
  if ok.all():
    return catalog, ok, []
  bad = [e for e in errors if e is not None]
  note = (f"{_plural(len(bad), what)} skipped (image unreadable: "
          f"{_first(bad, 3, '; ')})")
  kept = catalog.take(np.flatnonzero(ok),
                      name=f"{catalog.name} [{len(bad)} unreadable skipped]")
  return kept, ok, [note]
