"""The evaluation: encode, retrieve, probe, plot, report, export.

`evaluate(cfg, workdir)` is what `python -m dashclip_jax.evaluation.run`
(the job, `run.py`) and the trainers' final evaluation
(`trainers/final_eval.py`) run. What it writes is listed in `run.py`.
"""

from __future__ import annotations

import os
import time

from absl import logging
import numpy as np

from dashclip_jax.runtime import config_files
from dashclip_jax.evaluation import baselines as baselines_lib
from dashclip_jax.evaluation import encoders
from dashclip_jax.evaluation import eval_data
from dashclip_jax.evaluation import gallery as gallery_lib
from dashclip_jax.evaluation import knn
from dashclip_jax.evaluation import metrics as metrics_lib
from dashclip_jax.evaluation import plots
from dashclip_jax.evaluation import probes
from dashclip_jax.evaluation import report as report_lib
from dashclip_jax import index as index_lib
from dashclip_jax.model import model_dir as model_dir_lib

# "dashclip_text": the trained model with its product side fed the title
# alone (no image): what the image adds to the product embedding.
KNOWN_BASELINES = ("bm25", "minilm", "init", "dashclip_text")


def retrieval(query_emb: np.ndarray, product_emb: np.ndarray,
              data: eval_data.EvalData, cfg) -> dict[str, float]:
  """Exact sharded KNN -> graded metrics, plus faiss ANN recall vs exact."""
  n = len(product_emb)
  depth = eval_data.rank_depth(cfg, n)
  mesh = knn.default_mesh(cfg.knn.mesh_axis)
  _, ranking = knn.exact_topk(query_emb, product_emb, depth, mesh=mesh,
                              axis=cfg.knn.mesh_axis)
  out = metrics_lib.retrieval_metrics(ranking, data.qrels, data.query_ids)
  if cfg.knn.ann:
    k = min(cfg.knn.ann_k, n)
    index = index_lib.build_index(product_emb, kind=cfg.knn.ann)
    _, approx = index_lib.ann_search(index, query_emb, k)
    out[f"ann_recall@{k}"] = knn.ann_recall(approx, ranking[:, :k])
  return out


def evaluate_embeddings(name: str, query_emb: np.ndarray,
                        product_emb: np.ndarray, probe_emb: np.ndarray | None,
                        data: eval_data.EvalData, cfg, workdir: str
                        ) -> dict[str, float]:
  """Retrieval, probes and plots of one embedding system."""
  t = time.time()
  for what, emb, ids in (("query", query_emb, data.query_ids),
                         ("product", product_emb, data.catalog.ids)):
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
      raise ValueError(f"{name}: {bad.size} {what} embeddings are not finite, "
                       f"first {what} id {ids[bad[0]]!r}")
  out = retrieval(query_emb, product_emb, data, cfg)
  cats = eval_data.categories_of(data.catalog)
  if probe_emb is not None and any(cats):
    out.update(probes.aisle_probe(
        probe_emb, eval_data.categories_of(data.probe_catalog), product_emb,
        cats, c=cfg.probes.aisle_c))
  if cfg.probes.relevance:
    out.update(probes.relevance_probe(
        query_emb, product_emb, data.qrels, data.query_ids,
        zeros_per_query=cfg.probes.zeros_per_query, seed=cfg.probes.seed,
        c=cfg.probes.relevance_c))
  if cfg.plots.enabled:
    means = plots.cosine_by_relevance_plot(
        query_emb, product_emb, data.qrels,
        os.path.join(workdir, f"cosine_{name}.png"),
        title=f"{name}: cos(query, product) by relevance label",
        seed=cfg.probes.seed)
    out.update({f"cos_mean_label{k}": v for k, v in means.items()})
    if len(product_emb) >= 5:
      plots.tsne_plot(product_emb, cats, os.path.join(workdir,
                                                      f"tsne_{name}.png"),
                      top=cfg.plots.tsne_top,
                      title=f"{name}: t-SNE of {len(product_emb)} products")
  logging.info("%s evaluated in %.1fs: %s", name, time.time() - t, out)
  return out


def check_config(cfg, models: dict[str, encoders.Encoder] | None = None
                 ) -> None:
  """ConfigError for what would fail later: baselines, model paths."""
  unknown = [b for b in cfg.baselines if b not in KNOWN_BASELINES]
  if unknown:
    raise config_files.ConfigError(f"config.baselines: unknown {unknown}; known "
                                 f"{list(KNOWN_BASELINES)}")
  if "init" in cfg.baselines and not cfg.init_checkpoint:
    raise config_files.ConfigError(
        "config.baselines has 'init' but config.init_checkpoint is empty")
  needed = {"checkpoint": "dashclip"}
  if "init" in cfg.baselines:
    needed["init_checkpoint"] = "init"
  for key, system in needed.items():
    if system in (models or {}):
      continue
    if not cfg[key]:
      raise config_files.ConfigError(
          f"config.{key} is empty: set --config.{key} to a model dir or "
          "training workdir")
    try:
      model_dir_lib.resolve_model_dir(cfg[key])
    except FileNotFoundError as e:
      raise config_files.ConfigError(f"config.{key}: {e}") from None
  gallery_lib.check_config(cfg.gallery)


def gallery_rows(cfg, data: eval_data.EvalData) -> list[int]:
  """Query rows config.gallery shows (none when disabled); ConfigError for
  a named query the evaluation does not have."""
  g = cfg.gallery
  if not g.enabled:
    return []
  return gallery_lib.select_queries(data.query_ids, data.queries,
                                    g.num_queries,
                                    gallery_lib.parse_queries(g.queries),
                                    g.seed)


def _scores_of(query_emb: np.ndarray, product_emb: np.ndarray,
               rows: list[int], chunk: int = 1 << 16) -> np.ndarray:
  """float64 (len(rows), N) inner products of the chosen queries (products
  cast to float64 `chunk` rows at a time, not all N at once)."""
  q = np.asarray(query_emb, np.float64)[rows]
  out = np.empty((len(rows), len(product_emb)))
  for s in range(0, len(product_emb), chunk):
    out[:, s:s + chunk] = q @ np.asarray(product_emb[s:s + chunk],
                                         np.float64).T
  return out


def write_gallery(cfg, data: eval_data.EvalData, rows: list[int],
                  scores: dict[str, np.ndarray], workdir: str) -> None:
  """gallery.html and gallery.png from each system's (len(rows), N) scores."""
  ids = list(data.catalog.ids)
  rankings = {name: gallery_lib.ranked_hits(s, ids, cfg.gallery.k)
              for name, s in scores.items()}
  shown = sorted({data.catalog.index_of(pid) for r in rankings.values()
                  for row in r for pid, _ in row})
  q, qrels = data.qrels, {}
  for i in rows:  # The listed pairs of the shown queries.
    pairs = slice(q.indptr[i], q.indptr[i + 1])
    qrels[data.query_ids[i]] = {ids[j]: int(lab) for j, lab in zip(
        q.product[pairs], q.label[pairs])}
  gallery_lib.write_gallery(
      workdir, [(data.query_ids[i], data.queries[i]) for i in rows], rankings,
      {ids[j]: data.catalog.titles[j] for j in shown},
      {ids[j]: data.catalog.load_image(j) for j in shown}, qrels,
      note=data.description)


def evaluate(cfg, workdir: str,
             models: dict[str, encoders.Encoder] | None = None,
             data: eval_data.EvalData | None = None,
             encoded: dict[str, tuple] | None = None) -> dict[str, dict]:
  """Runs the whole evaluation; returns (and writes) metrics per system.

  Args:
    cfg: a configs/eval.py config.
    workdir: output directory.
    models: optional preloaded encoders by system name ("dashclip", "init");
      missing ones are loaded from config.checkpoint / init_checkpoint.
    data: `eval_data.load_data(cfg)` when the caller has it.
    encoded: optional (query, product, probe) embeddings by system name,
      encoded by the caller (the main job's final evaluation, on every
      process) from `data`.
  """
  check_config(cfg, models)
  os.makedirs(workdir, exist_ok=True)
  models, encoded = dict(models or {}), dict(encoded or {})
  data = eval_data.load_data(cfg) if data is None else data
  logging.info("evaluating %s", data.description)
  titles = list(data.catalog.titles)
  results, embeddings = {}, {}
  # The gallery's query rows (a bad name fails before any encoding here),
  # scored against every product by each system.
  shown = gallery_rows(cfg, data)
  shown_scores = {}

  systems = ["dashclip"] + [b for b in cfg.baselines if b == "init"]
  for name in systems:
    if name not in models and name not in encoded:
      path = cfg.checkpoint if name == "dashclip" else cfg.init_checkpoint
      models[name] = encoders.load_model(path, cfg.batch_size,
                                 "checkpoint" if name == "dashclip"
                                 else "init_checkpoint")
    if name in encoded:
      q, p, probe = encoded[name]
    else:
      t = time.time()
      q = np.asarray(models[name].encode_query(data.queries), np.float32)
      p = encoders.encode_products(models[name], data.catalog)
      probe = (encoders.encode_products(models[name], data.probe_catalog)
               if data.probe_catalog is not None else None)
      logging.info("%s: encoded %d queries, %d + %d products in %.1fs", name,
                   len(q), len(p), 0 if probe is None else len(probe),
                   time.time() - t)
    embeddings[name] = (q, p)
    results[name] = evaluate_embeddings(name, q, p, probe, data, cfg, workdir)
    shown_scores[name] = _scores_of(q, p, shown)

  if "dashclip_text" in cfg.baselines:
    q = embeddings["dashclip"][0]
    p = np.asarray(models["dashclip"].encode_product_text(titles), np.float32)
    probe = (np.asarray(models["dashclip"].encode_product_text(
        list(data.probe_catalog.titles)), np.float32)
             if data.probe_catalog is not None else None)
    results["dashclip_text"] = evaluate_embeddings("dashclip_text", q, p,
                                                   probe, data, cfg, workdir)
    shown_scores["dashclip_text"] = _scores_of(q, p, shown)

  if "bm25" in cfg.baselines:
    bm25 = baselines_lib.bm25_scorer(titles)
    shown_scores["bm25"] = bm25([data.queries[i] for i in shown])
    ranking = baselines_lib.bm25_topk(
        data.queries, eval_data.rank_depth(cfg, len(titles)), bm25,
        len(titles))
    results["bm25"] = metrics_lib.retrieval_metrics(ranking, data.qrels,
                                                    data.query_ids)
  if "minilm" in cfg.baselines:
    minilm = baselines_lib.MiniLM()
    q, p = minilm.encode(data.queries), minilm.encode(titles)
    probe = (minilm.encode(list(data.probe_catalog.titles))
             if data.probe_catalog is not None else None)
    results["minilm"] = evaluate_embeddings("minilm", q, p, probe, data, cfg,
                                            workdir)
    shown_scores["minilm"] = _scores_of(q, p, shown)

  if cfg.export.enabled:
    q, p = embeddings["dashclip"]
    index_lib.export_embeddings(
        cfg.export.dir or os.path.join(workdir, "export"),
        data.catalog.ids, titles, p,
        categories=eval_data.categories_of(data.catalog),
        query_ids=data.query_ids, query_texts=data.queries, query_emb=q,
        index_kind=cfg.export.index,
        checkpoint=cfg.checkpoint if os.path.exists(cfg.checkpoint or "")
        else "", info={"source": data.description})
  if shown:
    write_gallery(cfg, data, shown, shown_scores, workdir)
  report_lib.write_report(results, data, cfg, workdir)
  return results
