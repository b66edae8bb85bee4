"""The embedding tower's inputs: an exported model's product and query
embeddings, in the simulator's product and query order.

An export (dashclip_jax/index.py) keys products by id and
queries by id and text (queries.parquet: id, text, embedding). Products are
looked up by id; queries by id, else by their text (an export made for
other query ids). A product or query the export lacks is a one-line error.

Towers named in config.alternatives that are not export directories are
written here first, in the same layout: "minilm" (MiniLM-L6 over titles and
query texts, evaluation/baselines.py) and "model:DIR" (a dashclip model
directory: its multimodal product and query embeddings). They are cached
under <cache_dir>/embeddings/<name>-<key>.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from dashclip_jax import index as index_lib
from dashclip_jax import inference
from dashclip_jax.evaluation import baselines
from dashclip_jax.evaluation import encoders
from dashclip_jax.ranking import catalog_data
from dashclip_jax.runtime import config_files

log = logging.getLogger("dashclip_jax")


class MissingEmbeddingError(KeyError):
  """An export lacks a product or query the simulation uses."""

  def __str__(self) -> str:
    return str(self.args[0])


@dataclasses.dataclass
class Tables:
  """float32 L2-normalised (N, E) products and (Q, E) queries, in
  RankingData order, and where they came from."""
  product: np.ndarray
  query: np.ndarray
  source: str

  @property
  def dim(self) -> int:
    return self.product.shape[1]


def _normalised(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rows_of(wanted: Sequence[str], have: Sequence[str]) -> list[int | None]:
  index = {k: i for i, k in enumerate(have)}
  return [index.get(str(k)) for k in wanted]


def _missing(export_dir: str, what: str, names: list[str], total: int
             ) -> MissingEmbeddingError:
  shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
  return MissingEmbeddingError(
      f"embedding export {export_dir} has no embedding for {what} {shown} "
      f"({len(names)} of {total} missing)")


def product_table(export_dir: str, product_ids: Sequence[str]) -> np.ndarray:
  """(N, E) embeddings of `product_ids` from the export, by id."""
  ids, emb = index_lib.read_embeddings(export_dir, "products")
  rows = _rows_of(product_ids, ids)
  lost = [str(p) for p, r in zip(product_ids, rows) if r is None]
  if lost:
    raise _missing(export_dir, "product id", lost, len(product_ids))
  return emb[np.asarray(rows, np.int64)]


def query_table(export_dir: str, query_ids: Sequence[str],
                queries: Sequence[str]) -> np.ndarray:
  """(Q, E) embeddings of the queries, by id, else by text."""
  path = os.path.join(export_dir, "queries.parquet")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"embedding export {export_dir} has no "
                            "queries.parquet (export it with its queries)")
  texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
  ids, emb = index_lib.read_embeddings(export_dir, "queries")
  by_id, by_text = _rows_of(query_ids, ids), _rows_of(queries, texts)
  rows = [i if i is not None else t for i, t in zip(by_id, by_text)]
  lost = [f"{i} ({t!r})" for i, t, r in zip(query_ids, queries, rows)
          if r is None]
  if lost:
    raise _missing(export_dir, "query", lost, len(query_ids))
  return emb[np.asarray(rows, np.int64)]


def read_tables(export_dir: str, data: catalog_data.RankingData) -> Tables:
  """An export's embeddings of the simulation's products and queries."""
  if not os.path.isdir(export_dir):
    raise FileNotFoundError(f"embedding export {export_dir!r} is not a "
                            "directory")
  product = product_table(export_dir, data.catalog.ids)
  query = query_table(export_dir, data.query_ids, data.queries)
  if product.shape[1] != query.shape[1]:
    raise ValueError(f"embedding export {export_dir}: products are "
                     f"{product.shape[1]}-d, queries {query.shape[1]}-d")
  return Tables(_normalised(product), _normalised(query),
                os.path.abspath(export_dir))


# -- towers computed here -----------------------------------------------------


def write_minilm_export(out_dir: str, data: catalog_data.RankingData) -> str:
  """MiniLM-L6 embeddings of the titles and query texts -> an export."""
  model = baselines.MiniLM()
  return index_lib.export_embeddings(
      out_dir, data.catalog.ids, data.catalog.titles,
      model.encode(data.catalog.titles), query_ids=data.query_ids,
      query_texts=data.queries, query_emb=model.encode(data.queries),
      index_kind="flat", info={"system": "minilm"})


def write_model_export(out_dir: str, data: catalog_data.RankingData,
                       model_dir: str, batch_size: int = 32) -> str:
  """A dashclip model's product (image + title) and query embeddings."""
  model = inference.load(model_dir, batch_size=batch_size)
  return index_lib.export_embeddings(
      out_dir, data.catalog.ids, data.catalog.titles,
      encoders.encode_products(model, data.catalog),
      query_ids=data.query_ids, query_texts=data.queries,
      query_emb=np.asarray(model.encode_query(data.queries), np.float32),
      index_kind="flat", checkpoint=model_dir, info={"system": "model"})


def parse_tower(spec: str) -> tuple[str, str]:
  """"minilm" | "NAME=DIR" | "NAME=model:DIR" -> (name, source)."""
  spec = spec.strip()
  if spec == "minilm":
    return "minilm", "minilm"
  name, sep, source = spec.partition("=")
  if not sep or not name.strip() or not source.strip():
    raise config_files.ConfigError(
        f"config.alternatives: {spec!r} is not 'minilm', 'NAME=EXPORT_DIR' "
        "or 'NAME=model:MODEL_DIR'")
  return name.strip(), source.strip()


def tower_tables(source: str, data: catalog_data.RankingData,
                 cache_dir: str) -> Tables:
  """The tables of a tower source: an export dir, "minilm" or "model:DIR"
  (the last two written once into the cache)."""
  if source != "minilm" and not source.startswith("model:"):
    return read_tables(source, data)
  key = hashlib.sha256((source + data.fingerprint()).encode()).hexdigest()
  name = "minilm" if source == "minilm" else "model"
  out = os.path.join(cache_dir, "embeddings", f"{name}-{key[:16]}")
  if not os.path.isfile(os.path.join(out, index_lib.MANIFEST)):
    log.info("embeddings: writing %s for %d products, %d queries -> %s",
             source, data.num_products, len(data.queries), out)
    if source == "minilm":
      write_minilm_export(out, data)
    else:
      write_model_export(out, data, source[len("model:"):])
  tables = read_tables(out, data)
  tables.source = f"{source} ({out})"
  return tables
