"""WiSE-FT (Wortsman et al. 2022): weight-space ensembling of the trained
and the initial query tower, one mixing coefficient chosen on held-out
train queries.

Stage 2 fine-tunes the query side (`query`, the BERT query tower, and
`query_proj`, its projection) on few queries in catalog wording; mixing its
weights back toward the start can keep the start's robustness to other
wordings (paraphrases) at little cost in-distribution. Only those two
subtrees are mixed: the product side (img, txt, product_proj, ...) and
`temp` are the trained model's, so product embeddings (and a frozen
tower's feature table) do not change with alpha.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("dashclip_jax")

QUERY_SIDE = ("query", "query_proj")
RESULT_FILE = "wise_ft.json"
DEFAULT_ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())


def mix(trained: Mapping[str, Any], initial: Mapping[str, Any], alpha: float,
        keys: Sequence[str] = QUERY_SIDE) -> dict[str, Any]:
  """Params whose `keys` subtrees are (1 - alpha) * initial + alpha *
  trained, leaf by leaf (in float32, cast back to the leaf's dtype); every
  other top-level entry is `trained`'s. alpha=1 gives `trained` and alpha=0
  `initial` exactly on those subtrees.

  Raises ValueError for alpha outside [0, 1], a key missing from either
  tree, or subtrees of different structure or leaf shapes.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
  out = dict(trained)
  for key in keys:
    if key not in trained or key not in initial:
      raise ValueError(f"WiSE-FT: params {key!r} missing from the "
                       f"{'trained' if key not in trained else 'initial'} "
                       "tree")
    a, b = trained[key], initial[key]
    if jax.tree.structure(a) != jax.tree.structure(b):
      raise ValueError(f"WiSE-FT: {key!r} differs in structure between the "
                       "trained and initial params")

    def blend(t, i, key=key):
      if np.shape(t) != np.shape(i):
        raise ValueError(f"WiSE-FT: a {key!r} leaf is {np.shape(t)} trained, "
                         f"{np.shape(i)} initial")
      t32, i32 = jnp.asarray(t, jnp.float32), jnp.asarray(i, jnp.float32)
      return ((1.0 - alpha) * i32 + alpha * t32).astype(jnp.asarray(t).dtype)
    out[key] = jax.tree.map(blend, a, b)
  return out


def choose_alpha(trained: Mapping[str, Any], initial: Mapping[str, Any],
                 evaluate: Callable[[dict[str, Any]], float],
                 alphas: Sequence[float] = DEFAULT_ALPHAS
                 ) -> tuple[float, dict[float, float]]:
  """-> (the alpha whose mixed params score highest under `evaluate`, every
  alpha's score).

  `evaluate(params)` scores params on held-out TRAIN queries (e.g. stage
  2's held-out NDCG@10, or that and the train paraphrase set's); never the
  test queries. Ties go to the larger alpha (closer to the trained model),
  so mixing is kept only when it strictly helps; NaN scores never win.
  """
  if not alphas:
    raise ValueError("WiSE-FT: no alphas to choose from")
  scores = {float(a): float(evaluate(mix(trained, initial, float(a))))
            for a in alphas}
  return best_alpha(scores), scores


def best_alpha(scores: Mapping[float, float]) -> float:
  """The alpha of the highest score; ties go to the larger alpha (closer to
  the trained model), so mixing is kept only when it strictly helps; NaN
  scores never win."""
  return max(scores, key=lambda a: (not np.isnan(scores[a]),
                                    np.nan_to_num(scores[a], nan=-np.inf), a))


def mixed_keys(which: str, trained: Mapping[str, Any]) -> tuple[str, ...]:
  """`wise_ft.mix` -> the top-level params it mixes: "query" (the query
  tower and its projection) or "all" (every entry, the product side too)."""
  if which == "query":
    return QUERY_SIDE
  if which == "all":
    return tuple(trained)
  raise ValueError(f"config.wise_ft.mix must be 'query' or 'all', got "
                   f"{which!r}")


def check_config(wise_cfg, paraphrases: bool, has_start: bool) -> None:
  """Stage 2's config.wise_ft, checked before training (not after it):
  ValueError naming what cannot work."""
  if not has_start:
    raise ValueError("config.wise_ft.alphas needs a start to mix with: set "
                     "init.checkpoint (or run stage 1 first)")
  if any(not 0.0 <= float(a) <= 1.0 for a in wise_cfg.alphas):
    raise ValueError(f"config.wise_ft.alphas must lie in [0, 1], got "
                     f"{tuple(wise_cfg.alphas)}")
  mixed_keys(wise_cfg.mix, {})  # Raises for a mix it does not know.
  for name in wise_cfg.select:
    if not name.startswith(("eval/", "para/")):
      raise ValueError(f"config.wise_ft.select: {name!r} is not a stage-2 "
                       "eval/* or para/* metric")
    if name.startswith("para/") and not paraphrases:
      raise ValueError(f"config.wise_ft.select names {name!r}, which needs "
                       "eval.paraphrases=True")


def choose_for_stage2(cfg, trained: Mapping[str, Any],
                      initial: Mapping[str, Any],
                      evaluate: Callable[[Any], dict[str, float]],
                      workdir: str) -> tuple[dict[str, Any], float]:
  """Stage 2's WiSE-FT: -> (params mixed at the chosen alpha, alpha).

  `cfg` is config.wise_ft (alphas, mix, select); `evaluate(params)` is
  stage 2's held-out evaluation (eval/*, and para/* with
  eval.paraphrases), on TRAIN queries only. An alpha's score is the mean
  of its `select` metrics; every alpha's metrics and the choice go to
  <workdir>/wise_ft.json. The mixed leaves keep the trained leaves'
  shardings.
  """
  keys = mixed_keys(cfg.mix, trained)
  alphas = [float(a) for a in cfg.alphas]
  if not alphas:
    raise ValueError("WiSE-FT: no alphas to choose from")

  def placed(params):
    return jax.tree.map(
        lambda m, t: jax.device_put(m, t.sharding)
        if isinstance(t, jax.Array) else m, params, dict(trained))

  metrics, scores = {}, {}
  for a in alphas:
    metrics[a] = evaluate(placed(mix(trained, initial, a, keys)))
    missing = [m for m in cfg.select if m not in metrics[a]]
    if missing:
      raise ValueError(f"wise_ft.select names {missing}, which stage 2's "
                       f"evaluation does not report ({sorted(metrics[a])})")
    scores[a] = float(np.mean([metrics[a][m] for m in cfg.select]))
    log.info("WiSE-FT alpha %.2f: score %.4f %s", a, scores[a],
             {k: round(v, 4) for k, v in metrics[a].items()})
  best = best_alpha(scores)
  log.info("WiSE-FT: alpha %.2f chosen (mean of %s on held-out train "
           "queries; 1.0 is the trained model)", best, ", ".join(cfg.select))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
      json.dump({"alpha": best, "keys": list(keys),
                 "select": list(cfg.select),
                 "scores": {str(a): scores[a] for a in alphas},
                 "metrics": {str(a): metrics[a] for a in alphas}}, f,
                indent=1)
  return placed(mix(trained, initial, best, keys)), best
