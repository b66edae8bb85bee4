"""Agreement metrics against hand-computed cases; threshold choice."""

import os

import numpy as np
import pytest

from dashclip_jax.curation import agreement

# Human labels and the teacher's argmax, as one-hot-ish probabilities.
HUMAN = np.array([0, 0, 1, 1, 2, 2])
TEACHER = np.array([0, 1, 1, 1, 2, 0])


def _probs(pred, conf=0.8):
  p = np.full((len(pred), 3), (1 - conf) / 2)
  p[np.arange(len(pred)), pred] = conf
  return p


def test_kappa_unweighted_and_linear_by_hand():
  m = agreement.agreement(_probs(TEACHER), HUMAN)
  # Observed agreement 4/6; chance: human marginals (2,2,2)/6, teacher's
  # (2,3,1)/6 -> pe = (4 + 6 + 2) / 36 = 1/3; kappa = (2/3-1/3)/(2/3) = 0.5.
  assert m["kappa"] == pytest.approx(0.5)
  # Linear weights |i-j|/2: observed disagreement (0.5 + 1) / 6 = 0.25;
  # expected sum_ij w_ij r_i c_j = (1/6)(1 + 1 + 0.5) = 5/12 -> 1 - 0.6.
  assert m["kappa_linear"] == pytest.approx(0.4)
  assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  assert m["accuracy"] == pytest.approx(4 / 6)
  assert m["per_class"]["0"]["precision"] == pytest.approx(0.5)
  assert m["per_class"]["1"]["recall"] == pytest.approx(1.0)
  assert m["per_class"]["2"]["recall"] == pytest.approx(0.5)


def test_ece_by_hand():
  probs = np.array([[0.95, 0.03, 0.02],   # conf 0.95, right
                    [0.95, 0.03, 0.02],   # conf 0.95, wrong
                    [0.55, 0.45, 0.00],   # conf 0.55, right
                    [0.10, 0.35, 0.55]])  # conf 0.55, right
  labels = np.array([0, 1, 0, 2])
  # Bin 9: accuracy 0.5 at confidence 0.95; bin 5: 1.0 at 0.55; each half.
  assert agreement.expected_calibration_error(probs, labels) == (
      pytest.approx(0.5 * 0.45 + 0.5 * 0.45))
  # Perfect calibration of a certain, right teacher: confidence 1 lands in
  # the last bin, not past it.
  assert agreement.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0
  bins = agreement.reliability_bins(probs, labels)
  assert [b["count"] for b in bins] == [0] * 5 + [2, 0, 0, 0, 2]


def test_threshold_sweep_and_choice():
  probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1],
                    [0.1, 0.1, 0.8]])
  labels = np.array([0, 1, 0, 2])  # Only the 0.6 pair is wrong.
  sweep = agreement.threshold_sweep(probs, labels, [0.4, 0.55, 0.7, 0.95])
  assert [s["coverage"] for s in sweep] == [1.0, 0.75, 0.5, 0.0]
  assert sweep[0]["accuracy"] == pytest.approx(0.75)
  assert sweep[2]["accuracy"] == 1.0 and sweep[3]["accuracy"] is None
  assert agreement.choose_threshold(sweep, 0.9)[0] == 0.7
  value, why = agreement.choose_threshold(sweep[:2], 0.9)
  assert value == 0.4 and "none reaches" in why  # Ties: the lower one.


def test_reliability_plot_writes_png(tmp_path):
  path = os.path.join(tmp_path, "r.png")
  agreement.reliability_plot(
      agreement.reliability_bins(_probs(TEACHER), HUMAN), path, "t")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
