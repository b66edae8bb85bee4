"""An OpenAI-compatible server for a GGUF Llama or a GPT teacher.

  python -m dashclip_jax.curation.serve --model=DIR [--host=127.0.0.1]
      [--port=8000] [--max_batch=16] [--batch_wait_ms=5] [--max_length=512]
      [--max_request_bytes=1048576]

DIR is a .gguf file, a directory holding exactly one, a saved GPT teacher
directory (`gpt.labeler.save_gpt_teacher`; LoRA merged), or "default" / ""
for the packaged SmolLM2. It binds to loopback unless --host says
otherwise, and serves, on FastAPI/uvicorn:

  GET  /v1/models            the one model (its id: --served_model_name,
                             else the teacher_id or the GGUF's file stem)
  POST /v1/chat/completions  messages rendered with the model's chat
                             template, the assistant turn opened
  POST /v1/completions       a raw prompt
  GET  /v1/stats             request counts by path and status, forwards,
                             batch sizes, compiled shapes, tokens
  GET  /health

with max_tokens (default 16), temperature (0: greedy; > 0: sampling,
reproducible with `seed`), top_p, and logprobs (chat: logprobs=true plus
top_logprobs <= 20; completions: logprobs=k <= 20) in OpenAI's response
schemas, and usage counts. Generation stops at max_tokens or the end-of-
text token (not in the text). Concurrent requests are batched
(`engine`, `serving.batching`); each generated token is one full forward
(no KV cache), so long generations are slow: this server is for labelling, whose
answer is one token. Not supported, answered 400: stream, n > 1, stop,
echo. Bad requests get HTTP 400 with an OpenAI-style error body; another
model's name gets 404.

One request cannot stall the others: a body over --max_request_bytes gets
413 from its Content-Length, before it is read (or as soon as the bytes
read pass the limit); a prompt whose bytes cannot fit the context in
tokens (the vocabulary's longest token bounds bytes per token) gets 400
before it is tokenized; and tokenizing runs on a worker thread, off the
event loop.
"""

from __future__ import annotations

import sys

from absl import app as absl_app
from absl import flags
import uvicorn

from dashclip_jax.curation.serve import endpoints
from dashclip_jax.curation.serve import engine as engine_lib
from dashclip_jax.curation.serve import loading
from dashclip_jax.serving import batching

# Flags are defined only when this module is the program, so that importing
# it leaves the importer's flags alone.


def define_flags() -> None:
  flags.DEFINE_string("model", None, "A .gguf file, a directory with one, a "
                      "GPT teacher directory, or 'default' (the packaged "
                      "SmolLM2).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
  flags.DEFINE_integer("port", 8000, "Port to bind.")
  flags.DEFINE_string("served_model_name", "",
                      "Model id clients ask for; default from --model.")
  flags.DEFINE_integer("max_batch", 16, "Rows per forward at most.")
  flags.DEFINE_float("batch_wait_ms", 5.0,
                     "How long a forward waits for more requests.")
  flags.DEFINE_integer("max_length", 512,
                       "Context: prompt + max_tokens tokens at most.")
  flags.DEFINE_integer("max_request_bytes", endpoints.MAX_REQUEST_BYTES,
                       "Request bodies over this get 413, unread.")
  flags.DEFINE_string("log_level", "warning", "uvicorn's log level.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"serve: unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.model is None:
    sys.exit("serve: --model is required (a .gguf file, a directory with "
             "one, a GPT teacher directory, or 'default')")
  try:
    name, config, params, tokenizer = loading.load_model(f.model)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"serve: {type(e).__name__}: {e}".splitlines()[0])
  try:
    engine = engine_lib.Engine(config, params, tokenizer.pad_id,
                               max_batch=f.max_batch,
                               max_length=f.max_length)
  except ValueError as e:
    sys.exit(f"serve: {e}")
  batcher = batching.Batcher(engine.next_logprobs, engine.max_batch,
                             f.batch_wait_ms / 1000)
  name = f.served_model_name or name
  print(f"serving {name} on http://{f.host}:{f.port}/v1 (batch buckets "
        f"{engine.batch_sizes}, length buckets {engine.lengths})", flush=True)
  uvicorn.run(endpoints.make_app(name, tokenizer, engine, batcher,
                                 f.max_request_bytes),
              host=f.host, port=f.port, log_level=f.log_level)


if __name__ == "__main__":
  define_flags()
  absl_app.run(main)
