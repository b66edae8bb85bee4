"""Serves a dashclip model's embeddings, and search over an export, over
HTTP (FastAPI + uvicorn).

  python -m dashclip_jax.serve --model=DIR [--index=EXPORT_DIR]
      [--image_root=CATALOG_DIR] [--host=127.0.0.1] [--port=8000]
      [--max_batch=64] [--batch_wait_ms=5] [--max_request_bytes=2097152]

DIR is any model directory `dashclip_jax.load` takes (a training workdir
means its latest model). EXPORT_DIR is an embedding export of the catalog
(`dashclip_jax/index.py`), made with this model. CATALOG_DIR holds the
product images (`images/{id}.jpg`, --image_template): /search links them
and /v1/products/embeddings reads image paths under it, nowhere else.

Endpoints (`serving/app.py`): POST /v1/embeddings (OpenAI's: the `openai`
client works unchanged), POST /v1/products/embeddings, POST /search, GET /
(the search page), /healthz, /v1/models, /metrics (Prometheus). Concurrent
requests are batched into one forward per tower (`serving/engine.py`).

It binds to loopback unless --host says otherwise. With the environment
variable named by --api_key_env (DASHCLIP_API_KEY) set, every endpoint but
/ and /healthz wants `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from dashclip_jax.serving import app as app_lib

API_KEY_ENV = "DASHCLIP_API_KEY"


def model_info(model_dir: str) -> dict[str, Any]:
  """/v1/models metadata: the model dir, and the training config and
  evaluation of the run that made it, each with the file it came from
  (found as the model card finds them: `run_info`)."""
  from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax import run_info  # pylint: disable=g-import-not-at-top
  resolved = model_dir_lib.resolve_model_dir(model_dir)
  meta = model_dir_lib.read_metadata(resolved)
  workdir = run_info.run_workdir(resolved, meta)
  evaluated = run_info.evaluation(workdir, resolved)
  return {"model_dir": os.path.abspath(resolved),
          "training_config": (os.path.join(workdir, run_info.CONFIG_FILE)
                              if workdir else None),
          "evaluation": ({"file": evaluated[0], "metrics": evaluated[1]}
                         if evaluated else None)}


def build(model_dir: str, index: str = "", *, image_root: str = "",
          image_template: str = "images/{id}.jpg", max_batch: int = 64,
          batch_wait_ms: float = 5.0,
          limits: app_lib.Limits = app_lib.Limits(), api_key: str = "",
          warmup: bool = False, encoder: Any = None) -> Any:
  """The app for a model dir and an optional export and image root.
  warmup compiles every query batch bucket before the first request;
  `encoder`: the model dir already loaded (`dashclip_jax.load`)."""
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  from dashclip_jax.serving import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax.serving import search as search_lib  # pylint: disable=g-import-not-at-top
  encoder = encoder or dashclip_jax.load(model_dir)
  engine = engine_lib.EmbeddingEngine(
      encoder, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
  if warmup:
    for size in engine.buckets:
      encoder.encode_query(["warm up"] * size, batch_size=size)
  products = search_lib.ProductSearch(index) if index else None
  images = (search_lib.ImageRoot(image_root, image_template)
            if image_root else None)
  return app_lib.make_app(engine, products, images=images, limits=limits,
                          api_key=api_key, model_info=model_info(model_dir))


def define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  d = app_lib.Limits()
  flags.DEFINE_string("model", None, "Model dir (or training workdir).")
  flags.DEFINE_string("index", "", "Embedding export dir for /search.")
  flags.DEFINE_string("image_root", "", "Catalog dir holding the product "
                      "images; image paths outside it are refused.")
  flags.DEFINE_string("image_template", "images/{id}.jpg",
                      "A product's image under --image_root.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
  flags.DEFINE_integer("port", 8000, "Port to bind.")
  flags.DEFINE_integer("max_batch", 64, "Rows per forward at most.")
  flags.DEFINE_float("batch_wait_ms", 5.0,
                     "How long a forward waits for more requests.")
  flags.DEFINE_integer("max_request_bytes", d.max_request_bytes,
                       "Request bodies over this get 413, unread.")
  flags.DEFINE_integer("max_inputs", d.max_inputs, "Inputs per request.")
  flags.DEFINE_integer("max_input_chars", d.max_input_chars,
                       "Characters per input text.")
  flags.DEFINE_integer("max_products", d.max_products,
                       "Products per /v1/products/embeddings request.")
  flags.DEFINE_integer("max_k", d.max_k, "Largest k of /search.")
  flags.DEFINE_string("api_key_env", API_KEY_ENV, "Environment variable "
                      "holding the API key; unset or empty: no auth.")
  flags.DEFINE_bool("warmup", True, "Compile every batch bucket first.")
  flags.DEFINE_string("log_level", "warning", "uvicorn's log level.")


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"serve: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.model:
    sys.exit("serve: --model is required (a model dir or training workdir)")
  for flag in ("model", "index", "image_root"):  # Before jax is loaded.
    if getattr(f, flag) and not os.path.exists(getattr(f, flag)):
      sys.exit(f"serve: --{flag}={getattr(f, flag)}: no such file or "
               "directory")
  limits = app_lib.Limits(
      max_request_bytes=f.max_request_bytes, max_inputs=f.max_inputs,
      max_input_chars=f.max_input_chars, max_products=f.max_products,
      max_k=f.max_k)
  api_key = os.environ.get(f.api_key_env, "")
  try:
    api = build(f.model, f.index, image_root=f.image_root,
                image_template=f.image_template, max_batch=f.max_batch,
                batch_wait_ms=f.batch_wait_ms, limits=limits,
                api_key=api_key, warmup=f.warmup)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"serve: {type(e).__name__}: {e}".splitlines()[0])
  import uvicorn  # pylint: disable=g-import-not-at-top
  print(f"serving on http://{f.host}:{f.port}/ (auth "
        f"{'on' if api_key else 'off'})", flush=True)
  uvicorn.run(api, host=f.host, port=f.port, log_level=f.log_level)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
