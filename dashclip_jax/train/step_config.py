"""The options of a train step (`train/steps.py`), from config.loss.

Kept apart from the steps so that the train state (`train/state.py`), which
the steps build on, can read them without importing the steps.
"""

import dataclasses

from dashclip_jax import losses

# The stage-2 product tower without its projection: what stage 2 caches when
# the optimizer's lr_mults (the configs' freeze rules) train none of it.
PRODUCT_TOWER_BODY_REGEX = r"(img|txt)/.*"


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Loss and step options (the model's dtype/remat live in ModelConfig)."""
  accum_steps: int = 1
  deterministic: bool = False  # True: dropout off (tests, parity).
  # Stage 1.
  itc_weight: float = 1.0
  itm_weight: float = 1.0
  momentum: float | None = None  # e.g. 0.995 enables BLIP distillation.
  queue_size: int = 0  # Only with momentum; 0 = in-batch momentum targets.
  alpha: float = 0.4
  alpha_ramp_steps: int = 0  # BLIP: 1-2 epochs of steps.
  # Stage 2. False: the product tower body is frozen and runs in eval mode.
  train_product_tower: bool = False
  # None: pair weights come from the batch's `label_weight` (the data
  # pipeline's `label1_policy`, default "weighted" 0.5, one source of truth).
  # Set to "positive"/"weighted"/"exclude" to recompute them from `label`;
  # "exclude" then masks label-1 rows out entirely (not even negatives),
  # the pipeline's meaning (see losses.LABEL_POLICIES).
  label_policy: str | None = None
  partial_weight: float = losses.DEFAULT_PARTIAL_WEIGHT
  symmetric: bool = False
  hard_k: int | None = None
