r"""Stage 1: continual pretraining of BLIP's product encoders (ITC + ITM).

  python -m dashclip_jax.main --config=configs/stage1.py:tiny --workdir=/tmp/s1
  python -m dashclip_jax.main --config=configs/stage1.py:base \
      --config.init.checkpoint=ckpt/blip14m --workdir=/tmp/s1

Variants:
  tiny   CI scale: tiny model, embedded synthetic catalog, a few steps.
  demo   the README main job's stage 1: small ViT + MiniLM-L6 text tower
         (init.text_from), synthetic catalog, a few minutes on 2 CPU cores.
  fashion  the fashion main job's stage 1 (configs/stage2.py:fashion): the
         demo's model on ../shared/data/fashion, 300 steps.
  base   BLIP-14M on the fashion catalog: 224 px, lr 1e-5, wd 0.05, BLIP
         momentum distillation (queue 57,600, alpha 0.4 ramped over the
         first epoch); set init.checkpoint to a converted BLIP.
"""

import ml_collections

from dashclip_jax.runtime import config_files

common = config_files.sibling_config(__file__, "common")


def get_config(arg=None):
  c, v = common.stage_config("stage1", arg)
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",
      # "minilm": text + query towers from MiniLM-L6 when no checkpoint.
      text_from="minilm" if v in ("demo", "fashion") else "",
  ))
  c.data = common.data_block(v)  # Shared with stage 2.
  # demo: 40 steps, one evaluation at the end. The earlier 80 (with stage
  # 2's 100) kept the README job over its 9 minutes on 2 cores; the final
  # table moved only in dashclip's NDCG@10, 0.9878 -> 0.9843 (README).
  c.train.total_steps = common.by_variant(
      v, tiny=6, demo=40, fashion=300, base=20000)
  c.train.eval_every = common.by_variant(
      v, tiny=3, demo=40, fashion=100, base=1000)
  c.optim.lr = common.by_variant(
      v, tiny=1e-3, demo=3e-4, fashion=3e-4, base=1e-5)
  c.optim.warmup_steps = common.by_variant(
      v, tiny=1, demo=10, fashion=20, base=1000)
  # Stage 1 never uses the query tower or product_proj: frozen (else AdamW's
  # weight decay alone would shrink a pretrained query tower).
  c.optim.lr_mults = "(query|query_proj|product_proj)/.*=0; .*=1"
  if v in ("demo", "fashion"):
    # Their text tower is MiniLM (init.text_from): a tenth of the lr keeps
    # what it knows; its new cross-attention and the ViT learn at full lr.
    c.optim.lr_mults = ("(query|query_proj|product_proj)/.*=0; "
                        "txt/.*cross_attn.*=1; txt/.*=0.1; .*=1")
  c.loss = ml_collections.ConfigDict(dict(
      itc_weight=1.0, itm_weight=1.0,
      # base follows BLIP: momentum distillation with 57,600 queued features
      # and alpha 0.4 ramped over the first epoch (alpha_ramp_epochs, of the
      # train catalog at train.batch_size; > 0 replaces alpha_ramp_steps).
      # A converted BLIP's momentum encoders and queues are loaded for it.
      momentum=0.995 if v == "base" else 0.0,   # 0: no momentum distillation.
      queue_size=57600 if v == "base" else 0,
      alpha=0.4, alpha_ramp_steps=0,
      alpha_ramp_epochs=1.0 if v == "base" else 0.0,
      deterministic=False,
  ))
  c.checkpoint.every_steps = common.by_variant(
      v, tiny=2, demo=20, fashion=100, base=1000)
  # True: start over in a workdir that holds a run (its checkpoints, models
  # and metrics are moved aside, not deleted); else a rerun resumes.
  c.checkpoint.restart = False
  return c
