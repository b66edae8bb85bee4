"""Parity and speed of our Flax BLIP vs HF PyTorch BLIP at base size (CPU).

  python bench/parity.py [--batch=8] [--image_size=224] [--repeats=3]

Random weights (BLIP-14M geometry: ViT-B/16, BERT-base, 256-d), converted
with `dashclip_jax.convert`. Prints the max abs error of every output, then
embeddings/s of each side, and last `parity_max_abs_err: <x>`.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # pylint: disable=g-import-not-at-top
import torch
import transformers

import jax
import jax.numpy as jnp

from dashclip_jax import convert
from dashclip_jax.convert import parity
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import tokenizer as tok


def hf_blip_base(image_size: int) -> transformers.BlipForImageTextRetrieval:
  config = transformers.BlipConfig(
      vision_config=dict(image_size=image_size, layer_norm_eps=1e-6),
      text_config=dict(num_attention_heads=12, vocab_size=tok.VOCAB_SIZE),
      image_text_hidden_size=256)
  torch.manual_seed(0)
  model = transformers.BlipForImageTextRetrieval(config).eval()
  parity.randomise_norms_and_biases(model)
  return model


def torch_outputs(model, pixels, ids, mask):
  with torch.no_grad():
    vis = model.vision_model(pixel_values=pixels).last_hidden_state
    img = torch.nn.functional.normalize(model.vision_proj(vis[:, 0]), dim=-1)
    txt = model.text_encoder(input_ids=ids, attention_mask=mask
                             ).last_hidden_state
    txt_emb = torch.nn.functional.normalize(model.text_proj(txt[:, 0]), dim=-1)
    mm = model.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=vis,
        encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long)
    ).last_hidden_state
    itm = model.itm_head(mm[:, 0])
  return dict(image_emb=img, text_emb=txt_emb, text_hidden=txt,
              multimodal_hidden=mm, itm_logits=itm)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--text_length", type=int, default=35)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  b, s, length = args.batch, args.image_size, args.text_length

  hf = hf_blip_base(s)
  workdir = tempfile.mkdtemp()
  hf.save_pretrained(os.path.join(workdir, "hf"))
  convert.convert(os.path.join(workdir, "hf"), os.path.join(workdir, "ours"))
  config, trees, _ = model_dir_lib.load_model_dir(
      os.path.join(workdir, "ours"))
  module, params = model_lib.DashClip(config), {"params": trees["params"]}

  rng = np.random.default_rng(0)
  images = rng.normal(size=(b, s, s, 3)).astype(np.float32)
  ids = np.zeros((b, length), np.int64)
  for row in range(b):
    n = int(rng.integers(5, length + 1))
    ids[row, :n] = rng.integers(1000, 30000, n)
    ids[row, 0], ids[row, n - 1] = tok.CLS_ID, tok.SEP_ID
  mask = (ids != 0).astype(np.int64)

  @jax.jit
  def ours_fn(params, images, ids, mask):
    return parity.blip_outputs(module, params, images, ids, mask)

  pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
  jargs = (params, jnp.asarray(images), jnp.asarray(ids, jnp.int32),
           jnp.asarray(mask, jnp.int32))
  ours = jax.block_until_ready(ours_fn(*jargs))  # Compile outside timing.
  ref = torch_outputs(hf, pixels, ids_t, mask_t)

  worst = 0.0
  for name, value in ref.items():
    diff = np.abs(np.asarray(ours[name], np.float64) - value.numpy())
    if diff.ndim == 3:  # Hidden states: compare real tokens only.
      diff = diff[mask.astype(bool)]
    worst = max(worst, float(diff.max()))
    print(f"max_abs_err {name:18s} {diff.max():.3e}")

  def timed(fn):
    best = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - start)
    return best

  t_jax = timed(lambda: jax.block_until_ready(ours_fn(*jargs)))
  t_torch = timed(lambda: torch_outputs(hf, pixels, ids_t, mask_t))
  # One "embedding" = an image, its text and their multimodal pass + ITM.
  print(f"jax   examples/s: {b / t_jax:8.2f}  ({t_jax * 1e3:.0f} ms/batch)")
  print(f"torch examples/s: {b / t_torch:8.2f}  ({t_torch * 1e3:.0f} ms/batch)")
  print(f"speed ratio jax/torch: {t_torch / t_jax:.2f}")
  print(f"parity_max_abs_err: {worst:.3e}")


if __name__ == "__main__":
  main()
