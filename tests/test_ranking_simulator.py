"""The session simulator: seeded, clicks from the true labels as configured,
history updates, the cache, the catalog attributes it reads."""

import dataclasses

import numpy as np
import pytest

from dashclip_jax.ranking import cache
from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import click_model
from dashclip_jax.ranking import features
from dashclip_jax.ranking import simulator
from dashclip_jax.runtime import config_files


@pytest.fixture(scope="module")
def tiny():
  config = config_files.load_config("configs/ranking.py", "tiny")
  return catalog_data.load(config), simulator.SimConfig.of(config.sim)


def test_simulation_is_deterministic_given_its_seed(tiny):
  data, sim = tiny
  a = simulator.simulate(data, sim).arrays()
  b = simulator.simulate(data, sim).arrays()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  other = simulator.simulate(data, dataclasses.replace(sim, seed=1))
  assert not np.array_equal(other.click, a["click"])
  assert not np.array_equal(other.query, a["query"])


def _sigmoid(x):
  return 1 / (1 + np.exp(-np.asarray(x)))


def test_click_through_by_label_follows_the_click_model(tiny):
  data, sim = tiny
  logits = (-2.0, -0.5, 1.0)
  clicks = click_model.ClickModel(label_logits=logits, affinity_weight=0.0,
                                  popularity_weight=0.0, position_power=0.0)
  s = simulator.simulate(data, dataclasses.replace(
      sim, sessions_per_day=300, click=clicks))
  for label, want in enumerate(_sigmoid(logits)):
    shown = s.label == label
    got, n = s.click[shown].mean(), shown.sum()
    assert n > 1000
    assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n), (label, got)
  # Position bias: examination (1 + pos)^-1 multiplies every label's rate.
  s = simulator.simulate(data, dataclasses.replace(
      sim, sessions_per_day=300,
      click=dataclasses.replace(clicks, position_power=1.0)))
  for label, base in enumerate(_sigmoid(logits)):
    for pos in (0, 3):
      shown = s.label[:, pos] == label
      want, n = base / (1 + pos), shown.sum()
      got = s.click[:, pos][shown].mean()
      assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-3, (
          label, pos, got, want)
  # Labels are the data's: impressions carry the true label of the pair.
  np.testing.assert_array_equal(s.label, data.labels[s.query[:, None],
                                                     s.product])


def test_history_holds_earlier_purchases_only(tiny):
  data, sim = tiny
  s = simulator.simulate(data, sim)
  bought = {}  # user -> [(day, product)] made during the simulation.
  for i in np.argsort(s.day, kind="stable"):
    d, u = int(s.day[i]), int(s.user[i])
    earlier = {p for day, p in bought.get(u, []) if day < d}
    if s.history_length[i] <= sim.max_history:
      assert earlier <= set(s.history[i][s.history[i] >= 0].tolist())
    for p in s.product[i][s.purchase[i]]:
      bought.setdefault(u, []).append((d, int(p)))
  assert s.purchase.any() and (s.history_length == 0).any()
  assert ((s.history >= 0).sum(1) == np.minimum(s.history_length,
                                                sim.max_history)).all()


def test_cache_reuses_the_same_seed_and_parameters(tiny, tmp_path):
  data, sim = tiny
  first, where, cached = cache.load_or_simulate(data, sim, str(tmp_path))
  again, where_again, cached_again = cache.load_or_simulate(
      data, sim, str(tmp_path))
  assert not cached and cached_again and where == where_again
  for key, value in first.arrays().items():
    np.testing.assert_array_equal(getattr(again, key), value)
  _, other, cached_other = cache.load_or_simulate(
      data, dataclasses.replace(sim, click=dataclasses.replace(
          sim.click, position_power=2.0)), str(tmp_path))
  assert other != where and not cached_other


def test_rows_split_days_and_segments(tiny):
  data, sim = tiny
  s = simulator.simulate(data, sim)
  train = features.rows(s, data, (1, sim.train_days))
  nw = features.rows(s, data, (sim.train_days + 1, sim.num_days))
  k = sim.impressions
  assert len(train) + len(nw) == s.click.size
  assert len(nw) == k * int((s.day > sim.train_days).sum())
  np.testing.assert_array_equal(
      nw.click, s.click[s.day > sim.train_days].reshape(-1))
  np.testing.assert_array_equal(train.inputs["categorical"][:k, 5],
                                np.arange(k))  # Position.
  assert (train.inputs["categorical"].max(0) < np.array(train.vocab)).all()
  assert nw.has_history.any() and not nw.has_history.all()


def test_brand_from_title():
  assert catalog_data.brand_from_title(
      "U.S. Polo Assn. Men Blue Shirt") == "U.S. Polo Assn."
  assert catalog_data.brand_from_title("Nike Women Shoes") == "Nike"
  assert catalog_data.brand_from_title("Fastrack Watch") == "Fastrack"


def test_unknown_attribute_column_is_one_clear_error():
  config = config_files.load_config("configs/ranking.py", "tiny",
                                    {"attributes.colour": "baseColour"})
  with pytest.raises(config_files.ConfigError,
                     match=r"config.attributes.colour='baseColour'"):
    catalog_data.load(config)
