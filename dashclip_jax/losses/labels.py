"""Graded labels (2, 1, 0) -> stage-2 pair weights and validity, by policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Graded relevance (2 high, 1 moderate, 0 irrelevant): what is a label-1
# query-product pair in stage 2? Default "weighted" with weight 0.5: label-1
# pairs are relevant (they earn gain in the NDCG we evaluate with), so
# dropping them wastes data, but a full positive would teach the model that
# a missed constraint costs nothing. Half weight keeps the pull, ranks 2 > 1.
# "exclude" means one thing wherever it is set: label-1 pairs are no
# training pairs, neither anchors nor in-batch negatives, exactly as if the
# data pipeline had dropped them (data.relevance.stage2_pairs does). A
# weight-0 row kept as a negative would spend a batch slot on a pair whose
# product is relevant to its query, and would be a fourth policy that
# `data.label1_policy` cannot express. Either way a label-1 product is never
# a negative of its own query (relevant_product_ids).
LABEL_POLICIES = ("positive", "weighted", "exclude")
DEFAULT_LABEL_POLICY = "weighted"
DEFAULT_PARTIAL_WEIGHT = 0.5


def label_weights(labels: Array, policy: str = DEFAULT_LABEL_POLICY,
                  partial_weight: float = DEFAULT_PARTIAL_WEIGHT) -> Array:
  """Per-pair loss weight from graded labels (B,) in {0, 1, 2}.

  label 2 -> 1.0; label 1 -> 1.0 ("positive"), `partial_weight`
  ("weighted") or 0.0 ("exclude"); label 0 (or padding, < 0) -> 0.0.
  Rows with weight 0 here are no training pairs: pass `label_valid` as
  `qcc_loss(valid=...)` too, so they are not negatives either.
  """
  if policy not in LABEL_POLICIES:
    raise ValueError(f"label policy {policy!r} not in {LABEL_POLICIES}.")
  w1 = {"positive": 1.0, "weighted": partial_weight, "exclude": 0.0}[policy]
  labels = jnp.asarray(labels)
  return jnp.where(labels >= 2, 1.0, jnp.where(labels == 1, w1, 0.0)).astype(
      jnp.float32)


def label_valid(labels: Array, policy: str = DEFAULT_LABEL_POLICY) -> Array:
  """(B,) bool: which rows are training pairs under `policy`.

  Label 2 always; label 1 unless "exclude"; label 0 and padding (< 0) never
  (the pipeline's pairs are label 1 or 2; label-0 queries are the mined
  negatives).
  """
  if policy not in LABEL_POLICIES:
    raise ValueError(f"label policy {policy!r} not in {LABEL_POLICIES}.")
  labels = jnp.asarray(labels)
  return labels >= (2 if policy == "exclude" else 1)
