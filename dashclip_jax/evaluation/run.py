r"""The evaluation job: encode, retrieve, probe, plot, report, export.

  python -m dashclip_jax.evaluation.run --config=configs/eval.py:fashion \
      --config.checkpoint=DIR --workdir=OUT

Writes into OUT:
  metrics.json         {system: {"ndcg@10", "recall@1|5|10|50", "mrr",
                        "aisle_acc", "aisle_f1", "relevance_acc",
                        "relevance_f1", "ann_recall@10", ...}}
  report.md            the same as tables, plus data and setup notes
  tsne_<system>.png    t-SNE of the ranked products, by aisle category
  cosine_<system>.png  cos(query, product) histograms per relevance label
  export/              dashclip product/query embeddings + faiss index
                       (see `export.py`; searched by `search.py`)

Systems: "dashclip" (config.checkpoint; multimodal product tower, query
tower), "init" (config.init_checkpoint, the un-adapted start), "bm25" and
"minilm" (titles only). Every system ranks the same products with the same
tie rule and metrics (`metrics.py`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from typing import Any, Protocol, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from dashclip_jax import config_lib
from dashclip_jax.evaluation import baselines as baselines_lib
from dashclip_jax.evaluation import export as export_lib
from dashclip_jax.evaluation import knn
from dashclip_jax.evaluation import metrics as metrics_lib
from dashclip_jax.evaluation import plots
from dashclip_jax.evaluation import probes

# "dashclip_text": the trained model with its product side fed the title
# alone (no image): what the image adds to the product embedding.
KNOWN_BASELINES = ("bm25", "minilm", "init", "dashclip_text")
METRIC_KEYS = ("ndcg@10", "recall@1", "recall@5", "recall@10", "recall@50",
               "mrr", "aisle_acc", "aisle_f1", "relevance_acc",
               "relevance_f1")


class Encoder(Protocol):
  """What the evaluation needs from a model (`dashclip_jax.load` gives it)."""

  def encode_product(self, images: Sequence[np.ndarray],
                     titles: Sequence[str]) -> np.ndarray: ...  # (B, E)

  def encode_query(self, texts: Sequence[str]) -> np.ndarray: ...  # (B, E)


@dataclasses.dataclass
class EvalData:
  """The ranked catalog, its graded queries and the probe's training products.

  Attributes:
    catalog: products ranked for every query (N rows).
    labels: int8 (Q, N) graded labels; unlisted pairs are 0.
    query_ids, queries: Q ids and texts.
    probe_catalog: products the aisle probe trains on (None: no probe).
    description: one line for the report.
  """
  catalog: Any
  labels: np.ndarray
  query_ids: list[str]
  queries: list[str]
  probe_catalog: Any
  description: str


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
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import catalog as catalog_lib
  from dashclip_jax.data import relevance as relevance_lib
  from dashclip_jax.data import synthetic
  # pylint: enable=g-import-not-at-top
  d = cfg.data
  if d.source == "synthetic":
    syn = synthetic.synthetic_data(**d.synthetic.to_dict())
    if d.split != "test":
      raise config_lib.ConfigError(
          "the synthetic catalog is graded on its test split only; got "
          f"data.split={d.split!r}")
    full, catalog, rel = syn.catalog, syn.test_catalog, syn.test
    where = f"synthetic catalog {dict(d.synthetic)}"
  elif d.source == "csv":
    if not d.catalog_dir:
      raise config_lib.ConfigError("config.data.catalog_dir is empty")
    table = os.path.join(d.catalog_dir, d.catalog_file)
    if not os.path.exists(table):
      raise FileNotFoundError(f"catalog table not found: {table} (set "
                              "--config.data.catalog_dir / catalog_file)")
    full = catalog_lib.load_catalog(
        table, test_fraction=d.get("test_fraction", 0.1),
        max_bad_fraction=d.get("max_bad_fraction", 0.01))
    catalog = full if d.split in ("", "all") else full.subset(d.split)
    if not len(catalog):
      raise config_lib.ConfigError(
          f"{table}: no product has split {d.split!r} (splits: "
          f"{sorted(set(full.split))})")
    qrels = d.qrels_path or os.path.join(d.catalog_dir, "qrels_test.csv")
    # Strict by default: a skipped row (e.g. a judged product missing from
    # the ranked split) changes what the metrics measure.
    rel = _load_qrels(qrels, catalog, d.get("qrels_max_bad_fraction", 0.0))
    where = f"{table} [{d.split or 'all'}], queries {qrels}"
  else:
    raise config_lib.ConfigError(
        f"config.data.source must be csv or synthetic, got "
                     f"{d.source!r}")
  labels = metrics_lib.labels_from_relevance(rel)
  query_ids, queries = list(rel.query_ids), list(rel.queries)
  # Products whose image cannot be decoded are not ranked (counted, named),
  # nor are queries without a label-2 product among those ranked: Recall@K
  # and MRR are undefined for them (e.g. a catalog subset, or label-1-only
  # queries in the qrels).
  catalog, ok, notes = drop_unreadable(catalog, "product")
  relevant = lambda l: (l == metrics_lib.RELEVANT).any(axis=1)
  has_any, ranked = relevant(labels), relevant(labels[:, ok])
  for lost, why in ((~has_any, "no label-2 product in the ranked split"),
                    (has_any & ~ranked, "no readable label-2 product")):
    if lost.any():
      names = [q for q, l in zip(query_ids, lost) if l]
      notes.append(f"{_plural(len(names), 'query')} skipped ({why}: "
                   f"{_first(names)})")
  labels = labels[ranked][:, ok]
  query_ids = [q for q, r in zip(query_ids, ranked) if r]
  queries = [q for q, r in zip(queries, ranked) if r]
  if not query_ids:
    raise config_lib.ConfigError(
        f"{where}: no query has a label-2 product among the ranked products "
        f"({'; '.join(notes)})")
  metrics_lib.check_labels(labels, query_ids)
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
  return EvalData(catalog, labels, query_ids, queries,
                  probe, f"{len(catalog)} products x {len(query_ids)} "
                  f"queries from {where}" + "".join(f"; {n}" for n in notes))


def _plural(n: int, noun: str) -> str:
  if n == 1:
    return f"1 {noun}"
  return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def _first(names: Sequence[str], k: int = 5, sep: str = ", ") -> str:
  return sep.join(names[:k]) + (" ..." if len(names) > k else "")


def _load_qrels(path: str, catalog, max_bad_fraction: float):
  """Graded queries over `catalog`; the limit is data.qrels_max_bad_fraction."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import bad_records
  from dashclip_jax.data import relevance as relevance_lib
  # pylint: enable=g-import-not-at-top
  try:
    return relevance_lib.load_relevance(path, catalog,
                                        max_bad_fraction=max_bad_fraction)
  except bad_records.BadDataError as e:
    raise bad_records.BadDataError(
        f"{e} The limit is --config.data.qrels_max_bad_fraction.") from None


def _image_error(catalog, i: int) -> str | None:
  from dashclip_jax.data import catalog as catalog_lib  # pylint: disable=g-import-not-at-top
  try:
    catalog.load_image(i)
  except catalog_lib.ImageError as e:
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


def encode_products(model: Encoder, catalog, chunk: int = 256) -> np.ndarray:
  """float32 (N, E) multimodal product embeddings, decoding `chunk` at once."""
  out = []
  for s in range(0, len(catalog), chunk):
    idx = range(s, min(s + chunk, len(catalog)))
    images = [catalog.load_image(i) for i in idx]
    out.append(np.asarray(model.encode_product(
        images, [catalog.titles[i] for i in idx]), np.float32))
  return np.concatenate(out)


def retrieval(query_emb: np.ndarray, product_emb: np.ndarray, data: EvalData,
              cfg) -> dict[str, float]:
  """Exact sharded KNN -> graded metrics, plus faiss ANN recall vs exact."""
  n = len(product_emb)
  depth = min(cfg.knn.depth or n, n)
  mesh = knn.default_mesh(cfg.knn.mesh_axis)
  _, ranking = knn.exact_topk(query_emb, product_emb, depth, mesh=mesh,
                              axis=cfg.knn.mesh_axis)
  out = metrics_lib.retrieval_metrics(ranking, data.labels, data.query_ids)
  if cfg.knn.ann:
    k = min(cfg.knn.ann_k, n)
    index = knn.build_index(product_emb, kind=cfg.knn.ann)
    _, approx = knn.ann_search(index, query_emb, k)
    out[f"ann_recall@{k}"] = knn.ann_recall(approx, ranking[:, :k])
  return out


def evaluate_embeddings(name: str, query_emb: np.ndarray,
                        product_emb: np.ndarray, probe_emb: np.ndarray | None,
                        data: EvalData, cfg, workdir: str) -> dict[str, float]:
  """Retrieval, probes and plots of one embedding system."""
  t = time.time()
  for what, emb, ids in (("query", query_emb, data.query_ids),
                         ("product", product_emb, data.catalog.ids)):
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
      raise ValueError(f"{name}: {bad.size} {what} embeddings are not finite, "
                       f"first {what} id {ids[bad[0]]!r}")
  out = retrieval(query_emb, product_emb, data, cfg)
  cats = categories_of(data.catalog)
  if probe_emb is not None and any(cats):
    out.update(probes.aisle_probe(probe_emb, categories_of(data.probe_catalog),
                                  product_emb, cats, c=cfg.probes.aisle_c))
  if cfg.probes.relevance:
    out.update(probes.relevance_probe(
        query_emb, product_emb, data.labels, data.query_ids,
        zeros_per_query=cfg.probes.zeros_per_query, seed=cfg.probes.seed,
        c=cfg.probes.relevance_c))
  if cfg.plots.enabled:
    means = plots.cosine_by_relevance_plot(
        query_emb @ product_emb.T, data.labels,
        os.path.join(workdir, f"cosine_{name}.png"),
        title=f"{name}: cos(query, product) by relevance label")
    out.update({f"cos_mean_label{k}": v for k, v in means.items()})
    if len(product_emb) >= 5:
      plots.tsne_plot(product_emb, cats, os.path.join(workdir,
                                                      f"tsne_{name}.png"),
                      top=cfg.plots.tsne_top,
                      title=f"{name}: t-SNE of {len(product_emb)} products")
  logging.info("%s evaluated in %.1fs: %s", name, time.time() - t, out)
  return out


def _load_model(path: str, batch_size: int, what: str) -> Encoder:
  if not path:
    raise ValueError(f"config.{what} is empty: name a model dir or workdir")
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  return dashclip_jax.load(path, batch_size=batch_size)


def check_config(cfg, models: dict[str, Encoder] | None = None) -> None:
  """ConfigError for what would fail later: baselines, model paths."""
  unknown = [b for b in cfg.baselines if b not in KNOWN_BASELINES]
  if unknown:
    raise config_lib.ConfigError(f"config.baselines: unknown {unknown}; known "
                                 f"{list(KNOWN_BASELINES)}")
  if "init" in cfg.baselines and not cfg.init_checkpoint:
    raise config_lib.ConfigError(
        "config.baselines has 'init' but config.init_checkpoint is empty")
  needed = {"checkpoint": "dashclip"}
  if "init" in cfg.baselines:
    needed["init_checkpoint"] = "init"
  for key, system in needed.items():
    if system in (models or {}):
      continue
    if not cfg[key]:
      raise config_lib.ConfigError(
          f"config.{key} is empty: set --config.{key} to a model dir or "
          "training workdir")
    from dashclip_jax import inference  # pylint: disable=g-import-not-at-top
    try:
      inference.resolve_model_dir(cfg[key])
    except FileNotFoundError as e:
      raise config_lib.ConfigError(f"config.{key}: {e}") from None


def evaluate(cfg, workdir: str,
             models: dict[str, Encoder] | None = None,
             data: EvalData | None = None,
             encoded: dict[str, tuple] | None = None) -> dict[str, dict]:
  """Runs the whole evaluation; returns (and writes) metrics per system.

  Args:
    cfg: a configs/eval.py config.
    workdir: output directory.
    models: optional preloaded encoders by system name ("dashclip", "init");
      missing ones are loaded from config.checkpoint / init_checkpoint.
    data: `load_data(cfg)` when the caller has it.
    encoded: optional (query, product, probe) embeddings by system name,
      encoded by the caller (the main job's final evaluation, on every
      process) from `data`.
  """
  check_config(cfg, models)
  os.makedirs(workdir, exist_ok=True)
  models, encoded = dict(models or {}), dict(encoded or {})
  data = load_data(cfg) if data is None else data
  logging.info("evaluating %s", data.description)
  titles = list(data.catalog.titles)
  results, embeddings = {}, {}

  systems = ["dashclip"] + [b for b in cfg.baselines if b == "init"]
  for name in systems:
    if name not in models and name not in encoded:
      path = cfg.checkpoint if name == "dashclip" else cfg.init_checkpoint
      models[name] = _load_model(path, cfg.batch_size,
                                 "checkpoint" if name == "dashclip"
                                 else "init_checkpoint")
    if name in encoded:
      q, p, probe = encoded[name]
    else:
      t = time.time()
      q = np.asarray(models[name].encode_query(data.queries), np.float32)
      p = encode_products(models[name], data.catalog)
      probe = (encode_products(models[name], data.probe_catalog)
               if data.probe_catalog is not None else None)
      logging.info("%s: encoded %d queries, %d + %d products in %.1fs", name,
                   len(q), len(p), 0 if probe is None else len(probe),
                   time.time() - t)
    embeddings[name] = (q, p)
    results[name] = evaluate_embeddings(name, q, p, probe, data, cfg, workdir)

  if "dashclip_text" in cfg.baselines:
    q = embeddings["dashclip"][0]
    p = np.asarray(models["dashclip"].encode_product_text(titles), np.float32)
    probe = (np.asarray(models["dashclip"].encode_product_text(
        list(data.probe_catalog.titles)), np.float32)
             if data.probe_catalog is not None else None)
    results["dashclip_text"] = evaluate_embeddings("dashclip_text", q, p,
                                                   probe, data, cfg, workdir)

  if "bm25" in cfg.baselines:
    ranking = metrics_lib.rank_by_score(
        baselines_lib.bm25_scores(data.queries, titles),
        k=cfg.knn.depth or None)
    results["bm25"] = metrics_lib.retrieval_metrics(ranking, data.labels,
                                                    data.query_ids)
  if "minilm" in cfg.baselines:
    minilm = baselines_lib.MiniLM()
    q, p = minilm.encode(data.queries), minilm.encode(titles)
    probe = (minilm.encode(list(data.probe_catalog.titles))
             if data.probe_catalog is not None else None)
    results["minilm"] = evaluate_embeddings("minilm", q, p, probe, data, cfg,
                                            workdir)

  if cfg.export.enabled:
    q, p = embeddings["dashclip"]
    export_lib.export_embeddings(
        cfg.export.dir or os.path.join(workdir, "export"),
        data.catalog.ids, titles, p, categories=categories_of(data.catalog),
        query_ids=data.query_ids, query_texts=data.queries, query_emb=q,
        index_kind=cfg.export.index,
        checkpoint=cfg.checkpoint if os.path.exists(cfg.checkpoint or "")
        else "", info={"source": data.description})
  write_report(results, data, cfg, workdir)
  return results


def _fmt(v) -> str:
  if v is None:
    return "–"
  return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(results: dict[str, dict], data: EvalData, cfg,
                 workdir: str) -> None:
  """metrics.json and report.md in `workdir`."""
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  extra = sorted({k for m in results.values() for k in m} - set(METRIC_KEYS))
  cols = [k for k in METRIC_KEYS if any(k in m for m in results.values())]
  lines = [
      "# DashCLIP evaluation", "",
      f"- Data: {data.description}.",
      f"- Checkpoint: `{cfg.checkpoint or '(given in memory)'}`"
      + (f"; init: `{cfg.init_checkpoint}`" if cfg.init_checkpoint else ""),
      "- Recall@K and MRR count label-2 products; NDCG@10 uses gain "
      "2^label - 1 with the ideal DCG of all labelled products; unlisted "
      "pairs are label 0; equal scores rank by catalog order.",
      f"- Ranking depth: {cfg.knn.depth or 'whole catalog'} (exact KNN, "
      "catalog sharded over devices).",
      "- Aisle probe: logistic regression on frozen product embeddings, "
      f"{cfg.data.probe_split} split (at most {cfg.data.max_probe_products} "
      f"products) -> {cfg.data.split} split. Relevance probe: logistic "
      "regression on [q, p, q*p, cos] -> label, query-disjoint halves.", "",
      "## Metrics", "",
      "| system | " + " | ".join(cols) + " |",
      "|---" * (len(cols) + 1) + "|"]
  for name, m in results.items():
    lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in cols)
                 + " |")
  if extra:
    lines += ["", "## Other measurements", "",
              "| system | " + " | ".join(extra) + " |",
              "|---" * (len(extra) + 1) + "|"]
    for name, m in results.items():
      lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in extra)
                   + " |")
  pngs = sorted(f for f in os.listdir(workdir) if f.endswith(".png"))
  if pngs:
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


# -- command line ------------------------------------------------------------
# Flags are defined only when this module is the program, so that importing
# it (the main job's final evaluation does) leaves the importer's flags alone.


PROG = "evaluation.run"


def one_line_errors() -> tuple[type[BaseException], ...]:
  """The errors `main` prints as one line (each names its culprit)."""
  from dashclip_jax.data import bad_records  # pylint: disable=g-import-not-at-top
  return (config_lib.ConfigError, bad_records.BadDataError, FileNotFoundError,
          NotADirectoryError)


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"{PROG}: error: unexpected arguments: {argv[1:]}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  with config_lib.one_line_errors(PROG, one_line_errors()):
    if cfg.get("stage") in ("stage1", "stage2"):
      raise config_lib.ConfigError(
          f"--config is a {cfg.stage} config: run it with python -m "
          "dashclip_jax.main (an eval config is configs/eval.py)")
    config_lib.check_workdir(workdir)
    results = evaluate(cfg, workdir)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None, "configs/eval.py[:fashion|synthetic]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=config_lib.flags_parser(PROG))
