r"""Free-text product search over an embedding export.

  python -m dashclip_jax.evaluation.search --export_dir=/tmp/eval/export \
      --query="men navy blue shirts" --query="ladies purse" --k=10

The queries are encoded with the query tower of the checkpoint recorded in
the export's manifest (or --checkpoint) and looked up in the faiss index.
"""

import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from dashclip_jax.evaluation import export as export_lib

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Embedding export dir.")
_QUERY = flags.DEFINE_multi_string("query", None, "Query text (repeatable).")
_K = flags.DEFINE_integer("k", 10, "Products to print per query.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "", "Model dir for the query tower; default: the one the "
    "export was made with (manifest.json).")


def search(index: export_lib.ExportedIndex, encoder, queries: Sequence[str],
           k: int) -> list[list[tuple[str, str, float]]]:
  """Top-k (id, title, score) per query; `encoder.encode_query(texts)`."""
  return index.search(encoder.encode_query(list(queries)), k)


def format_results(queries: Sequence[str],
                   results: list[list[tuple[str, str, float]]]) -> str:
  lines = []
  for q, hits in zip(queries, results):
    lines.append(f"query: {q}")
    for rank, (pid, title, score) in enumerate(hits, 1):
      lines.append(f"  {rank:3d}. {score:7.4f}  {pid:>10}  {title}")
  return "\n".join(lines)


def main(argv) -> None:
  queries = list(_QUERY.value or []) + list(argv[1:])
  if not queries:
    sys.exit("search: error: give at least one --query")
  index = export_lib.ExportedIndex(_EXPORT_DIR.value)
  checkpoint = _CHECKPOINT.value or index.manifest.get("checkpoint", "")
  if not checkpoint:
    sys.exit(f"search: error: {_EXPORT_DIR.value}/manifest.json names no "
             "checkpoint; pass --checkpoint")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import dashclip_jax  # pylint: disable=g-import-not-at-top
  encoder = dashclip_jax.load(checkpoint)
  print(format_results(queries, search(index, encoder, queries, _K.value)))


if __name__ == "__main__":
  flags.mark_flag_as_required("export_dir")
  app.run(main)
