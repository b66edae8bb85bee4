"""The position-biased click model (examination hypothesis).

  P(click)    = examination(position) x attractiveness
  examination = (1 + position) ** -position_power       (position from 0)
  attract.    = sigmoid(label_logits[label] + affinity_weight x affinity
                        + popularity_weight x popularity)
  P(purchase | click) = purchase_rate x attractiveness

Clicks depend on the true relevance label and the user's affinity only:
never on the embeddings under test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from dashclip_jax.runtime import config_files


@dataclasses.dataclass(frozen=True)
class ClickModel:
  """config.sim.click (configs/ranking.py:CLICKS has the named sets)."""
  label_logits: tuple[float, float, float] = (-3.0, -1.5, 0.0)
  affinity_weight: float = 1.0
  popularity_weight: float = 0.3
  position_power: float = 1.0
  purchase_rate: float = 0.3

  @classmethod
  def of(cls, cfg: Mapping[str, Any]) -> "ClickModel":
    out = cls(**dict(cfg))
    if len(out.label_logits) != 3:
      raise config_files.ConfigError(
          f"config.sim.click.label_logits needs one logit per label 0, 1, "
          f"2; got {out.label_logits}")
    if not 0.0 <= out.purchase_rate <= 1.0:
      raise config_files.ConfigError(
          f"config.sim.click.purchase_rate must be in [0, 1], got "
          f"{out.purchase_rate}")
    return dataclasses.replace(out, label_logits=tuple(
        float(x) for x in out.label_logits))


def examination(positions: np.ndarray, power: float) -> np.ndarray:
  """P(a user looks at slot `positions` (0 = top))."""
  return (1.0 + np.asarray(positions, np.float64)) ** -power


def attractiveness(labels: np.ndarray, affinity: np.ndarray,
                   popularity: np.ndarray, model: ClickModel) -> np.ndarray:
  """P(click | examined) of (label, affinity, popularity) arrays."""
  logit = (np.asarray(model.label_logits)[np.asarray(labels, np.int64)]
           + model.affinity_weight * affinity
           + model.popularity_weight * popularity)
  return 1.0 / (1.0 + np.exp(-logit))


def draw_clicks(labels: np.ndarray, affinity: np.ndarray,
                popularity: np.ndarray, model: ClickModel,
                rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(S, K) impressions in slot order -> (P(click) float32, clicks,
  purchases bool), each (S, K)."""
  attract = attractiveness(labels, affinity, popularity, model)
  exam = examination(np.arange(labels.shape[-1]), model.position_power)
  prob = exam * attract
  clicks = rng.random(labels.shape) < prob
  purchases = clicks & (rng.random(labels.shape)
                        < model.purchase_rate * attract)
  return prob.astype(np.float32), clicks, purchases
