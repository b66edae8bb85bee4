"""Export round trip on real products: the HF / PyTorch export vs
dashclip_jax.load (CPU, float32).

  python bench/export_hf_roundtrip.py --model=DIR
      [--data=../shared/data/fashion] [--num=16] [--output=OUT] [--overwrite]

Exports DIR (a model dir or training workdir) to OUT (default: a temporary
directory, removed at the end) with `export_hf.export`, then takes `--num`
products of the test relevance data (qrels_test.csv; relevance_train.csv
when there is none; the synthetic catalog and its queries when --data is
absent), each with its image (raw PIL, as read from the catalog), its
title and one query judged for it. Side by side with `dashclip_jax.load(DIR)`
(export_hf.roundtrip):

  image, text, itm, product   BlipForImageTextRetrieval + the shipped
      OUT/product_embedding.py on the exported BlipProcessor's pixels and
      ids of the raw images and titles (the user's path, not our pixels)
  query   SentenceTransformer(OUT/query).encode(raw query texts)

Prints one line per output: its max abs error and PASS/FAIL against 1e-5;
last `max_abs_error <value>`. Exits 1 on any FAIL.
"""

import argparse
import io
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image
from transformers.utils import logging as hf_logging

import dashclip_jax
from dashclip_jax import export_hf
from dashclip_jax.data import sources
from dashclip_jax.export_hf import roundtrip
# pylint: enable=g-import-not-at-top

FASHION = os.path.normpath(os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "fashion"))
TOL = 1e-5


def products(data: str | None, n: int
             ) -> tuple[str, list[Image.Image], list[str], list[str]]:
  """-> (what was read, n raw images, their titles, a query of each)."""
  if data and os.path.isdir(data):
    src, what = sources.load_sources({"source": "fashion",
                                      "path": data}), data
  else:
    src, what = sources.load_sources({}), "synthetic"
  rel, cat = src.test_relevance, src.test_catalog
  if rel is None or not len(rel):
    rel, cat = src.train_relevance, src.train_catalog
  # The first judged query of n distinct products, in a seeded order.
  chosen: dict[int, int] = {}
  for row in np.random.default_rng(0).permutation(len(rel)):
    chosen.setdefault(int(rel.product[row]), int(rel.query[row]))
    if len(chosen) == n:
      break
  if len(chosen) < n:
    raise SystemExit(f"{what}: only {len(chosen)} judged products, "
                     f"--num={n} asked")
  images = [Image.open(io.BytesIO(cat.image_bytes(i))) for i in chosen]
  return (f"{what} ({cat.name}, {rel.name})", images,
          [cat.titles[i] for i in chosen],
          [rel.queries[q] for q in chosen.values()])


def report(name: str, error: float, detail: str = "") -> bool:
  ok = error < TOL
  print(f"{name:8s} max_abs_error {error:.3e}  {'PASS' if ok else 'FAIL'}"
        f"{'  ' + detail if detail else ''}")
  return ok


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True,
                      help="dashclip model directory or training workdir")
  parser.add_argument("--data", default=FASHION,
                      help="fashion-layout folder; synthetic when absent")
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--output", help="export directory (default: a "
                      "temporary one, removed at the end)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an earlier export at --output")
  args = parser.parse_args()
  hf_logging.disable_progress_bar()  # Per-file load bars: noise here.
  if args.num < 2:
    parser.error(f"--num={args.num}: need at least 2 products")

  with tempfile.TemporaryDirectory() as tmp:
    out = args.output or os.path.join(tmp, "export")
    start = time.perf_counter()
    try:
      export_hf.export(args.model, out, overwrite=args.overwrite)
    except export_hf.ExportError as e:
      raise SystemExit(f"export_hf_roundtrip: error: {e}") from None
    export_s = time.perf_counter() - start
    what, images, titles, queries = products(args.data, args.num)
    print(f"exported {args.model} -> {out} in {export_s:.1f}s; "
          f"{args.num} products of {what}")

    ours = dashclip_jax.load(args.model, batch_size=args.num)
    got = roundtrip.torch_outputs(
        out, roundtrip.processor_inputs(out, images, titles))
    want = roundtrip.dashclip_outputs(ours, images, titles)
    errors = roundtrip.errors(got, want)
    errors["query"] = roundtrip.max_abs_error(
        roundtrip.load_query(out).encode(queries, convert_to_numpy=True),
        ours.encode_query(queries))

  itm = want["itm"]
  ok = [report(name, errors[name],
               f"(values {itm.min():.4f}..{itm.max():.4f})"
               if name == "itm" else "")
        for name in (*roundtrip.OUTPUTS, "query")]
  print(f"max_abs_error {max(errors.values()):.3e}")
  if not all(ok):
    sys.exit(1)


if __name__ == "__main__":
  main()
