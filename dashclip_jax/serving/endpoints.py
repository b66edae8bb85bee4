"""The embeddings server's FastAPI app: OpenAI-compatible embeddings,
product embeddings, search over an attached export, the search page, and
health, model and metrics endpoints.

  POST /v1/embeddings           OpenAI's schema; model dashclip-query (the
                                query tower) or dashclip-text; encoding
                                float or base64; dimensions must equal E
  POST /v1/products/embeddings  [{title, image_base64 | image_path}] ->
                                multimodal product embeddings
  POST /search                  {query, k, filters} -> top-k products
  GET  /images/{product_id}     the product's image under --image_root
  GET  /                        the search page
  GET  /healthz, /v1/models, /metrics (Prometheus text)

Every limit is checked before any tokenizing or decoding: the body size
(413, from Content-Length, before the body is read), inputs per request,
characters per input, k. Tokenizing, image decoding and searching run on
worker threads and forwards on the batchers' threads, so the event loop
only parses JSON and routes. Client mistakes get OpenAI-style errors (400,
401, 404, 413, 422), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import time
from typing import Any, Literal

from fastapi import responses
import numpy as np
import pydantic

from dashclip_jax.data import images as images_lib
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.serving import engine as engine_lib
from dashclip_jax.serving import metrics as metrics_lib
from dashclip_jax.serving import openai_http
from dashclip_jax.serving import page
from dashclip_jax.serving import search as search_lib
from dashclip_jax.serving.openai_http import RequestError

# Served model ids -> towers.
TEXT_MODELS = {"dashclip-query": "query", "dashclip-text": "text"}
PRODUCT_MODEL = "dashclip-product"
# Paths open without the API key: the page itself holds no data.
OPEN_PATHS = ("/", "/healthz")


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for; all checked before any tokenizing."""
  max_request_bytes: int = 2 << 20
  max_inputs: int = 512
  max_input_chars: int = 2048
  max_products: int = 64
  max_k: int = 100


class _Body(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore")


class EmbeddingsRequest(_Body):
  input: str | list[Any]
  model: str
  encoding_format: Literal["float", "base64"] = "float"
  dimensions: int | None = None
  user: str | None = None


class ProductInput(_Body):
  model_config = pydantic.ConfigDict(extra="forbid")
  title: str
  image_base64: str | None = None
  image_path: str | None = None


class ProductsRequest(_Body):
  input: ProductInput | list[ProductInput]
  model: str = PRODUCT_MODEL
  encoding_format: Literal["float", "base64"] = "float"
  dimensions: int | None = None


class SearchRequest(_Body):
  query: str
  k: int = pydantic.Field(10, ge=1)
  filters: dict[str, str | list[str]] | None = None


def check_texts(texts: Any, limits: Limits, param: str = "input"
                ) -> list[str]:
  """The inputs as a list of str; RequestError naming the first bad one.
  Only lengths and types: nothing is tokenized here."""
  if isinstance(texts, str):
    texts = [texts]
  if not texts:
    raise RequestError(f"{param} is empty: give a string or a list of "
                       "strings", param)
  if len(texts) > limits.max_inputs:
    raise RequestError(f"{param} has {len(texts)} items, over this server's "
                       f"limit of {limits.max_inputs} (--max_inputs)", param)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise RequestError(
          f"{param}[{i}] is {type(t).__name__}, not a string: this server "
          "takes text (token ids would be another tokenizer's)", param)
    if len(t) > limits.max_input_chars:
      raise RequestError(
          f"{param}[{i}] has {len(t)} characters, over this server's limit "
          f"of {limits.max_input_chars} (--max_input_chars)", param)
  error = tok.search_query_error(texts)
  if error:
    raise RequestError(f"{param}: {error}", param)
  return texts


def check_dimensions(dimensions: int | None, dim: int) -> None:
  if dimensions is not None and dimensions != dim:
    raise RequestError(f"dimensions={dimensions}: this model's embeddings "
                       f"have {dim} dimensions and are not shortened",
                       "dimensions")


def embedding_list(emb: np.ndarray, encoding: str, model: str,
                   tokens: int) -> bytes:
  """OpenAI's embeddings response for float32 (N, E), as JSON bytes
  (serialised here, on a worker thread, not by the framework on the event
  loop: 512 inputs are 100K+ floats)."""
  emb = np.asarray(emb, "<f4")
  as_json = ((lambda row: base64.b64encode(row.tobytes()).decode())
             if encoding == "base64" else (lambda row: row.tolist()))
  return json.dumps({
      "object": "list", "model": model,
      "data": [{"object": "embedding", "index": i, "embedding": as_json(row)}
               for i, row in enumerate(emb)],
      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()


def decode_product_image(item: ProductInput, i: int,
                         images: search_lib.ImageRoot | None) -> np.ndarray:
  """uint8 (H, W, 3) of input[i]'s image (worker thread: decodes)."""
  where = f"input[{i}]"
  if (item.image_base64 is None) == (item.image_path is None):
    raise RequestError(f"{where}: give exactly one of image_base64 and "
                       "image_path", where)
  if item.image_path is not None:
    if images is None:
      raise RequestError(f"{where}.image_path: this server has no image root "
                         "(--image_root); send image_base64", where)
    with open(images.resolve(item.image_path, where), "rb") as f:
      data = f.read()
  else:
    try:
      data = base64.b64decode(item.image_base64, validate=True)
    except (binascii.Error, ValueError):
      raise RequestError(f"{where}.image_base64 is not valid base64",
                         where) from None
  try:
    return images_lib.decode_image(data, where)
  except images_lib.ImageError as e:
    raise RequestError(str(e), where, 422, "invalid_image") from None


def make_app(engine: engine_lib.EmbeddingEngine,
             products: search_lib.ProductSearch | None = None, *,
             images: search_lib.ImageRoot | None = None,
             limits: Limits = Limits(), api_key: str = "",
             model_info: dict[str, Any] | None = None) -> Any:
  """The app; `engine`'s batchers start and stop with it, and report
  their batches to its metrics."""
  encoder, dim = engine.encoder, engine.dim
  metrics = metrics_lib.Metrics(engine.buckets)
  engine.observe = metrics.observe_batch
  if products is not None and products.dim != dim:
    raise ValueError(f"the export holds {products.dim}-d embeddings but the "
                     f"model's are {dim}-d; export the catalog with it")

  api = openai_http.app_serving("dashclip_jax embeddings", engine,
                                limits.max_request_bytes)

  @api.middleware("http")
  async def measure(request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    metrics.observe_request(route.path if route else "unmatched",
                            response.status_code,
                            time.perf_counter() - start)
    return response

  if api_key:  # Outermost: nothing runs for an unauthorised request.
    api.add_middleware(openai_http.BearerAuth, token=api_key,
                       open_paths=OPEN_PATHS)

  def in_thread(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)

  def as_json(data: bytes):
    return responses.Response(data, media_type="application/json")

  def token_count(texts: list[str]) -> int:
    return int(encoder.tokenize(texts)[1].sum())

  @api.get("/healthz")
  async def healthz():
    return {"status": "ok", "dimensions": dim,
            "products": len(products) if products is not None else 0}

  @api.get("/v1/models")
  async def models():
    info = {"dimensions": dim, **(model_info or {})}
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0,
         "owned_by": "dashclip_jax", **info}
        for name in (*TEXT_MODELS, PRODUCT_MODEL)]}

  @api.get("/metrics")
  async def prometheus():
    body, kind = metrics.exposition()
    return responses.Response(body, media_type=kind)

  @api.get("/", response_class=responses.HTMLResponse)
  async def search_page():
    return page.HTML

  @api.post("/v1/embeddings")
  async def embeddings(body: EmbeddingsRequest):
    tower = TEXT_MODELS.get(body.model)
    if tower is None:
      raise RequestError(f"The model {body.model!r} does not exist; this "
                         f"endpoint serves {sorted(TEXT_MODELS)}", "model",
                         404, "model_not_found")
    check_dimensions(body.dimensions, dim)
    texts = check_texts(body.input, limits)
    tokens = await in_thread(token_count, texts)
    emb = await engine.embed(tower, texts)
    metrics.inputs.labels(tower).inc(len(texts))
    return as_json(await in_thread(embedding_list, emb, body.encoding_format,
                                   body.model, tokens))

  @api.post("/v1/products/embeddings")
  async def product_embeddings(body: ProductsRequest):
    if body.model != PRODUCT_MODEL:
      raise RequestError(f"The model {body.model!r} does not exist; this "
                         f"endpoint serves {PRODUCT_MODEL!r}", "model", 404,
                         "model_not_found")
    check_dimensions(body.dimensions, dim)
    items = body.input if isinstance(body.input, list) else [body.input]
    if not items or len(items) > limits.max_products:
      raise RequestError(f"input has {len(items)} products; give 1 to "
                         f"{limits.max_products} (--max_products)", "input")
    titles = check_texts([p.title for p in items], limits, "title")
    pixels = await asyncio.gather(*(
        in_thread(decode_product_image, item, i, images)
        for i, item in enumerate(items)))
    tokens = await in_thread(token_count, titles)
    emb = await engine.embed("product", list(zip(pixels, titles)))
    metrics.inputs.labels("product").inc(len(items))
    return as_json(await in_thread(embedding_list, emb, body.encoding_format,
                                   PRODUCT_MODEL, tokens))

  @api.post("/search")
  async def search(body: SearchRequest):
    if products is None:
      raise RequestError("this server has no product index: start it with "
                         "--index=EXPORT_DIR", None, 404, "no_index")
    if body.k > limits.max_k:
      raise RequestError(f"k={body.k} is over this server's limit of "
                         f"{limits.max_k} (--max_k)", "k")
    start = time.perf_counter()
    query = check_texts([body.query], limits, "query")
    emb = (await engine.embed("query", query))[0]
    metrics.inputs.labels("query").inc()
    found = await in_thread(products.search, emb, body.k, body.filters)
    has_image = images is not None
    results = [dict(products.hit(row, score), rank=rank,
                    image=(f"/images/{products.ids[row]}" if has_image
                           else None))
               for rank, (row, score) in enumerate(found, 1)]
    return {"query": body.query, "k": body.k, "filters": body.filters or {},
            "results": results,
            "latency_ms": round(1000 * (time.perf_counter() - start), 2)}

  @api.get("/images/{product_id}")
  async def product_image(product_id: str):
    path = images.product_image(product_id) if images else None
    if path is None:
      raise RequestError(f"no image for product {product_id!r}", None, 404)
    return responses.FileResponse(path)

  return api
