"""Contrastive and matching losses for DashCLIP stage 1 (ITC, ITM) and 2 (QCC).

Every function here is pure: embeddings, temperature and masks in, `(loss,
metrics)` out, no config and no globals. Inputs are *global* arrays: under
`jax.jit` with a batch sharded over the mesh, XLA inserts the gathers, so the
negatives are the whole global batch on any mesh shape (unlike BLIP's
per-rank in-batch ITC, see BLIP_REFERENCE §4.1).

Notation: B batch, E embedding dim, Q queue length, N mined negatives per
product, R relevant product ids per query (padded with -1).

Losses are computed in float32 whatever the compute dtype of the encoders.

  itc          ITC (symmetric InfoNCE, momentum distillation) and alpha_ramp
  itm          ITM hard-negative sampling and its cross-entropy
  momentum     EMA momentum encoders and the ITC feature queues
  qcc          QCC and its false-negative mask
  labels       graded label policies -> QCC pair weights / validity
  temperature  the clamped temperature
  masking      NEG_INF and weighted means the losses share
"""

from dashclip_jax.losses.itc import alpha_ramp
from dashclip_jax.losses.itc import itc_loss
from dashclip_jax.losses.itm import itm_loss
from dashclip_jax.losses.itm import sample_hard_negatives
from dashclip_jax.losses.labels import DEFAULT_LABEL_POLICY
from dashclip_jax.losses.labels import DEFAULT_PARTIAL_WEIGHT
from dashclip_jax.losses.labels import LABEL_POLICIES
from dashclip_jax.losses.labels import label_valid
from dashclip_jax.losses.labels import label_weights
from dashclip_jax.losses.masking import NEG_INF
from dashclip_jax.losses.momentum import ema_update
from dashclip_jax.losses.momentum import enqueue
from dashclip_jax.losses.momentum import init_queue
from dashclip_jax.losses.qcc import false_negative_mask
from dashclip_jax.losses.qcc import qcc_loss
from dashclip_jax.losses.temperature import TEMP_MAX
from dashclip_jax.losses.temperature import TEMP_MIN
from dashclip_jax.losses.temperature import clamp_temp
