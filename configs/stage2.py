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
  c, v = common.stage_config("stage2", arg)
  s1 = _sibling_config("stage1")
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",          # Stage-1 workdir/model or converted BLIP.
      query_from_text=True,   # Query tower <- (stage-1) text encoder.
  ))
  c.stage1 = s1.get_config(v) if v in ("tiny", "demo") else None
  c.data = s1.data_block(v)
  c.train.total_steps = common.by_variant(v, 6, 100, 10000)
  c.train.eval_every = common.by_variant(v, 3, 50, 1000)
  c.optim.lr = common.by_variant(v, 1e-3, 1e-3, 1e-5)
  c.optim.warmup_steps = common.by_variant(v, 1, 10, 500)
  c.loss = ml_collections.ConfigDict(dict(
      train_product_tower=False,   # DashCLIP freezes the product side.
      # Label-1 pairs follow data.label1_policy / label1_weight.
      symmetric=False,             # Add the query->product term.
      hard_k=0,                    # >0: only the k hardest in-batch negatives.
      deterministic=False,
  ))
  c.checkpoint.every_steps = common.by_variant(v, 2, 50, 1000)
  c.final_eval = final_eval_block(c.data, embedded=v in ("tiny", "demo"))
  return c
