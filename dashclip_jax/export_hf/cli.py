r"""Exports a dashclip model to the Hugging Face / PyTorch ecosystem.

The command line (`pipeline.export` does the work):

  python -m dashclip_jax.export_hf --model=DIR --output=OUT [--overwrite]

DIR is any model directory this project writes, or a training workdir (its
newest trained models/<step>). Errors are one line,
`export_hf: error: <what, naming the culprit>`; notes (what is used
differently from HF's defaults) are lines `export_hf: note: ...`.
"""

from __future__ import annotations

import argparse
import sys

from dashclip_jax import app
from dashclip_jax.export_hf import pipeline
from dashclip_jax.export_hf.errors import ExportError


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m dashclip_jax.export_hf",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True,
                      help="dashclip model directory or training workdir")
  parser.add_argument("--output", required=True, help="export directory")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an earlier export at --output")
  args = parser.parse_args(argv)
  with app.one_line_errors("export_hf", (ExportError,)):
    report = pipeline.export(args.model, args.output, args.overwrite)
  for note in report["notes"]:
    print(f"export_hf: note: {note}", file=sys.stderr)
  print(f"export_hf: wrote {report['output']} from {report['model_dir']}: "
        f"blip/ ({report['blip']['tensors']} tensors), query/ "
        f"({' -> '.join(report['query']['modules'])}), "
        f"{' + '.join(report['product']['files'])}, README.md",
        file=sys.stderr)
