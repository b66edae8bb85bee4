"""The session simulator: users, queries, impressions, clicks, purchases.

Seeded and deterministic (every draw comes from `np.random.default_rng(
[seed, part, day])`). Before day 1 each user with a history (all but
`no_history_share` of them) made 1 + Poisson(history_mean - 1) purchases on
days drawn in [1 - history_days, 0], each product drawn by
P(p | u) ~ exp(history_temperature x affinity(u, p)). Then, on each of
`num_days` days, `sessions_per_day` sessions: a uniform user issues a query
of the relevance data, P(q | u) ~ exp(query_temperature x u's mean affinity
to q's label-2 products); the retriever shows K products; clicks and
purchases follow the click model (click_model.py). A day's purchases join
the history the next day; a session sees the user's purchases of the last
`history_days` days before its own (at most `max_history`, newest first).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from dashclip_jax.runtime import config_files

from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import click_model as click_lib
from dashclip_jax.ranking import retriever as retriever_lib
from dashclip_jax.ranking import users as users_lib


@dataclasses.dataclass
class Sessions:
  """S sessions of K impressions each (arrays; saved as one .npz).

  Attributes:
    day: int32 (S,) 1..num_days.
    user: int32 (S,).
    query: int32 (S,) index into RankingData.queries.
    product: int32 (S, K) products shown, slot order.
    label: int8 (S, K) their true labels.
    bm25: float32 (S, K) the retriever's normalised BM25 of each.
    p_click: float32 (S, K) the click model's P(click) (the oracle's
      score: no model can rank the clicks better in expectation).
    click, purchase: bool (S, K).
    history: int32 (S, H) the user's purchases before the session, newest
      first, -1 padded.
    history_length: int32 (S,) purchases within the window (may exceed H).
    user_gender: int32 (U,) each user's gender code (the DCN's segment).
    popularity: float32 (N,) the products' latent popularity, N(0, 1).
  """
  day: np.ndarray
  user: np.ndarray
  query: np.ndarray
  product: np.ndarray
  label: np.ndarray
  bm25: np.ndarray
  p_click: np.ndarray
  click: np.ndarray
  purchase: np.ndarray
  history: np.ndarray
  history_length: np.ndarray
  user_gender: np.ndarray
  popularity: np.ndarray

  def __len__(self) -> int:
    return len(self.day)

  def arrays(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """config.sim (documented in configs/ranking.py)."""
  seed: int
  num_users: int
  no_history_share: float
  history_mean: float
  history_days: int
  max_history: int
  num_days: int
  train_days: int
  sessions_per_day: int
  impressions: int
  query_temperature: float
  history_temperature: float
  unjudged_label: int
  users: users_lib.Preferences
  retriever: retriever_lib.Retriever
  click: click_lib.ClickModel

  @classmethod
  def of(cls, cfg: Any) -> "SimConfig":
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    out = cls(**{**d, "users": users_lib.Preferences.of(d["users"]),
                 "retriever": retriever_lib.Retriever.of(d["retriever"]),
                 "click": click_lib.ClickModel.of(d["click"])})
    if not 0 < out.train_days < out.num_days:
      raise config_files.ConfigError(
          f"config.sim.train_days={out.train_days} must be in [1, "
          f"num_days={out.num_days})")
    if not 0.0 <= out.no_history_share <= 1.0 or out.history_mean < 1:
      raise config_files.ConfigError(
          "config.sim.no_history_share must be in [0, 1] and history_mean "
          ">= 1")
    return out


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def _draw_rows(cum: np.ndarray, rows: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
  """One column per row of `cum` (cumulative probabilities) for `rows`."""
  u = rng.random(len(rows)) * cum[rows, -1]
  drawn = (cum[rows] <= u[:, None]).sum(axis=1)  # searchsorted, per row.
  return drawn.clip(0, cum.shape[1] - 1).astype(np.int32)


def _query_choice(affinity: np.ndarray, labels: np.ndarray,
                  temperature: float) -> np.ndarray:
  """float64 (U, Q) cumulative P(q | u) (module docstring)."""
  wanted = (labels == 2).T.astype(np.float32)  # (N, Q)
  mean_affinity = affinity @ wanted / wanted.sum(axis=0)
  return np.cumsum(_softmax_rows(temperature * mean_affinity.astype(
      np.float64)), axis=1)


def _initial_history(sim: SimConfig, affinity: np.ndarray
                     ) -> list[list[tuple[int, int]]]:
  """Per user: [(day, product)] purchases before day 1."""
  rng = np.random.default_rng([sim.seed, 1])
  num_users = affinity.shape[0]
  has = rng.random(num_users) >= sim.no_history_share
  counts = np.where(has, 1 + rng.poisson(sim.history_mean - 1, num_users), 0)
  cum = np.cumsum(_softmax_rows(sim.history_temperature * affinity.astype(
      np.float64)), axis=1)
  out = []
  for u in range(num_users):
    products = _draw_rows(cum, np.full(counts[u], u), rng)
    days = rng.integers(1 - sim.history_days, 1, counts[u])
    out.append(sorted(zip(days.tolist(), products.tolist())))
  return out


def _history_rows(history: list[list[tuple[int, int]]], users: np.ndarray,
                  day: int, sim: SimConfig) -> tuple[np.ndarray, np.ndarray]:
  """(S, H) recent purchases before `day`, newest first, and their count."""
  rows = np.full((len(users), sim.max_history), -1, np.int32)
  lengths = np.zeros(len(users), np.int32)
  for i, u in enumerate(users):
    recent = [p for d, p in history[u] if day - sim.history_days <= d < day]
    lengths[i] = len(recent)
    newest = recent[::-1][:sim.max_history]
    rows[i, :len(newest)] = newest
  return rows, lengths


def simulate(data: catalog_data.RankingData, sim: SimConfig,
             progress: Callable[[int], None] | None = None) -> Sessions:
  """Runs the simulation (module docstring); `progress(day)` after each."""
  rng = np.random.default_rng([sim.seed, 0])
  users = users_lib.draw_users(data, sim.num_users, sim.users, rng)
  popularity = rng.standard_normal(data.num_products).astype(np.float32)
  affinity = users_lib.affinity_matrix(users, data, sim.users)
  bm25 = retriever_lib.normalised_bm25(data.queries, data.catalog.titles,
                                       sim.retriever)
  query_cum = _query_choice(affinity, data.labels, sim.query_temperature)
  history = _initial_history(sim, affinity)
  parts = []
  for day in range(1, sim.num_days + 1):
    rng = np.random.default_rng([sim.seed, 2, day])
    who = rng.integers(0, sim.num_users, sim.sessions_per_day).astype(
        np.int32)
    query = _draw_rows(query_cum, who, rng)
    shown = retriever_lib.impressions(bm25[query], popularity,
                                      sim.impressions, sim.retriever, rng)
    labels = data.labels[query[:, None], shown]
    p_click, clicks, purchases = click_lib.draw_clicks(
        labels, affinity[who[:, None], shown], popularity[shown], sim.click,
        rng)
    rows, lengths = _history_rows(history, who, day, sim)
    parts.append(dict(
        day=np.full(len(who), day, np.int32), user=who, query=query,
        product=shown, label=labels.astype(np.int8),
        bm25=bm25[query[:, None], shown], p_click=p_click, click=clicks,
        purchase=purchases,
        history=rows, history_length=lengths))
    for s, k in zip(*np.nonzero(purchases)):  # Seen from tomorrow on.
      history[who[s]].append((day, int(shown[s, k])))
    if progress:
      progress(day)
  joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return Sessions(**joined, user_gender=users.gender, popularity=popularity)
