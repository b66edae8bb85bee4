"""Train-step throughput: dashclip_jax vs Hugging Face PyTorch BLIP, same work.

  python bench/train_step.py [--batch 16] [--steps 8]

Both sides run a full optimizer step (forward, backward, AdamW) on the same
batch at the same sizes ("small": 4 layers, width 256, 128 px, patch 16):
  stage 1: ITC (in-batch, multi-positive by product id) + ITM with one hard
    negative image per text and text per image sampled from the softmax
    similarities (same id masked), 3B multimodal pairs. Dropout on. No
    momentum distillation on either side.
    torch: transformers.BlipForImageTextRetrieval (its vision_model,
    text_encoder in text and image-grounded modes, projections, itm_head).
  stage 2: QCC with N mined negative queries per product, product tower
    frozen, query tower + projection + temperature trained.
    torch: transformers.BertModel query tower + the BLIP multimodal product
    tower under no_grad.
Steps of the two sides are interleaved and timed one by one (medians), so
background load hits both alike. Prints examples/s per stage and side; the
last line is the geometric mean of the two stage speedups (ours / torch).
As the main job does, the process has glibc keep freed memory for reuse
(dashclip_jax.runtime.host_memory; DASHCLIP_KEEP_FREED_MEMORY=0 for glibc's defaults).
"""

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from dashclip_jax.runtime import host_memory  # noqa: E402

# As the main job does, and before numpy/jax/torch start threads. It holds
# for both sides: PyTorch's allocations come from the same malloc.
KEEP_FREED_MEMORY = host_memory.reuse_freed_memory_unless_disabled()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from dashclip_jax import model as model_lib  # noqa: E402
from dashclip_jax.model import tokenizer as tok  # noqa: E402
from dashclip_jax.train import sharding  # noqa: E402
from dashclip_jax.train import state as train_state  # noqa: E402

import mfu  # noqa: E402  (bench/: the step setup shared with the MFU bench)

LT, LQ, N_NEG = 32, 16, 3


def make_batch(b: int, cfg: model_lib.ModelConfig, seed: int = 0):
  rng = np.random.default_rng(seed)
  s = cfg.vision.image_size
  image = rng.standard_normal((b, s, s, 3)).astype(np.float32)
  ids = rng.integers(1000, 30000, (b, LT)).astype(np.int32)
  ids[:, 0] = tok.CLS_ID
  mask = np.ones((b, LT), np.int32)
  for i in range(b):  # Realistic padding: titles of 10..32 tokens.
    mask[i, rng.integers(10, LT + 1):] = 0
  ids = ids * mask
  pid = np.arange(b, dtype=np.int32)
  pid[1] = pid[0]  # One duplicated product: exercises the id masks.
  qids = rng.integers(1000, 30000, (b, LQ)).astype(np.int32)
  qids[:, 0] = tok.CLS_ID
  qmask = np.ones((b, LQ), np.int32)
  nq = rng.integers(1000, 30000, (b, N_NEG, LQ)).astype(np.int32)
  nq[..., 0] = tok.CLS_ID
  s1 = {"image": image, "ids": ids, "mask": mask, "product_id": pid}
  s2 = {"image": image, "title_ids": ids, "title_mask": mask,
        "product_id": pid, "query_ids": qids, "query_mask": qmask,
        "neg_query_ids": nq, "neg_query_mask": np.ones_like(nq),
        "neg_valid": np.ones((b, N_NEG), bool),
        "relevant_product_ids": np.full((b, 2), -1, np.int32),
        "label": np.full((b,), 2, np.int32),
        "label_weight": np.ones((b,), np.float32)}
  return s1, s2


# ---------------------------------------------------------------------------
# Ours.
# ---------------------------------------------------------------------------


def ours_runners(cfg, batches):
  """{stage: run_one_step() -> loss}, compiled; plus compile seconds."""
  runners, compile_s = {}, {}
  for stage, batch_np in ((1, batches[0]), (2, batches[1])):
    mesh, tx, sc, step = mfu.step_setup(stage, cfg)
    state = train_state.init_state(cfg, sc, tx, jax.random.key(0), mesh)
    batch = sharding.global_batch(batch_np, mesh)
    step = train_state.jit_step(
        step, train_state.state_shardings(state), batch, mesh)
    t0 = time.perf_counter()
    step = step.lower(state, batch, jax.random.key(0)).compile()
    compile_s[stage] = time.perf_counter() - t0
    box = {"state": state, "i": 0}

    def run(step=step, batch=batch, box=box):
      box["i"] += 1
      box["state"], m = step(box["state"], batch, jax.random.key(box["i"]))
      return float(m["loss"])  # Blocks until the step is done.
    runners[stage] = run
  return runners, compile_s


# ---------------------------------------------------------------------------
# PyTorch / Hugging Face.
# ---------------------------------------------------------------------------


def hf_blip(cfg: model_lib.ModelConfig) -> transformers.BlipForImageTextRetrieval:
  v, t = cfg.vision, cfg.text
  conf = transformers.BlipConfig(
      text_config=dict(vocab_size=t.vocab_size, hidden_size=t.width,
                       num_hidden_layers=t.depth, num_attention_heads=t.heads,
                       intermediate_size=t.mlp_dim,
                       max_position_embeddings=t.max_positions,
                       encoder_hidden_size=v.width, layer_norm_eps=t.ln_eps,
                       hidden_dropout_prob=t.dropout,
                       attention_probs_dropout_prob=t.dropout),
      vision_config=dict(hidden_size=v.width, num_hidden_layers=v.depth,
                         num_attention_heads=v.heads,
                         intermediate_size=v.mlp_dim, image_size=v.image_size,
                         patch_size=v.patch_size, layer_norm_eps=v.ln_eps),
      image_text_hidden_size=cfg.embed_dim)
  return transformers.BlipForImageTextRetrieval(conf)


def _ntx(x):
  return torch.from_numpy(np.ascontiguousarray(x))


def torch_stage1(model, temp, opt, batch):
  img = _ntx(batch["image"]).permute(0, 3, 1, 2).contiguous()
  ids, mask = _ntx(batch["ids"]).long(), _ntx(batch["mask"]).long()
  pid = _ntx(batch["product_id"]).long()
  b = ids.shape[0]
  vis = model.vision_model(pixel_values=img).last_hidden_state
  v = F.normalize(model.vision_proj(vis[:, 0]), dim=-1)
  txt = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
  t = F.normalize(model.text_proj(txt[:, 0]), dim=-1)
  with torch.no_grad():
    temp.clamp_(0.001, 0.5)
  s_i2t = v @ t.t() / temp
  s_t2i = t @ v.t() / temp
  same = pid[:, None] == pid[None, :]
  y = same.float() / same.float().sum(1, keepdim=True)
  itc = 0.5 * (-(F.log_softmax(s_i2t, 1) * y).sum(1).mean()
               - (F.log_softmax(s_t2i, 1) * y).sum(1).mean())
  enc_ids = ids.clone()
  enc_ids[:, 0] = tok.ENC_ID
  with torch.no_grad():
    w_i2t = F.softmax(s_i2t, 1).masked_fill(same, 0)
    w_t2i = F.softmax(s_t2i, 1).masked_fill(same, 0)
    neg_img = torch.multinomial(w_t2i, 1)[:, 0]
    neg_txt = torch.multinomial(w_i2t, 1)[:, 0]
  ids_all = torch.cat([enc_ids, enc_ids, enc_ids[neg_txt]])
  mask_all = torch.cat([mask, mask, mask[neg_txt]])
  img_all = torch.cat([vis, vis[neg_img], vis])
  h = model.text_encoder(
      input_ids=ids_all, attention_mask=mask_all,
      encoder_hidden_states=img_all,
      encoder_attention_mask=torch.ones(img_all.shape[:2], dtype=torch.long)
  ).last_hidden_state
  logits = model.itm_head(h[:, 0])
  labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long()
  loss = itc + F.cross_entropy(logits, labels)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], 1.0)
  opt.step()
  return loss.item()


def torch_stage2(blip, product_proj, query, query_proj, temp, opt, batch):
  img = _ntx(batch["image"]).permute(0, 3, 1, 2).contiguous()
  ids, mask = _ntx(batch["title_ids"]).long(), _ntx(batch["title_mask"]).long()
  pid = _ntx(batch["product_id"]).long()
  b = ids.shape[0]
  with torch.no_grad():  # Frozen product tower.
    vis = blip.vision_model(pixel_values=img).last_hidden_state
    enc_ids = ids.clone()
    enc_ids[:, 0] = tok.ENC_ID
    h = blip.text_encoder(
        input_ids=enc_ids, attention_mask=mask, encoder_hidden_states=vis,
        encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long)
    ).last_hidden_state
    c = F.normalize(product_proj(h[:, 0]), dim=-1)

  def enc_q(i, m):
    return F.normalize(query_proj(query(input_ids=i, attention_mask=m)
                                  .last_hidden_state[:, 0]), dim=-1)
  q = enc_q(_ntx(batch["query_ids"]).long(), _ntx(batch["query_mask"]).long())
  nq_ids = _ntx(batch["neg_query_ids"]).long()
  n = nq_ids.shape[1]
  nq = enc_q(nq_ids.reshape(b * n, -1),
             _ntx(batch["neg_query_mask"]).long().reshape(b * n, -1)
             ).reshape(b, n, -1)
  with torch.no_grad():
    temp.clamp_(0.001, 0.5)
  s = c @ q.t() / temp
  eye = torch.eye(b, dtype=torch.bool)
  s = s.masked_fill((pid[:, None] == pid[None, :]) & ~eye, -1e9)
  s_mined = torch.einsum("be,bne->bn", c, nq) / temp
  logits = torch.cat([s, s_mined], 1)
  loss = F.cross_entropy(logits, torch.arange(b))
  opt.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], 1.0)
  opt.step()
  return loss.item()


def torch_runners(cfg, batches):
  torch.manual_seed(0)
  blip = hf_blip(cfg).train()
  temp = torch.nn.Parameter(torch.tensor(cfg.temp_init))
  opt1 = torch.optim.AdamW(list(blip.parameters()) + [temp], lr=1e-5,
                           weight_decay=0.05)
  t = cfg.query
  query = transformers.BertModel(transformers.BertConfig(
      vocab_size=t.vocab_size, hidden_size=t.width,
      num_hidden_layers=t.depth, num_attention_heads=t.heads,
      intermediate_size=t.mlp_dim, max_position_embeddings=t.max_positions,
      layer_norm_eps=t.ln_eps, hidden_dropout_prob=t.dropout,
      attention_probs_dropout_prob=t.dropout),
      add_pooling_layer=False).train()
  query_proj = torch.nn.Linear(t.width, cfg.embed_dim)
  product_proj = torch.nn.Linear(cfg.text.width, cfg.embed_dim)
  temp2 = torch.nn.Parameter(torch.tensor(cfg.temp_init))
  opt2 = torch.optim.AdamW(list(query.parameters())
                           + list(query_proj.parameters()) + [temp2],
                           lr=1e-5, weight_decay=0.05)
  return {1: lambda: torch_stage1(blip, temp, opt1, batches[0]),
          2: lambda: torch_stage2(blip, product_proj, query, query_proj,
                                  temp2, opt2, batches[1])}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--size", default="small")
  args = p.parse_args()
  cfg = model_lib.model_config(args.size)
  batches = make_batch(args.batch, cfg)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; size={args.size} "
        f"batch={args.batch} steps={args.steps}; glibc keeps freed memory: "
        f"{KEEP_FREED_MEMORY} (${host_memory.ENV_VAR})")
  ours, compile_s = ours_runners(cfg, batches)
  theirs = torch_runners(cfg, batches)
  b = args.batch
  speedups = []
  for stage in (1, 2):
    for _ in range(2):  # Warm-up (allocator, caches, oneDNN primitives).
      ours[stage]()
      theirs[stage]()
    # Interleaved, so load from other processes hits both sides alike;
    # medians of per-step times.
    t_o, t_t = [], []
    for _ in range(args.steps):
      t0 = time.perf_counter()
      lo = ours[stage]()
      t_o.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      lt = theirs[stage]()
      t_t.append(time.perf_counter() - t0)
    o, t = b / float(np.median(t_o)), b / float(np.median(t_t))
    speedups.append(o / t)
    print(f"stage{stage}: ours {o:.2f} ex/s (compile {compile_s[stage]:.1f}s,"
          f" loss {lo:.3f}) | torch {t:.2f} ex/s (loss {lt:.3f}) | "
          f"speedup {o / t:.2f}", flush=True)
  print(f"train_step_speedup_vs_torch: "
        f"{math.sqrt(speedups[0] * speedups[1]):.2f}")


if __name__ == "__main__":
  main()
