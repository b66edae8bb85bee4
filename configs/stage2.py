r"""Stage 2: align the query encoder with the multimodal product embedding.

  python -m dashclip_jax.main --config=configs/stage2.py:demo --workdir=/tmp/dc
  python -m dashclip_jax.main --config=configs/stage2.py:base \
      --config.init.checkpoint=/tmp/s1 --workdir=/tmp/s2

Variants:
  tiny   CI scale; runs its own tiny stage 1 first (see `stage1` below).
  demo   the README main job: stage 1, stage 2 and a retrieval evaluation on
         the embedded synthetic catalog, minutes on 2 CPU cores.
  base   BLIP-14M geometry on the fashion catalog, initialised from the
         stage-1 workdir or converted checkpoint named by init.checkpoint.

Where `stage1` is set (tiny, demo) and init.checkpoint is empty, the main job
runs that stage-1 config first in <workdir>/stage1 and starts stage 2 from its
exported model; with init.checkpoint set, the `stage1` block is ignored.
"""

import ml_collections

from dashclip_jax import config_lib as common


def _sibling_config(name: str):
  """configs/<name>.py as a module (configs/ is not a package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      f"dashclip_{name}_config", os.path.join(os.path.dirname(__file__),
                                               f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def final_eval_block(data: ml_collections.ConfigDict, embedded: bool):
  """configs/eval.py over the same data, run after stage 2 when enabled."""
  c = _sibling_config("eval").get_config(
      "synthetic" if data.source == "synthetic" else "fashion")
  c.enabled = embedded
  if data.source == "synthetic":
    c.data.synthetic = dict(data.synthetic)
  else:
    c.data.catalog_dir = data.path
  # "init": the model before any training (stage 1's start when the main
  # job runs stage 1, else init.checkpoint): the untrained reference.
  c.baselines = ("init", "bm25")
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="base")
  v = arg.variant
  if v not in ("tiny", "demo", "base"):
    raise ValueError(f"unknown stage2 variant {v!r}: tiny, demo or base")
  s1 = _sibling_config("stage1")
  c = ml_collections.ConfigDict()
  c.stage = "stage2"
  c.seed = 0
  c.mesh = common.mesh_config()
  c.model = common.model_block({"tiny": "tiny", "demo": "small"}.get(v, "base"))
  if v == "demo":
    c.model.image_size = 64
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",          # Stage-1 workdir/model or converted BLIP.
      query_from_text=True,   # Query tower <- (stage-1) text encoder.
  ))
  c.stage1 = s1.get_config(v) if v in ("tiny", "demo") else None
  c.data = s1.data_block(v)
  c.train = common.train_block(
      batch_size={"tiny": 8, "demo": 32}.get(v, 256),
      total_steps={"tiny": 6, "demo": 100}.get(v, 10000))
  c.train.fast_compile = v == "tiny"
  c.train.log_every = {"tiny": 2, "demo": 20}.get(v, 50)
  c.train.eval_every = {"tiny": 3, "demo": 50}.get(v, 1000)
  c.optim = ml_collections.ConfigDict(dict(
      lr={"tiny": 1e-3, "demo": 1e-3}.get(v, 1e-5), init_lr=0.0, end_lr=0.0,
      warmup_steps={"tiny": 1, "demo": 10}.get(v, 500),
      weight_decay=0.05, clip_norm=1.0, lr_mults=[(".*", 1.0)],
  ))
  c.loss = ml_collections.ConfigDict(dict(
      train_product_tower=False,   # DashCLIP freezes the product side.
      # Label-1 pairs follow data.label1_policy / label1_weight.
      symmetric=False,             # Add the query->product term.
      hard_k=0,                    # >0: only the k hardest in-batch negatives.
      deterministic=False,
  ))
  c.eval = ml_collections.ConfigDict(dict(batch_size={"tiny": 16}.get(v, 64)))
  c.checkpoint = common.checkpoint_block()
  c.checkpoint.every_steps = {"tiny": 2, "demo": 50}.get(v, 1000)
  c.final_eval = final_eval_block(c.data, embedded=v in ("tiny", "demo"))
  return c
