"""Serves a dashclip model's embeddings, and search over an export, over
HTTP (FastAPI + uvicorn).

  python -m dashclip_jax.serving --model=DIR [--index=EXPORT_DIR]
      [--image_root=CATALOG_DIR] [--host=127.0.0.1] [--port=8000]
      [--max_batch=64] [--batch_wait_ms=5] [--max_request_bytes=2097152]

DIR is any model directory `dashclip_jax.load` takes (a training workdir
means its latest model). EXPORT_DIR is an embedding export of the catalog
(`dashclip_jax/index.py`), made with this model. CATALOG_DIR holds the
product images (`images/{id}.jpg`, --image_template): /search links them
and /v1/products/embeddings reads image paths under it, nowhere else.

Endpoints (`serving/endpoints.py`): POST /v1/embeddings (OpenAI's: the
`openai` client works unchanged), POST /v1/products/embeddings, POST
/search, GET / (the search page), /healthz, /v1/models, /metrics
(Prometheus). Concurrent requests are batched into one forward per tower
(`serving/engine.py`).

It binds to loopback unless --host says otherwise. With the environment
variable named by --api_key_env (DASHCLIP_API_KEY) set, every endpoint but
/ and /healthz wants `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import os
from typing import Any

from dashclip_jax import inference
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.runtime import run_info
from dashclip_jax.serving import endpoints
from dashclip_jax.serving import engine as engine_lib
from dashclip_jax.serving import search as search_lib

API_KEY_ENV = "DASHCLIP_API_KEY"


def model_info(model_dir: str) -> dict[str, Any]:
  """/v1/models metadata: the model dir, and the training config and
  evaluation of the run that made it, each with the file it came from
  (found as the model card finds them: `run_info`)."""
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
          limits: endpoints.Limits = endpoints.Limits(), api_key: str = "",
          warmup: bool = False, encoder: Any = None) -> Any:
  """The app for a model dir and an optional export and image root.
  warmup compiles every query batch bucket before the first request;
  `encoder`: the model dir already loaded (`dashclip_jax.load`)."""
  encoder = encoder or inference.load(model_dir)
  engine = engine_lib.EmbeddingEngine(
      encoder, max_batch=max_batch, wait_s=batch_wait_ms / 1000)
  if warmup:
    for size in engine.buckets:
      encoder.encode_query(["warm up"] * size, batch_size=size)
  products = search_lib.ProductSearch(index) if index else None
  images = (search_lib.ImageRoot(image_root, image_template)
            if image_root else None)
  return endpoints.make_app(engine, products, images=images, limits=limits,
                            api_key=api_key, model_info=model_info(model_dir))
