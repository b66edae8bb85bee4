"""What every curation step shares: the config, the catalog, the seed, the
queries, and the workdir's files (tables, the trained teacher).

Each step reads what it needs from the workdir and writes its result there,
so a step can run alone once its inputs exist, and a rerun reuses finished
work (a trained teacher, written label shards).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import seed as seed_lib
from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import sources
from dashclip_jax.runtime.config_files import ConfigError

log = logging.getLogger("dashclip_jax")


@dataclasses.dataclass
class Context:
  """What every step shares: the config, the catalog, the queries.

  Queries are numbered once: seed queries first, then the unlabelled ones
  (`query_ids[i]`, `queries[i]`); `num_seed_queries` marks the boundary.
  """
  config: ml_collections.ConfigDict
  workdir: str
  catalog: catalog_lib.Catalog
  data: seed_lib.SeedData
  teacher_train: relevance_lib.Relevance
  validation: relevance_lib.Relevance
  query_ids: list[str]
  queries: list[str]
  num_seed_queries: int
  fields: tuple[str, ...]

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  @property
  def teacher_dir(self) -> str:
    return self.config.teacher.checkpoint or self.path("teacher")

  def seed_pairs(self) -> set[tuple[str, str]]:
    s = self.data.seed
    return {(s.query_ids[q], self.catalog.ids[p])
            for q, p in zip(s.query, s.product)}


def context(config: ml_collections.ConfigDict, workdir: str) -> Context:
  src = sources.load_sources(config.data)
  catalog = src.train_catalog
  fields = tuple(f.strip() for f in config.teacher.fields.split(",")
                 if f.strip())
  try:
    labeler_lib.check_fields(catalog, fields)
  except ValueError as e:
    raise ConfigError(f"config.teacher.fields: {e}") from None
  if config.label.aisle_field:  # Checked now, not after hours of labelling.
    label_shards.product_aisles(catalog, config.label.aisle_field)
  sd = config.seed_data
  if sd.path:
    data = seed_lib.from_files(sd.path, sd.unlabelled_path, catalog,
                               config.data.max_bad_fraction)
  else:
    if src.train_relevance is None:
      raise ConfigError(f"data source {config.data.source!r} has no train "
                        "relevance set to split; set config.seed_data.path")
    data = seed_lib.from_split(src.train_relevance, sd.fraction)
  if data.bad:
    log.info("seed: %s", data.bad)
  train, held = seed_lib.split_validation(data.seed,
                                          config.teacher.val_fraction)
  log.info("seed: %d pairs over %d queries (teacher trains on %d queries, "
           "%d held out); %d unlabelled queries", len(data.seed),
           data.seed.num_queries, train.num_queries, held.num_queries,
           len(data.unlabelled_queries))
  return Context(
      config=config, workdir=workdir, catalog=catalog, data=data,
      teacher_train=train, validation=held,
      query_ids=list(data.seed.query_ids) + list(data.unlabelled_ids),
      queries=list(data.seed.queries) + list(data.unlabelled_queries),
      num_seed_queries=data.seed.num_queries, fields=fields)


def pairs_of(rel: relevance_lib.Relevance, catalog: catalog_lib.Catalog
             ) -> tuple[list[str], list[dict], np.ndarray]:
  """-> (queries, product records, labels) of the judged rows."""
  records = {}
  for p in set(rel.product.tolist()):
    records[p] = labeler_lib.product_record(catalog, p)
  return ([rel.queries[q] for q in rel.query],
          [records[int(p)] for p in rel.product], rel.label.astype(np.int64))


def sync(name: str) -> None:
  """All processes wait here (files process 0 wrote are then visible)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"curation {name}")


def write_table(table: pa.Table, path: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path + ".tmp")
    os.replace(path + ".tmp", path)
  sync(path)


def read_table(path: str, step: str) -> pa.Table:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: run the {step} step first "
                            f"(config.run)")
  return pq.read_table(path)


def load_teacher(ctx: Context) -> labeler_lib.Labeler:
  try:
    if gpt_labeler.is_gpt_teacher(ctx.teacher_dir):
      return gpt_labeler.load_gpt_teacher(
          ctx.teacher_dir, batch_size=ctx.config.label.batch_size)
    return teacher_lib.load_teacher(ctx.teacher_dir,
                                    batch_size=ctx.config.label.batch_size)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e}: run the teacher step first "
                            "(config.run)") from None
