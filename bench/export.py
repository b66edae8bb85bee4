"""Embedding export throughput: ours vs HF PyTorch BLIP at the same size (CPU).

  python bench/export.py [--size=base] [--num_products=64] [--batch=32]

One run, side by side, same weights (random BLIP-14M geometry converted with
`dashclip_jax.convert`), same decoded product images and titles (the fashion
catalog when present, else synthetic pixels). Each side runs the whole export
path per batch: BLIP eval preprocessing + tokenising (the same host code for
both), image encoder, image-grounded text encoder ([ENC] at position 0),
projection of position 0 and L2 norm. Ours is `dashclip_jax.load(...)
.encode_product`; the reference is `BlipForImageTextRetrieval`'s
vision_model -> text_encoder(encoder_hidden_states) -> text_proj.

Prints products/s of each side, the max abs difference of the embeddings,
and last `export_speedup_vs_torch: <ours/torch>`.
"""

import argparse
import csv
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # pylint: disable=g-import-not-at-top
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dashclip_jax  # pylint: disable=g-import-not-at-top
from dashclip_jax import convert
from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok

FASHION = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                       "fashion")


def hf_blip(size: str) -> transformers.BlipForImageTextRetrieval:
  """HF BLIP retrieval model with the geometry of our `size`."""
  c = model_lib.model_config(size)
  v, t = c.vision, c.text
  config = transformers.BlipConfig(
      vision_config=dict(image_size=v.image_size, patch_size=v.patch_size,
                         hidden_size=v.width, num_hidden_layers=v.depth,
                         num_attention_heads=v.heads,
                         intermediate_size=v.mlp_dim, layer_norm_eps=v.ln_eps),
      text_config=dict(hidden_size=t.width, num_hidden_layers=t.depth,
                       num_attention_heads=t.heads,
                       intermediate_size=t.mlp_dim,
                       max_position_embeddings=t.max_positions,
                       encoder_hidden_size=v.width, vocab_size=tok.VOCAB_SIZE),
      image_text_hidden_size=c.embed_dim)
  torch.manual_seed(0)
  return transformers.BlipForImageTextRetrieval(config).eval()


def products(n: int) -> tuple[list[np.ndarray], list[str]]:
  """n decoded product images (uint8 HxWx3) and titles."""
  styles = os.path.join(FASHION, "styles.csv")
  if os.path.exists(styles):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with open(styles, newline="") as f:
      rows = [r for _, r in zip(range(n), csv.DictReader(f))]
    images = []
    for r in rows:
      with Image.open(os.path.join(FASHION, "images", f"{r['id']}.jpg")) as im:
        images.append(np.asarray(im.convert("RGB")))
    return images, [r["productDisplayName"] for r in rows]
  rng = np.random.default_rng(0)
  return ([rng.integers(0, 256, (128, 128, 3), np.uint8) for _ in range(n)],
          [f"Brand{i} Men Blue Cotton Shirt {i}" for i in range(n)])


def torch_export(hf, encoder, images, titles, batch: int) -> np.ndarray:
  """The reference export path, sharing our host-side preprocessing."""
  out = []
  with torch.inference_mode():
    for s in range(0, len(images), batch):
      pixels = torch.from_numpy(encoder.preprocess_images(
          images[s:s + batch])).permute(0, 3, 1, 2).contiguous()
      ids, mask = encoder.tokenize(titles[s:s + batch])
      ids = torch.from_numpy(ids.astype(np.int64))
      ids[:, 0] = tok.ENC_ID  # BLIP's image-grounded mode.
      mask = torch.from_numpy(mask.astype(np.int64))
      vis = hf.vision_model(pixel_values=pixels).last_hidden_state
      hidden = hf.text_encoder(
          input_ids=ids, attention_mask=mask, encoder_hidden_states=vis,
          encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long)
      ).last_hidden_state
      emb = torch.nn.functional.normalize(hf.text_proj(hidden[:, 0]), dim=-1)
      out.append(emb.numpy())
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="base", help="tiny, small or base")
  parser.add_argument("--num_products", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  hf = hf_blip(args.size)
  workdir = tempfile.mkdtemp()
  hf.save_pretrained(os.path.join(workdir, "hf"))
  convert.convert(os.path.join(workdir, "hf"), os.path.join(workdir, "ours"))
  ours = dashclip_jax.load(os.path.join(workdir, "ours"),
                           batch_size=args.batch)
  images, titles = products(args.num_products)
  n = len(images)

  # Warm-up (compiles ours once per batch shape; warms torch's allocator).
  ours.encode_product(images[:1], titles[:1])
  torch_export(hf, ours, images[:1], titles[:1], args.batch)

  # Interleaved repeats, best of each: on a shared machine both sides see
  # the same background load.
  t_ours = t_torch = float("inf")
  for _ in range(args.repeats):
    start = time.perf_counter()
    e_ours = ours.encode_product(images, titles)
    t_ours = min(t_ours, time.perf_counter() - start)
    start = time.perf_counter()
    e_torch = torch_export(hf, ours, images, titles, args.batch)
    t_torch = min(t_torch, time.perf_counter() - start)
  err = float(np.abs(e_ours - e_torch).max())
  print(f"size={args.size} products={n} batch={args.batch} "
        f"threads(torch)={torch.get_num_threads()}")
  print(f"ours  products/s: {n / t_ours:8.2f}  ({t_ours:.2f} s)")
  print(f"torch products/s: {n / t_torch:8.2f}  ({t_torch:.2f} s)")
  print(f"embedding max_abs_err: {err:.2e}")
  print(f"export_speedup_vs_torch: {t_torch / t_ours:.2f}")


if __name__ == "__main__":
  main()
