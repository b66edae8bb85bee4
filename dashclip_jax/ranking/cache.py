"""Cached simulations: one directory per (seed, parameters, data).

<cache_dir>/sim-<key>/sessions.npz + sim.json, the key a sha256 of the
simulation config and of everything the simulator reads from the data
(`RankingData.fingerprint`). A run with the same seed and parameters reuses
the sessions; any other value makes a new key. Written to a temporary name
and renamed, so a killed run never leaves a half simulation behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Callable

import jax
import numpy as np

from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import simulator

log = logging.getLogger("dashclip_jax")

# Bump when the simulator's draws change, so old caches are not reused.
SIMULATOR_VERSION = 2


def sim_key(data: catalog_data.RankingData, sim: simulator.SimConfig) -> str:
  blob = json.dumps({"version": SIMULATOR_VERSION,
                     "sim": dataclasses.asdict(sim),
                     "data": data.fingerprint()}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_simulate(data: catalog_data.RankingData,
                     sim: simulator.SimConfig, cache_dir: str,
                     progress: Callable[[int], None] | None = None
                     ) -> tuple[simulator.Sessions, str, bool]:
  """-> (sessions, their directory, whether they came from the cache)."""
  out = os.path.join(cache_dir, f"sim-{sim_key(data, sim)}")
  path = os.path.join(out, "sessions.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      sessions = simulator.Sessions(**{k: f[k] for k in f.files})
    log.info("simulation: reusing %s (%d sessions)", out, len(sessions))
    return sessions, out, True
  tick = time.time()
  sessions = simulator.simulate(data, sim, progress)
  if jax.process_index() != 0:  # Every process simulates; one writes.
    return sessions, out, False
  os.makedirs(out, exist_ok=True)
  tmp = os.path.join(out, "sessions.tmp.npz")
  np.savez(tmp, **sessions.arrays())
  with open(os.path.join(out, "sim.json"), "w") as f:
    json.dump({"sim": dataclasses.asdict(sim), "data": data.description,
               "fingerprint": data.fingerprint(),
               "seconds": round(time.time() - tick, 1)}, f, indent=2)
  os.replace(tmp, path)
  log.info("simulation: %d sessions in %.1f s -> %s", len(sessions),
           time.time() - tick, out)
  return sessions, out, False
