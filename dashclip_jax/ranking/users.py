"""Simulated users: latent preferences and their affinity to products.

A user has a gender, favourite colours and brands, a usage (casual, sports,
...), and a taste vector over article types (N(0, 1) per type; no price in
it). Their affinity to a product is a weighted sum of matches,

  affinity(u, p) = gender_weight [p's gender is u's or Unisex]
                 + colour_weight [p's colour is a favourite]
                 + usage_weight  [p's usage is u's]
                 + brand_weight  [p's brand is a favourite]
                 + taste_weight  taste_u[p's type],

centred over all (user, product) pairs, so the click model's label logits
are those of an average pair. Favourites and genders are drawn by their
frequency in the catalog.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from dashclip_jax.ranking import catalog_data


@dataclasses.dataclass(frozen=True)
class Preferences:
  """config.sim.users (see the module docstring)."""
  favourite_colours: int = 2
  favourite_brands: int = 3
  gender_weight: float = 1.0
  colour_weight: float = 0.7
  usage_weight: float = 0.5
  brand_weight: float = 0.8
  taste_weight: float = 0.6

  @classmethod
  def of(cls, cfg: Mapping[str, Any]) -> "Preferences":
    return cls(**dict(cfg))


@dataclasses.dataclass
class Users:
  """U users' latent preferences (codes index `RankingData.names`)."""
  gender: np.ndarray      # int32 (U,)
  colours: np.ndarray     # bool (U, colours)
  brands: np.ndarray      # bool (U, brands)
  usage: np.ndarray       # int32 (U,)
  taste: np.ndarray       # float32 (U, types)

  def __len__(self) -> int:
    return len(self.gender)


def _frequency(codes: np.ndarray, n: int) -> np.ndarray:
  counts = np.bincount(codes, minlength=n).astype(np.float64)
  return counts / counts.sum()


def _favourites(rng: np.random.Generator, num_users: int, freq: np.ndarray,
                k: int) -> np.ndarray:
  out = np.zeros((num_users, len(freq)), bool)
  k = min(k, int((freq > 0).sum()))
  for u in range(num_users):
    out[u, rng.choice(len(freq), k, replace=False, p=freq)] = True
  return out


def draw_users(data: catalog_data.RankingData, num_users: int,
               prefs: Preferences, rng: np.random.Generator) -> Users:
  """Users whose preferences follow the catalog's attribute frequencies."""
  c, n = data.codes, {a: len(v) for a, v in data.names.items()}
  gender_freq = _frequency(c["gender"], n["gender"])
  if catalog_data.UNISEX in data.names["gender"] and n["gender"] > 1:
    # Users have a gender; "Unisex" is a product's.
    gender_freq[data.names["gender"].index(catalog_data.UNISEX)] = 0.0
    gender_freq /= gender_freq.sum()
  return Users(
      gender=rng.choice(n["gender"], num_users, p=gender_freq).astype(
          np.int32),
      colours=_favourites(rng, num_users, _frequency(c["colour"],
                                                     n["colour"]),
                          prefs.favourite_colours),
      brands=_favourites(rng, num_users, _frequency(c["brand"], n["brand"]),
                         prefs.favourite_brands),
      usage=rng.choice(n["usage"], num_users,
                       p=_frequency(c["usage"], n["usage"])).astype(np.int32),
      taste=rng.standard_normal((num_users, n["type"])).astype(np.float32))


def affinity_matrix(users: Users, data: catalog_data.RankingData,
                    prefs: Preferences) -> np.ndarray:
  """float32 (U, N) affinity of every user to every product, centred."""
  c = data.codes
  unisex = (data.names["gender"].index(catalog_data.UNISEX)
            if catalog_data.UNISEX in data.names["gender"] else -1)
  gender_ok = ((c["gender"][None] == users.gender[:, None])
               | (c["gender"][None] == unisex))
  out = (prefs.gender_weight * gender_ok
         + prefs.colour_weight * users.colours[:, c["colour"]]
         + prefs.usage_weight * (c["usage"][None] == users.usage[:, None])
         + prefs.brand_weight * users.brands[:, c["brand"]]
         + prefs.taste_weight * users.taste[:, c["type"]])
  return (out - out.mean()).astype(np.float32)
