"""`python -m dashclip_jax.serving`: the embeddings and search server's
command line (serving/server.py builds the app).

Flags are defined only when this module is the program, so that importing
it leaves the importer's flags alone.
"""

from __future__ import annotations

import os
import sys

from absl import app as absl_app
from absl import flags
import uvicorn

from dashclip_jax.serving import endpoints
from dashclip_jax.serving import server


def define_flags() -> None:
  d = endpoints.Limits()
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
  flags.DEFINE_string("api_key_env", server.API_KEY_ENV, "Environment variable "
                      "holding the API key; unset or empty: no auth.")
  flags.DEFINE_bool("warmup", True, "Compile every batch bucket first.")
  flags.DEFINE_string("log_level", "warning", "uvicorn's log level.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"serve: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.model:
    sys.exit("serve: --model is required (a model dir or training workdir)")
  for flag in ("model", "index", "image_root"):  # Before jax is loaded.
    if getattr(f, flag) and not os.path.exists(getattr(f, flag)):
      sys.exit(f"serve: --{flag}={getattr(f, flag)}: no such file or "
               "directory")
  limits = endpoints.Limits(
      max_request_bytes=f.max_request_bytes, max_inputs=f.max_inputs,
      max_input_chars=f.max_input_chars, max_products=f.max_products,
      max_k=f.max_k)
  api_key = os.environ.get(f.api_key_env, "")
  try:
    api = server.build(f.model, f.index, image_root=f.image_root,
                       image_template=f.image_template, max_batch=f.max_batch,
                       batch_wait_ms=f.batch_wait_ms, limits=limits,
                       api_key=api_key, warmup=f.warmup)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"serve: {type(e).__name__}: {e}".splitlines()[0])
  print(f"serving on http://{f.host}:{f.port}/ (auth "
        f"{'on' if api_key else 'off'})", flush=True)
  uvicorn.run(api, host=f.host, port=f.port, log_level=f.log_level)


if __name__ == "__main__":
  define_flags()
  absl_app.run(main)
