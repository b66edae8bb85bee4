"""Seed labels in: reading and judging them, the query-disjoint splits, the
hash every expanded set records.

Two ways in (configs/curate.py, `seed_data`):
  * `path` set: a `query_id, query, product_id, label` table of human
    labels (the seed) and `unlabelled_path`, a `query_id, query` table of
    the queries to label.
  * `path` empty: the data's own train relevance set stands in for human
    labels (the experiment of issue 15): its queries are split,
    query-disjoint, into the seed (`fraction`) and the unlabelled rest,
    whose true labels only score the teacher.
Seed rows with an unknown product, an empty query or a label outside
{0, 1, 2} are counted and named (`data.relevance`, `bad_records`); above
`max_bad_fraction` the run stops with `BadDataError`.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import tables


@dataclasses.dataclass
class SeedData:
  """Labelled and unlabelled queries over one catalog.

  Attributes:
    seed: the human labels the teacher learns from.
    unlabelled_ids, unlabelled_queries: the queries to label (Q_u,).
    truth: the unlabelled queries' true labels (the experiment only),
      used to score agreement and for nothing else.
    bad: summary of the seed rows skipped while loading.
  """
  seed: relevance_lib.Relevance
  unlabelled_ids: list[str]
  unlabelled_queries: list[str]
  truth: relevance_lib.Relevance | None
  bad: str


def _share(text: str, salt: str) -> float:
  """A query's place in [0, 1): a salted hash of its normalised text.

  Salted so the seed split is independent of stage 2's held-out split
  (`Relevance.split_queries`, unsalted): each keeps its share of the other.
  """
  norm = " ".join(text.lower().split())
  digest = hashlib.sha256(f"{salt}\0{norm}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64


def split_queries(relevance: relevance_lib.Relevance, fraction: float,
                  salt: str) -> tuple[relevance_lib.Relevance,
                                      relevance_lib.Relevance]:
  """-> (queries whose share is below `fraction`, the rest), each query
  with all its pairs on one side (two ids with one text stay together)."""
  inside = np.array([_share(t, salt) < fraction for t in relevance.queries],
                    bool)
  return (relevance.take_queries(np.flatnonzero(inside), f"{salt} <"),
          relevance.take_queries(np.flatnonzero(~inside), f"{salt} >="))


def from_split(relevance: relevance_lib.Relevance, fraction: float
               ) -> SeedData:
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"seed_data.fraction must be in (0, 1), got {fraction}")
  seed, rest = split_queries(relevance, fraction, "curate-seed")
  return SeedData(seed=seed, unlabelled_ids=list(rest.query_ids),
                  unlabelled_queries=list(rest.queries), truth=rest,
                  bad=_skipped(relevance))


def from_files(seed_path: str, unlabelled_path: str,
               catalog: catalog_lib.Catalog, max_bad_fraction: float
               ) -> SeedData:
  """Seed labels and unlabelled queries from tables; bad seed rows are
  counted and named, and above `max_bad_fraction` raise BadDataError."""
  seed = relevance_tables.load_relevance(seed_path, catalog,
                                         max_bad_fraction=max_bad_fraction)
  ids, queries = read_queries(unlabelled_path, max_bad_fraction) \
      if unlabelled_path else ([], [])
  labelled = set(seed.query_ids)
  keep = [i for i, q in enumerate(ids) if q not in labelled]
  return SeedData(seed=seed, unlabelled_ids=[ids[i] for i in keep],
                  unlabelled_queries=[queries[i] for i in keep], truth=None,
                  bad=_skipped(seed))


def _skipped(relevance: relevance_lib.Relevance) -> str:
  """The summary of skipped rows, "" when none were."""
  bad = relevance.bad
  return bad.summary() if bad is not None and bad.num_bad else ""


def read_queries(path: str, max_bad_fraction: float
                 ) -> tuple[list[str], list[str]]:
  """`query_id, query` rows (CSV/Parquet; other columns ignored), one per
  id: empty and repeated ids are counted and named."""
  header, rows = tables.read_table_rows(path)
  missing = [c for c in ("query_id", "query") if c not in header]
  if missing:
    raise ValueError(f"{path}: columns {missing} not found; the table has "
                     f"{list(header)}")
  bad = br.BadRecords(f"queries {path}", max_bad_fraction=max_bad_fraction)
  ids, queries, seen = [], [], set()
  for where, row, error in rows:
    if row is None:
      bad.bad(where, "malformed row", error)
      continue
    qid = tables.cell_text(row.get("query_id"))
    text = tables.cell_text(row.get("query"))
    if not qid or not text:
      bad.bad(where, "empty query", f"query_id {qid!r}")
    elif qid in seen:
      bad.bad(where, "duplicate query id", qid)
    else:
      seen.add(qid)
      ids.append(qid)
      queries.append(text)
      bad.ok()
  bad.check()
  return ids, queries


def digest(relevance: relevance_lib.Relevance,
           catalog: catalog_lib.Catalog) -> str:
  """sha256 of the seed's (query_id, query, product_id, label) rows in a
  canonical order: the same labels give the same hash from any file."""
  rows = sorted(
      f"{relevance.query_ids[q]}\t{relevance.queries[q]}\t"
      f"{catalog.ids[p]}\t{int(l)}"
      for q, p, l in zip(relevance.query, relevance.product, relevance.label))
  return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def split_validation(seed: relevance_lib.Relevance, fraction: float
                     ) -> tuple[relevance_lib.Relevance,
                                relevance_lib.Relevance]:
  """-> (teacher-train, held-out seed) query-disjoint: the held-out seed
  queries calibrate the teacher and choose the threshold."""
  held, train = split_queries(seed, fraction, "curate-validation")
  if not len(train) or not len(held):
    raise ValueError(f"teacher.val_fraction={fraction} leaves "
                     f"{len(train)} training and {len(held)} held-out seed "
                     f"pairs ({seed.num_queries} seed queries); need both")
  return train, held
