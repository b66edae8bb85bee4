"""The data path at DashCLIP's scale: wall time and peak RSS as tables grow.

  python bench/scale.py --out=/tmp/scale                      # S, M, L levels
  python bench/scale.py --out=/tmp/scale --levels=S,M,L,XL    # + 32M pairs
  python bench/scale.py --out=/tmp/scale --before=/tmp/old_checkout
  python bench/scale.py --out=/tmp/scale --levels=XL \
      --steps=relevance,stage2 --prepared_shards=8 --processes=8

Levels (products, judged train pairs): S (4K, 32K), M (40K, 320K),
L (400K, 3.2M), XL (400K, 32M); each has 1,000 test queries. The tables are
written once per level under --out in the fashion layout (styles.csv,
relevance_train.csv, qrels_test.csv, images/<id>.jpg hard-linked to a few
tiny JPEGs), so every job reads them as it reads the real catalog.

Each step runs in a fresh process (`--worker`), so its peak RSS (VmHWM,
reset with /proc/self/clear_refs after the imports and the inputs it is not
measuring) is its own:
  catalog     load_catalog of styles.csv;
  relevance   load_relevance of the train pairs + stage2_pairs;
  eval_topk   the final evaluation's retrieval of 1,000 queries over all N
              products (random unit embeddings, E=256) and its metrics;
  mining      curation candidates for 2,000 unlabelled queries over N
              products (E=256; k=20, 5 random), extrapolated to 640K;
  mining_ann  the same with mining.search=faiss, faiss_index=ivf, for 20K
              and 100K clustered queries: the fixed cost (index build) and
              the per-query rate, extrapolated to 640K, and recall@20
              against the exact top-k;
  evaluate    `evaluation.run` of the tiny stage-1 model: 1,000 queries
              over all N products (data.split=all), BM25 beside it, probes,
              plots and the export: the whole process;
  stage2      the main job's stage 2 (configs/stage2.py:tiny geometry, one
              step, held-out evaluation on) from a tiny stage-1 model: the
              whole process, start to exit;
  main        the README main job at CI geometry end to end (tiny, 2 + 2
              steps, every eval product): the whole process.
With --prepared_shards=F the tables are also prepared once per level
(`python -m dashclip_jax.data.prepare --num_shards=F`, its time printed) and
read from there: `relevance` reads the shard files of one of --processes P
processes (F/P files, what each process of a P-process run reads), stage2,
evaluate and main run with data.source=prepared (one process).
With --before=DIR (a checkout of older code) every step also runs on that
code, side by side. The last line is the growth of each step's time and
peak RSS per 10x of data (from level M to L: products and pairs both 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

LEVELS = {  # name: (products, train pairs)
    "S": (4_000, 32_000),
    "M": (40_000, 320_000),
    "L": (400_000, 3_200_000),
    "XL": (400_000, 32_000_000),
}
TEST_QUERIES = 1000
PAIRS_PER_QUERY = 50
STEPS = ("catalog", "relevance", "eval_topk", "mining", "mining_ann", "stage2",
         "evaluate", "main")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

_COLOURS = ("black", "blue", "red", "white", "green", "navy", "grey", "pink",
            "brown", "beige", "olive", "maroon")
_TYPES = ("shirts", "tshirts", "jeans", "watches", "shoes", "sandals",
          "handbags", "belts", "kurtas", "tops", "dresses", "socks",
          "caps", "wallets", "sunglasses", "jackets")
_BRANDS = ("nike", "puma", "adidas", "fossil", "titan", "roadster", "fabindia",
           "arrow", "lee", "levis", "wrangler", "jockey")


# -- tables --------------------------------------------------------------------


def _text(*parts: np.ndarray) -> np.ndarray:
  out = parts[0].astype(object)
  for p in parts[1:]:
    out = out + " " + p.astype(object)
  return out


def _write_csv(path: str, columns: dict[str, np.ndarray]) -> None:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.csv as pacsv  # pylint: disable=g-import-not-at-top
  table = pa.table({k: pa.array(v) for k, v in columns.items()})
  pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


def _write_relevance(path: str, qids: np.ndarray, texts: np.ndarray,
                     query: np.ndarray, product_ids: np.ndarray,
                     label: np.ndarray, chunk: int = 4_000_000) -> None:
  """`query_id, query, product_id, label`, written in chunks (bounded RAM)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.csv as pacsv  # pylint: disable=g-import-not-at-top
  qid_arr, text_arr = pa.array(qids), pa.array(texts)
  with pacsv.CSVWriter(path, pa.schema([
      ("query_id", pa.string()), ("query", pa.string()),
      ("product_id", pa.int64()), ("label", pa.int8())])) as w:
    for s in range(0, len(query), chunk):
      q = pa.array(query[s:s + chunk])
      w.write_table(pa.table({
          "query_id": qid_arr.take(q), "query": text_arr.take(q),
          "product_id": pa.array(product_ids[s:s + chunk]),
          "label": pa.array(label[s:s + chunk], pa.int8())}))


def _pairs(rng, num_queries: int, per_query: int, products: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(query, product row, label): `per_query` distinct products per query,
  its first one labelled 2 (metrics need one), the rest 0/1/2."""
  n = len(products)
  query = np.repeat(np.arange(num_queries, dtype=np.int64), per_query)
  start = rng.integers(0, n, num_queries)[query]
  stride = max(1, n // per_query)
  j = np.tile(np.arange(per_query, dtype=np.int64), num_queries)
  rows = (start + j * stride) % n
  label = rng.choice(np.array([0, 1, 2], np.int8), len(query),
                     p=(0.5, 0.2, 0.3))
  label[j == 0] = 2
  return query, products[rows], label


def make_tables(out: str, num_products: int, num_pairs: int,
                seed: int = 0) -> str:
  """Writes one level's tables into `out` (skipped when already there)."""
  done = os.path.join(out, "DONE")
  if os.path.exists(done):
    return out
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  rng = np.random.default_rng(seed)
  ids = np.arange(10_000, 10_000 + num_products, dtype=np.int64)
  colour = rng.integers(0, len(_COLOURS), num_products)
  kind = rng.integers(0, len(_TYPES), num_products)
  brand = rng.integers(0, len(_BRANDS), num_products)
  split = np.where(rng.random(num_products) < 0.1, "test", "train")
  _write_csv(os.path.join(out, "styles.csv"), {
      "id": ids,
      "gender": np.where(rng.random(num_products) < 0.5, "Men", "Women"),
      "articleType": np.array(_TYPES)[kind],
      "baseColour": np.array(_COLOURS)[colour],
      "usage": np.full(num_products, "Casual"),
      "productDisplayName": _text(np.array(_BRANDS)[brand],
                                  np.array(_COLOURS)[colour],
                                  np.array(_TYPES)[kind],
                                  ids.astype(str)).astype(str),
      "split": split})
  # A few real JPEGs, hard-linked (at most 50K links each: file systems cap
  # an inode's links): the catalog checks and decodes files.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  sources = []
  for c in range(max(4, -(-num_products // 50_000))):
    path = os.path.join(out, f"source_{c}.jpg")
    Image.fromarray(np.full((32, 32, 3), (37 * c) % 256, np.uint8)).save(path)
    sources.append(path)
  for i, pid in enumerate(ids.tolist()):
    dst = os.path.join(out, "images", f"{pid}.jpg")
    if not os.path.exists(dst):
      os.link(sources[i % len(sources)], dst)

  def queries(prefix, n):
    qids = np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), 7))
    texts = _text(np.array(_BRANDS)[np.arange(n) % len(_BRANDS)],
                  np.array(_COLOURS)[(np.arange(n) // 3) % len(_COLOURS)],
                  np.array(_TYPES)[(np.arange(n) // 7) % len(_TYPES)],
                  np.arange(n).astype(str)).astype(str)
    return qids, texts

  train_q = max(1, num_pairs // PAIRS_PER_QUERY)
  qids, texts = queries("pt", train_q)
  q, p, l = _pairs(rng, train_q, PAIRS_PER_QUERY, ids[split == "train"])
  _write_relevance(os.path.join(out, "relevance_train.csv"), qids, texts,
                   q, p, l)
  qids, texts = queries("qt", TEST_QUERIES)
  q, p, l = _pairs(rng, TEST_QUERIES, 10, ids[split == "test"])
  _write_relevance(os.path.join(out, "qrels_test.csv"), qids, texts, q, p, l)
  with open(done, "w") as f:
    f.write(json.dumps({"products": num_products, "pairs": num_pairs}))
  return out


# -- workers (one step each, in a fresh process) ---------------------------------


def _hwm_kb() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM"):
        return int(line.split()[1])
  return 0


def _reset_hwm() -> int:
  """Resets the peak RSS to the current RSS; returns that RSS (kB)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _hwm_kb()


def _measure(fn):
  base = _reset_hwm()
  t = time.perf_counter()
  info = fn() or {}
  return dict(seconds=time.perf_counter() - t, peak_gb=_hwm_kb() / 2**20,
              above_start_gb=(_hwm_kb() - base) / 2**20, **info)


def _worker_catalog(tables: str) -> dict:
  from dashclip_jax.data import catalog_tables  # pylint: disable=g-import-not-at-top
  return _measure(lambda: {"products": len(catalog_tables.load_catalog(
      os.path.join(tables, "styles.csv")))})


def _worker_relevance(tables: str, prepared: str = "",
                      processes: int = 1) -> dict:
  """The train pairs of one process: all of the CSV, or from a prepared
  directory the shard files of process 0 of `processes`."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import catalog_tables
  from dashclip_jax.data import relevance as relevance_lib
  from dashclip_jax.data import relevance_tables
  # pylint: enable=g-import-not-at-top
  train = catalog_tables.load_catalog(
      os.path.join(tables, "styles.csv")).subset("train")
  path = (os.path.join(prepared, "relevance_train") if prepared
          else os.path.join(tables, "relevance_train.csv"))

  def run():
    rel = relevance_tables.load_relevance(path, train, shard=(0, processes))
    pairs = relevance_lib.stage2_pairs(rel, "weighted", 0.5)
    return {"pairs": len(rel), "stage2_pairs": len(pairs)}
  return _measure(run)


def prepare_tables(tables: str, num_shards: int) -> str:
  """`tables` prepared with `num_shards` shard files (once) -> the dir."""
  out = os.path.join(tables, f"prepared_{num_shards}")
  if not os.path.exists(os.path.join(out, "DONE")):
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dashclip_jax.data.prepare",
         f"--catalog={tables}/styles.csv",
         f"--relevance={tables}/relevance_train.csv",
         f"--relevance={tables}/qrels_test.csv", f"--out={out}",
         f"--num_shards={num_shards}"], cwd=REPO, check=True,
        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
    print(f"# prepared {out} in {time.perf_counter() - t:.0f} s", flush=True)
    open(os.path.join(out, "DONE"), "w").close()
  return out


def _random_unit(rng, n: int, dim: int) -> np.ndarray:
  x = rng.standard_normal((n, dim), np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _worker_eval_topk(tables: str) -> dict:
  """Retrieval + metrics of the final evaluation over every product."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import catalog_tables
  from dashclip_jax.data import relevance_tables
  from dashclip_jax.evaluation import knn
  from dashclip_jax.evaluation import metrics
  from dashclip_jax.evaluation import qrels as qrels_lib
  # pylint: enable=g-import-not-at-top
  catalog = catalog_tables.load_catalog(os.path.join(tables, "styles.csv"))
  rel = relevance_tables.load_relevance(os.path.join(tables, "qrels_test.csv"),
                                        catalog)
  rng = np.random.default_rng(0)
  queries = _random_unit(rng, rel.num_queries, 256)
  products = _random_unit(rng, len(catalog), 256)
  depth_default = 1000  # What configs/eval.py's knn.depth is after issue 28.
  sparse = hasattr(metrics, "qrels_from_relevance")

  def run():
    n = len(products)
    # Before issue 28: knn.depth=0, the whole catalog, and dense labels.
    depth = min(depth_default, n) if sparse else n
    _, ranking = knn.exact_topk(queries, products, depth)
    labels = (qrels_lib.qrels_from_relevance(rel) if sparse
              else qrels_lib.labels_from_relevance(rel))
    m = metrics.retrieval_metrics(ranking, labels, rel.query_ids)
    return {"depth": depth, "ndcg@10": m["ndcg@10"]}
  return _measure(run)


def _worker_mining(tables: str, num_queries: int = 2000,
                   total_queries: int = 640_000) -> dict:
  import inspect  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation import mining  # pylint: disable=g-import-not-at-top
  with open(os.path.join(tables, "DONE")) as f:
    n = json.load(f)["products"]
  rng = np.random.default_rng(0)
  queries, products = (_random_unit(rng, num_queries, 256),
                       _random_unit(rng, n, 256))
  params = inspect.signature(mining.candidates).parameters
  labelled_q = rng.integers(0, num_queries, 10 * num_queries)
  labelled_p = rng.integers(0, n, 10 * num_queries)
  kwargs = dict(k=20, num_random=5, seed=0)
  if "labelled" in params and params["labelled"].annotation in (
      "set[tuple[int, int]]",):
    kwargs["labelled"] = set(zip(labelled_q.tolist(), labelled_p.tolist()))
  else:
    kwargs["labelled"] = np.stack([labelled_q, labelled_p], axis=1)

  def run():
    out = mining.candidates(queries, products, **kwargs)
    return {"candidates": len(out["query"])}
  result = _measure(run)
  result["ms_per_query"] = 1000 * result["seconds"] / num_queries
  result["minutes_for_640k"] = (result["seconds"] / num_queries
                                * total_queries / 60)
  return result


def _clustered_unit(rng, n: int, centres: np.ndarray) -> np.ndarray:
  x = centres[rng.integers(0, len(centres), n)]
  x = x + 0.6 * _random_unit(rng, n, centres.shape[1])
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _worker_mining_ann(tables: str, num_queries: tuple[int, int] = (
    20_000, 100_000), total_queries: int = 640_000,
                       recall_queries: int = 1000) -> dict:
  """Mining with `mining.search=faiss`, `faiss_index=ivf`: the index is built
  once (a fixed cost), then each query scans a few cells. Timed at two query
  counts: their difference gives the per-query rate, the rest is the fixed
  cost. Embeddings come from 1,024 broad clusters, as trained ones group by
  type, colour and brand (uniformly random vectors have no neighbourhoods,
  the worst case for any ANN); recall@20 is against the exact top-k."""
  from dashclip_jax.curation import mining  # pylint: disable=g-import-not-at-top
  from dashclip_jax.evaluation import knn  # pylint: disable=g-import-not-at-top
  with open(os.path.join(tables, "DONE")) as f:
    n = json.load(f)["products"]
  rng = np.random.default_rng(0)
  centres = _random_unit(rng, 1024, 256)
  queries = _clustered_unit(rng, max(num_queries), centres)
  products = _clustered_unit(rng, n, centres)
  exact = knn.exact_topk(queries[:recall_queries], products, 20)[1]

  def run(q):
    labelled = np.stack([rng.integers(0, q, 10 * q),
                         rng.integers(0, n, 10 * q)], axis=1)
    out = mining.candidates(queries[:q], products, k=20, num_random=5,
                            seed=0, labelled=labelled, search="faiss",
                            faiss_index="ivf")
    return {"candidates": len(out["query"])}
  small = _measure(lambda: run(num_queries[0]))
  result = _measure(lambda: run(num_queries[1]))
  result["recall"] = knn.ann_recall(mining.topk(
      queries[:recall_queries], products, 20, "faiss", "ivf"), exact)
  per_query = ((result["seconds"] - small["seconds"])
               / (num_queries[1] - num_queries[0]))
  fixed = small["seconds"] - per_query * num_queries[0]
  result.update(fixed_s=fixed, recall_at_20=result.pop("recall"),
                ms_per_query=1000 * per_query,
                minutes_for_640k=(fixed + per_query * total_queries) / 60)
  return result


def _run_job(args: list[str], cwd: str, env: dict, log_path: str) -> dict:
  """Runs a job process; -> wall seconds, its peak RSS, exit status."""
  t = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  rc = os.waitstatus_to_exitcode(status)
  return dict(seconds=time.perf_counter() - t,
              peak_gb=usage.ru_maxrss / 2**20, rc=rc, log=log_path)


def _data_flags(tables: str, prepared: str = "") -> list[str]:
  if prepared:
    return ["--config.data.source=prepared", f"--config.data.path={prepared}"]
  return ["--config.data.source=fashion", f"--config.data.path={tables}"]


def _stage1_model(tree: str, env: dict, work: str) -> str:
  """A tiny stage-1 model (on the embedded data: the model is the same
  whatever data it later meets), made once per code tree."""
  model = os.path.join(work, "stage1_tiny")
  if not os.path.exists(os.path.join(model, "DONE")):
    r = _run_job(["-m", "dashclip_jax.main", "--config=configs/stage1.py:tiny",
                  "--config.train.total_steps=2", f"--workdir={model}"],
                 tree, env, os.path.join(work, "stage1_tiny.log"))
    if r["rc"]:
      raise RuntimeError(f"tiny stage 1 failed, see {r['log']}")
    open(os.path.join(model, "DONE"), "w").close()
  return model


def _job_step(step: str, tables: str, tree: str, work: str,
              prepared: str = "") -> dict:
  env = dict(os.environ, PYTHONPATH=tree)
  os.makedirs(work, exist_ok=True)
  run_dir = os.path.join(work, f"{step}_{os.path.basename(tables)}"
                         + (f"_{os.path.basename(prepared)}" if prepared
                            else ""))
  subprocess.run(["rm", "-rf", run_dir], check=True)
  if step == "stage2":
    args = ["-m", "dashclip_jax.main", "--config=configs/stage2.py:tiny",
            f"--config.init.checkpoint={_stage1_model(tree, env, work)}",
            "--config.train.total_steps=1", "--config.train.eval_every=1",
            "--config.final_eval.enabled=False", f"--workdir={run_dir}",
            *_data_flags(tables, prepared)]
  elif step == "evaluate":
    with open(os.path.join(tree, "configs", "eval.py")) as f:
      old_keys = "catalog_dir" in f.read()  # Before issue 28's one schema.
    data = ([f"--config.data.catalog_dir={tables}", "--config.data.split=all"]
            if old_keys else
            [*_data_flags(tables, prepared), "--config.data.split=all"])
    args = ["-m", "dashclip_jax.evaluation.run",
            "--config=configs/eval.py:fashion",
            f"--config.checkpoint={_stage1_model(tree, env, work)}",
            "--config.baselines=('bm25',)", f"--workdir={run_dir}", *data]
  else:  # main
    args = ["-m", "dashclip_jax.main", "--config=configs/stage2.py:tiny",
            "--config.stage1.train.total_steps=2",
            "--config.train.total_steps=2", "--config.train.eval_every=2",
            "--config.data.eval_max_products=0", f"--workdir={run_dir}",
            *_data_flags(tables, prepared)]
  return _run_job(args, tree, env, run_dir + ".log")


WORKERS = {"catalog": _worker_catalog, "relevance": _worker_relevance,
           "eval_topk": _worker_eval_topk, "mining": _worker_mining,
           "mining_ann": _worker_mining_ann}


def run_step(step: str, tables: str, tree: str, work: str,
             prepared: str = "", processes: int = 1) -> dict:
  """One step on the code in `tree`, in a fresh process."""
  if step not in WORKERS:
    return _job_step(step, tables, tree, work, prepared)
  env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
  t = time.perf_counter()
  extra = ([f"--prepared={prepared}", f"--processes={processes}"]
           if step == "relevance" and prepared else [])
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--worker={step}",
       f"--tables={tables}", *extra], cwd=tree, env=env,
      capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    return dict(rc=proc.returncode or 1, seconds=time.perf_counter() - t,
                error=(proc.stderr.strip().splitlines() or ["?"])[-1])
  return dict(rc=0, **json.loads(lines[-1][len("RESULT "):]))


# -- the table ---------------------------------------------------------------


def _cell(r: dict | None) -> str:
  if r is None:
    return "-"
  if r.get("rc"):
    return f"failed (rc {r['rc']})"
  extra = ""
  if "minutes_for_640k" in r:
    extra = f", {r['ms_per_query']:.2f} ms/q -> {r['minutes_for_640k']:.0f} min"
  if "recall_at_20" in r:
    extra += (f" (fixed {r['fixed_s']:.0f} s, recall@20 "
              f"{r['recall_at_20']:.3f})")
  return f"{r['seconds']:.1f} s, {r['peak_gb']:.2f} GB{extra}"


def _growth(results: dict, tree: str, step: str, lo: str, hi: str) -> str:
  a, b = results.get((tree, step, lo)), results.get((tree, step, hi))
  if not a or not b or a.get("rc") or b.get("rc"):
    return f"{step} -"
  return (f"{step} x{b['seconds'] / max(a['seconds'], 1e-9):.1f} time "
          f"x{b['peak_gb'] / max(a['peak_gb'], 1e-9):.1f} RSS")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="/tmp/dashclip_scale")
  p.add_argument("--levels", default="S,M,L")
  p.add_argument("--steps", default=",".join(STEPS))
  p.add_argument("--before", default="",
                 help="a checkout of older code to measure side by side")
  p.add_argument("--after", default=REPO,
                 help="the code measured as 'after' ('': none)")
  p.add_argument("--prepared_shards", type=int, default=0,
                 help="read prepared tables with this many shard files "
                 "(0: the CSV tables)")
  p.add_argument("--processes", type=int, default=1,
                 help="with --prepared_shards: `relevance` reads the shard "
                 "files of one of this many processes")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--tables", default="", help=argparse.SUPPRESS)
  p.add_argument("--prepared", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    kw = ({"prepared": a.prepared, "processes": a.processes}
          if a.prepared else {})
    print("RESULT " + json.dumps(WORKERS[a.worker](a.tables, **kw)),
          flush=True)
    return
  if a.prepared_shards and a.prepared_shards % a.processes:
    p.error(f"--processes={a.processes} must divide --prepared_shards="
            f"{a.prepared_shards}")
  levels, steps = a.levels.split(","), a.steps.split(",")
  unknown = [x for x in levels if x not in LEVELS] + [
      s for s in steps if s not in STEPS]
  if unknown:
    p.error(f"unknown levels/steps {unknown}; levels {list(LEVELS)}, "
            f"steps {list(STEPS)}")
  trees = {name: os.path.abspath(path) for name, path in
           (("before", a.before), ("after", a.after)) if path}
  results = {}
  for level in levels:
    products, pairs = LEVELS[level]
    t = time.perf_counter()
    tables = make_tables(os.path.join(a.out, f"tables_{level}"), products,
                         pairs)
    print(f"# level {level}: {products} products, {pairs} pairs "
          f"(tables ready in {time.perf_counter() - t:.0f} s)", flush=True)
    prepared = (prepare_tables(tables, a.prepared_shards)
                if a.prepared_shards else "")
    for step in steps:
      for name, tree in trees.items():
        r = run_step(step, tables, tree, os.path.join(a.out, f"jobs_{name}"),
                     prepared, a.processes)
        results[(name, step, level)] = r
        print(f"{level:>2} {step:<10} {name:<6} {_cell(r)}"
              + (f"  [{r['error']}]" if r.get("error") else ""), flush=True)
  print()
  header = "| step | code | " + " | ".join(
      f"{l} ({LEVELS[l][0] // 1000}K / {LEVELS[l][1] / 1e6:g}M)"
      for l in levels) + " |"
  print(header)
  print("|" + "---|" * (2 + len(levels)))
  for step in steps:
    for name in trees:
      print(f"| {step} | {name} | " + " | ".join(
          _cell(results.get((name, step, l))) for l in levels) + " |")
  print()
  for name in trees:
    print(f"growth per 10x (M -> L), {name}: " + "; ".join(
        _growth(results, name, s, "M", "L") for s in steps))


if __name__ == "__main__":
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  main()
