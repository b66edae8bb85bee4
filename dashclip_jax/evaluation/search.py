r"""Free-text product search over an embedding export.

  python -m dashclip_jax.evaluation.search --export_dir=/tmp/eval/export \
      --query="men navy blue shirts" --query="ladies purse" --k=10

The queries are encoded with the query tower of the checkpoint recorded in
the export's manifest (or --checkpoint) and looked up in the faiss index.
A bad flag, an empty query, a missing or unreadable export or checkpoint
ends in one line, `search: error: <message>`.
"""

import os
import re
from typing import Sequence

from absl import app as absl_app
from absl import flags

from dashclip_jax import app
from dashclip_jax import index as index_lib
from dashclip_jax import inference
from dashclip_jax.model import tokenizer
from dashclip_jax.runtime import flag_errors
from dashclip_jax.runtime.config_files import ConfigError

PROG = "search"

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Embedding export dir.")
_QUERY = flags.DEFINE_multi_string("query", None, "Query text (repeatable).")
_K = flags.DEFINE_integer("k", 10, "Products to print per query.",
                          lower_bound=1)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "", "Model dir for the query tower; default: the one the "
    "export was made with (manifest.json).")


def format_results(queries: Sequence[str],
                   results: list[list[index_lib.SearchHit]]) -> str:
  lines = []
  for q, hits in zip(queries, results):
    lines.append(f"query: {q}")
    for rank, (pid, title, score) in enumerate(hits, 1):
      lines.append(f"  {rank:3d}. {score:7.4f}  {pid:>10}  {title}")
  return "\n".join(lines)


def _reason(error: BaseException) -> str:
  """An error's message on one line, without faiss's C++ location prefix."""
  return re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "",
                flag_errors.one_line(str(error)))


def load_index(export_dir: str) -> index_lib.ExportedIndex:
  """The export in `export_dir`; ConfigError if it is missing or unreadable."""
  if not os.path.isdir(export_dir):
    raise ConfigError(f"--export_dir={export_dir}: no such "
                      "directory")
  try:
    return index_lib.ExportedIndex(export_dir)
  except FileNotFoundError as e:
    raise ConfigError(f"--export_dir: {_reason(e)}") from None
  except (RuntimeError, OSError, ValueError) as e:
    # faiss reads raise RuntimeError, a bad Parquet file ArrowInvalid (a
    # ValueError), a bad manifest JSONDecodeError (a ValueError).
    raise ConfigError(
        f"--export_dir={export_dir}: unreadable export ({_reason(e)}); "
        "export it again (evaluation.run)") from None


def main(argv) -> None:
  queries = list(_QUERY.value or []) + list(argv[1:])
  with app.one_line_errors(PROG, (ConfigError,
                                  FileNotFoundError)):
    if not queries:
      raise ConfigError("give at least one --query")
    error = tokenizer.search_query_error(queries)
    if error:
      raise ConfigError(f"--query: {error}")
    index = load_index(_EXPORT_DIR.value)
    checkpoint = _CHECKPOINT.value or index.manifest.get("checkpoint", "")
    if not checkpoint:
      raise ConfigError(
          f"{_EXPORT_DIR.value}/manifest.json names no checkpoint; pass "
          "--checkpoint")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = inference.load(checkpoint)
    try:
      encoder.attach_index(index)
    except ValueError as e:  # The export's dim is not the model's.
      raise ConfigError(f"--checkpoint={checkpoint}: {e}") from None
  print(format_results(queries, encoder.search(queries, _K.value)))


if __name__ == "__main__":
  flags.mark_flag_as_required("export_dir")
  absl_app.run(main, flags_parser=flag_errors.flags_parser(PROG))
