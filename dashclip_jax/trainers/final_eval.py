"""The main job's last step: the evaluation suite on the trained model.

It evaluates the run's own data (`config.data`, whatever the command line
set) with the settings of `config.final_eval` (a configs/eval.py config
without its data block).

Every process takes part. The ranked products, the queries and the probe's
products are cut into one contiguous shard per process; each process embeds
its shards, writes its part of the embedding export, and the embeddings are
gathered. Process 0 then computes the metrics, plots and report on its own
devices (the exact KNN's mesh is process-local) and builds the export's
index from all the parts, while the others wait for it.

Scoring stays on process 0 because it is bounded there: the exact KNN
streams the catalog in chunks and keeps Q x knn.depth candidates, the
labels are the judged pairs (`qrels.SparseQrels`) and BM25 keeps a
running top-k, so 1,000 queries x 400K products need well under 2 GB above
the gathered embeddings (bench/eval_scale.py), and the (Q, N) inner
products are ~0.1 TFLOP, seconds on one host's accelerators. Splitting the
queries over processes would save those seconds but not memory (each
process holds the gathered products either way), while BM25, MiniLM, the
probes and plots would still run on process 0.
"""

from __future__ import annotations

import logging
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from dashclip_jax.evaluation import encoders
from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import pipeline as eval_pipeline
from dashclip_jax import index as index_lib
from dashclip_jax import inference
from dashclip_jax.trainers import preemption

log = logging.getLogger("dashclip_jax")

def eval_config(config: ml_collections.ConfigDict, model_dir: str,
                init_model_dir: str | None) -> ml_collections.ConfigDict:
  """config.final_eval as a configs/eval.py config over the run's data
  (config.data itself: the block every job reads, so the evaluation reads
  what the run trained and validated on, with the same limits).

  `init_model_dir` is the untrained start of the run, the "init" system; it
  is dropped from the baselines when there is none.
  """
  cfg = config.final_eval.copy_and_resolve_references()
  with cfg.unlocked():
    del cfg["enabled"]
    cfg.data = config.data.copy_and_resolve_references()
    cfg.checkpoint = model_dir
    cfg.init_checkpoint = init_model_dir or ""
    if not init_model_dir:
      cfg.baselines = tuple(b for b in cfg.baselines if b != "init")
  return cfg


def _shares(n: int) -> list[np.ndarray]:
  """n rows cut into one contiguous share per process (process order)."""
  return np.array_split(np.arange(n), jax.process_count())


def process_rows(n: int) -> np.ndarray:
  """This process's contiguous share of n rows."""
  return _shares(n)[jax.process_index()]


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
  """Every process's `process_rows(n)` rows of an (n, E) array, on all."""
  if jax.process_count() == 1:
    return local
  sizes = [len(r) for r in _shares(n)]
  padded = np.zeros((max(sizes),) + local.shape[1:], local.dtype)
  padded[:len(local)] = local  # Equal shapes for the gather.
  every = multihost_utils.process_allgather(padded)  # (processes, max, E)
  return np.concatenate([every[i, :s] for i, s in enumerate(sizes)])


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _embed(model, data: eval_data.EvalData) -> tuple[tuple, np.ndarray,
                                                      np.ndarray]:
  """-> ((queries, products, probe) gathered, local products, their rows)."""
  dim = model.config.embed_dim

  def products(catalog, rows):
    local = (encoders.encode_products(model, catalog.take(rows)) if len(rows)
             else np.zeros((0, dim), np.float32))
    return gather_rows(local, len(catalog)), local

  q_rows = process_rows(len(data.queries))
  q = gather_rows(np.asarray(model.encode_query(
      [data.queries[i] for i in q_rows]), np.float32).reshape(-1, dim),
                  len(data.queries))
  rows = process_rows(len(data.catalog))
  p, local = products(data.catalog, rows)
  probe = None
  if data.probe_catalog is not None:
    probe, _ = products(data.probe_catalog,
                        process_rows(len(data.probe_catalog)))
  return (q, p, probe), local, rows


def _export_part(export_dir: str, data: eval_data.EvalData, local: np.ndarray,
                 rows: np.ndarray) -> None:
  cats = eval_data.categories_of(data.catalog)
  index_lib.write_products_part(
      export_dir, jax.process_index(), jax.process_count(),
      [data.catalog.ids[i] for i in rows],
      [data.catalog.titles[i] for i in rows], local,
      categories=[cats[i] for i in rows])


def run(config: ml_collections.ConfigDict, model_dir: str, workdir: str,
        init_model_dir: str | None) -> dict[str, dict] | None:
  """Evaluates `model_dir` on the run's data; every process must call it.

  Returns the metrics on process 0, None on the others. SIGTERM stops it at
  once (preemption.Preempted): a rerun redoes only the evaluation.
  """
  with preemption.stop_at_once_on_sigterm("the final evaluation"):
    return _run(config, model_dir, workdir, init_model_dir)


def _run(config: ml_collections.ConfigDict, model_dir: str, workdir: str,
         init_model_dir: str | None) -> dict[str, dict] | None:
  cfg = eval_config(config, model_dir, init_model_dir)
  eval_pipeline.check_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  data = eval_data.load_data(cfg)
  models = {"dashclip": inference.load(model_dir,
                                       batch_size=cfg.batch_size)}
  if "init" in cfg.baselines:
    models["init"] = inference.load(init_model_dir,
                                    batch_size=cfg.batch_size)
  export_dir = cfg.export.dir or os.path.join(workdir, "export")
  encoded = {}
  for name, model in models.items():
    encoded[name], local, rows = _embed(model, data)
    log.info("final evaluation: %s embedded %d of %d products here", name,
             len(rows), len(data.catalog))
    if name == "dashclip" and cfg.export.enabled:
      _export_part(export_dir, data, local, rows)
  _barrier("final evaluation: export parts written")
  results = None
  if jax.process_index() == 0:
    if cfg.export.enabled:
      index_lib.write_queries(export_dir, data.query_ids, data.queries,
                               encoded["dashclip"][0])
      index_lib.finish_export(
          export_dir, jax.process_count(), index_kind=cfg.export.index,
          checkpoint=model_dir, info={"source": data.description})
    with cfg.unlocked():
      cfg.export.enabled = False  # Written above, one part per process.
    results = eval_pipeline.evaluate(cfg, workdir, models=models, data=data,
                                encoded=encoded)
    log.info("evaluation report: %s", os.path.join(workdir, "report.md"))
  _barrier("final evaluation: done")
  return results
