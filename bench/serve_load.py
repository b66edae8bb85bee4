"""Load test of the embeddings server on loopback: dynamic batching vs one
row per forward, and a plain sentence-transformers loop as the anchor.

  python bench/serve_load.py [--model=DIR] [--size=small] [--requests=2000]
      [--clients=32] [--max_batch=64] [--batch_wait_ms=5] [--no_st]

DIR: a model dir (e.g. the fashion job's WORKDIR/stage2); without it a
randomly initialised model of --size geometry is written to a temporary
directory (weights do not change the speed). One run, side by side:

  batched     `python -m dashclip_jax.serving --max_batch=M` in its own process,
              --clients threads each sending single-query POST /v1/embeddings
              on a kept-alive connection, --requests in all
  batch=1     the same server with --max_batch=1 (no merging)
  st loop     SentenceTransformer(OUT/query).encode([q]) one request at a
              time in this process (the exported query tower, export_hf):
              what a user would run instead of a server

Prints requests/s, p50 and p99 latency of each, the forwards the server
ran (from /metrics) and last `serve_batched_over_st_ratio: <r>`. Run it
alone: on 2 cores every other process changes the numbers.
"""

import argparse
import concurrent.futures as futures_lib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _queries(n):
  words = ["red", "blue", "black", "men", "women", "cotton", "leather",
           "shirt", "jeans", "watch", "sandals", "scarf", "dress", "bag",
           "running", "shoes", "formal", "casual", "summer", "kurta"]
  return [" ".join(words[(i * k) % len(words)] for k in (1, 3, 7))
          for i in range(n)]


def _write_model(size, out):
  import jax  # pylint: disable=g-import-not-at-top
  from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  config = model_lib.model_config(size)
  model_dir_lib.save_model_dir(
      out, model_lib.init_params(config, jax.random.key(0)), config)
  return out


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _metric(url, name):
  with urllib.request.urlopen(url + "/metrics") as r:
    for line in r.read().decode().splitlines():
      if line.startswith(name + '{tower="query"}'):
        return float(line.split()[-1])
  return 0.0


def _percentiles(lat):
  lat = sorted(lat)
  pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
  return 1000 * pick(0.5), 1000 * pick(0.99)


def run_server(model, max_batch, wait_ms, requests, clients):
  port = _port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, "-m", "dashclip_jax.serving", f"--model={model}",
       f"--port={port}", f"--max_batch={max_batch}",
       f"--batch_wait_ms={wait_ms}"],
      env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 600
    while True:
      try:
        urllib.request.urlopen(url + "/healthz")
        break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError("the server did not start") from None
        time.sleep(0.5)
    queries = _queries(requests)

    def client(part):
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
      lat = []
      for q in part:
        body = json.dumps({"model": "dashclip-query", "input": q})
        start = time.perf_counter()
        conn.request("POST", "/v1/embeddings", body,
                     {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        lat.append(time.perf_counter() - start)
      conn.close()
      return lat

    # A warm-up pass of one request per client (the server compiled its
    # buckets before listening; this warms connections and threads).
    with futures_lib.ThreadPoolExecutor(clients) as pool:
      list(pool.map(client, [[q] for q in queries[:clients]]))
      before = _metric(url, "dashclip_batch_size_count")
      start = time.perf_counter()
      parts = [queries[i::clients] for i in range(clients)]
      lat = [x for part in pool.map(client, parts) for x in part]
      wall = time.perf_counter() - start
    forwards = _metric(url, "dashclip_batch_size_count") - before
    return requests / wall, *_percentiles(lat), forwards
  finally:
    proc.terminate()
    proc.wait(30)


def run_st(model, requests, out):
  from dashclip_jax import export_hf  # pylint: disable=g-import-not-at-top
  import sentence_transformers  # pylint: disable=g-import-not-at-top
  export_hf.export(model, out, overwrite=True)
  st = sentence_transformers.SentenceTransformer(os.path.join(out, "query"),
                                                 device="cpu")
  queries = _queries(requests)
  st.encode(queries[:8])
  lat = []
  start = time.perf_counter()
  for q in queries:
    t = time.perf_counter()
    st.encode([q])
    lat.append(time.perf_counter() - t)
  wall = time.perf_counter() - start
  return requests / wall, *_percentiles(lat)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="")
  parser.add_argument("--size", default="small")
  parser.add_argument("--requests", type=int, default=2000)
  parser.add_argument("--clients", type=int, default=32)
  parser.add_argument("--max_batch", type=int, default=64)
  parser.add_argument("--batch_wait_ms", type=float, default=5.0)
  parser.add_argument("--no_st", action="store_true")
  args = parser.parse_args()
  print(f"{args.requests} single-query requests, {args.clients} clients, "
        f"model {args.model or args.size + ' (random init)'}, "
        f"{os.cpu_count()} CPUs")
  print(f"{'':26s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'forwards':>9s}", flush=True)
  rows = {}

  def row(name, rps, p50, p99, forwards=None):
    rows[name] = rps
    fw = "" if forwards is None else f"{forwards:9.0f}"
    print(f"{name:26s} {rps:8.1f} {p50:8.1f} {p99:8.1f} {fw}", flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    model = args.model or _write_model(args.size, os.path.join(tmp, "model"))
    row(f"batched (max_batch={args.max_batch})", *run_server(
        model, args.max_batch, args.batch_wait_ms, args.requests,
        args.clients))
    row("batch=1", *run_server(model, 1, 0.0, args.requests, args.clients))
    if not args.no_st:
      row("st loop (1 at a time)", *run_st(
          model, args.requests, os.path.join(tmp, "hf")))
  rps = list(rows.values())
  print(f"serve_batched_over_batch1_ratio: {rps[0] / rps[1]:.2f}")
  if not args.no_st:
    print(f"serve_batched_over_st_ratio: {rps[0] / rps[2]:.2f}")


if __name__ == "__main__":
  main()
