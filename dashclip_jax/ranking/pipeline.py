"""The ranking job, in order: data -> simulation (or its cache) -> rows ->
embedding tables -> train and score every model -> evaluate -> report.

Models (keys in metrics.json): "baseline" (the DCN), "tower:<name>" for the
model under test (`config.name`, `config.embeddings`) and each of
`config.alternatives`, and "single:<name>" (the ablation) when
`config.ablation`. Comparisons: the model under test's tower against every
other tower and against its single-tower ablation.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import auto as tqdm

from dashclip_jax.ranking import cache
from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import embeddings as embeddings_lib
from dashclip_jax.ranking import evaluate as evaluate_lib
from dashclip_jax.ranking import features as features_lib
from dashclip_jax.ranking import models
from dashclip_jax.ranking import report as report_lib
from dashclip_jax.ranking import simulator
from dashclip_jax.ranking import train as train_lib
from dashclip_jax.runtime import config_files
from dashclip_jax.train import sharding as shard_lib

log = logging.getLogger("dashclip_jax")


# The simulator's own P(click), scored beside the models: the ceiling.
ORACLE = "oracle"


def model_label(key: str) -> str:
  kind, _, name = key.partition(":")
  return {"baseline": "DCN (baseline)", "tower": f"DCN + {name} tower",
          "single": f"DCN, {name} features in one tower",
          ORACLE: "oracle: the simulator's P(click)"}[kind]


def towers(config: ml_collections.ConfigDict) -> dict[str, str]:
  """name -> source (export dir, "minilm" or "model:DIR"), model under
  test first."""
  if not config.embeddings:
    raise config_files.ConfigError(
        "--config.embeddings is required: an embedding export directory "
        "(dashclip_jax/index.py layout) or 'minilm'")
  out = {config.name: config.embeddings}
  for spec in filter(None, (s.strip() for s in config.alternatives.split(
      ","))):
    name, source = embeddings_lib.parse_tower(spec)
    if name in out:
      raise config_files.ConfigError(f"config.alternatives: tower name "
                                     f"{name!r} is used twice")
    out[name] = source
  return out


def plan(config: ml_collections.ConfigDict, names: list[str]
         ) -> list[tuple[str, str, str | None]]:
  """[(key, kind, tower name or None)] in training order."""
  out = [("baseline", "baseline", None)]
  out += [(f"tower:{n}", "tower", n) for n in names]
  if config.ablation:
    out.append((f"single:{names[0]}", "single", names[0]))
  return out


def _simulate(data, sim, cache_dir, progress: bool):
  with tqdm.tqdm(total=sim.num_days, desc="simulate", unit="day",
                 disable=not progress) as bar:
    return cache.load_or_simulate(data, sim, cache_dir,
                                  lambda day: bar.update(1))


def _ctr_by_label(sessions: simulator.Sessions) -> dict[int, float]:
  return {l: float(sessions.click[sessions.label == l].mean())
          for l in (0, 1, 2) if (sessions.label == l).any()}


def _unjudged_share(sessions: simulator.Sessions,
                    data: catalog_data.RankingData) -> float:
  """Share of impressions whose label the relevance data does not give."""
  return float(1.0 - data.judged[sessions.query[:, None],
                                 sessions.product].mean())


def _summary(results: dict, labels: dict[str, str]) -> str:
  lines = ["ranking (AUC on the next week, 95% CI over users):"]
  lines += report_lib.auc_table(results, labels)
  return "\n".join(lines)


def _train_and_score(config, todo, train_rows, eval_rows, tables, settings,
                     mesh) -> tuple[dict, dict]:
  """Trains each model of `todo` in turn -> (NW scores, training stats)."""
  model_kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in config.model.to_dict().items()}
  scores, training, spent = {}, collections.OrderedDict(), []
  for i, (key, kind, tower) in enumerate(todo):
    start = time.time()
    module = models.Ranker(models.RankerConfig(
        kind=kind, vocab=train_rows.vocab, **model_kwargs))
    params, training[key] = train_lib.train(
        module, train_rows.inputs, train_rows.click, tables.get(tower),
        settings, mesh, config.seed, desc=key)
    scores[key] = train_lib.predict(module, params, eval_rows.inputs,
                                    tables.get(tower), mesh,
                                    settings.eval_batch_size)
    spent.append(time.time() - start)
    log.info("model %d/%d %s: train loss %.4f, %.0f examples/s, %.1f s; "
             "ETA %.0f s for the rest", i + 1, len(todo), key,
             training[key]["loss"], training[key]["examples_per_s"],
             spent[-1], np.mean(spent) * (len(todo) - i - 1))
  return scores, training


def _notes(config, data, sim, setup, tables) -> list[str]:
  """The report's opening lines: what was simulated and read."""
  return [
      f"Data: {data.description}.",
      f"Simulation: seed {sim.seed}, {sim.num_users} users, {sim.num_days} "
      f"days x {sim.sessions_per_day} sessions x {sim.impressions} "
      f"impressions; days 1-{sim.train_days} train, "
      f"{sim.train_days + 1}-{sim.num_days} evaluate (next week); "
      f"{'reused' if setup['simulation_cached'] else 'written'} at "
      f"`{setup['simulation']}`.",
      f"Click model: {json.dumps(config.sim.click.to_dict())}; observed "
      "CTR by true label " + ", ".join(
          f"{l}: {v:.4f}" for l, v in setup["ctr_by_label"].items())
      + ". Clicks come from the true labels and user affinity only; "
      f"{setup['unjudged_impressions']:.1%} of impressions are of pairs the "
      f"relevance data does not judge (label {sim.unjudged_label}).",
      "Towers: " + "; ".join(f"{n}: `{t.source}` ({t.dim}-d)"
                             for n, t in tables.items()) + ".",
      f"Rows: {setup['train_rows']} train, {setup['eval_rows']} evaluated; "
      f"whole run {setup['seconds']:.0f} s on mesh {setup['mesh']}.",
  ]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job -> {"results", "report", "summary", "setup"}."""
  tick = time.time()
  writer = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  sources = towers(config)
  sim = simulator.SimConfig.of(config.sim)
  settings = train_lib.TrainSettings.of(config.train)
  mesh = shard_lib.make_mesh(config.mesh)
  data = catalog_data.load(config)
  log.info("ranking data: %s", data.description)
  cache_dir = config.cache_dir or os.path.join(workdir, "cache")
  sessions, sim_dir, cached = _simulate(data, sim, cache_dir,
                                        settings.progress)
  train_rows = features_lib.rows(sessions, data, (1, sim.train_days))
  eval_rows = features_lib.rows(sessions, data,
                                (sim.train_days + 1, sim.num_days))
  tables = {n: embeddings_lib.tower_tables(s, data, cache_dir)
            for n, s in sources.items()}
  todo = plan(config, list(sources))
  scores, training = _train_and_score(config, todo, train_rows, eval_rows,
                                      tables, settings, mesh)
  scores[ORACLE] = eval_rows.p_click
  labels = {key: model_label(key) for key in scores}
  main = f"tower:{config.name}"
  comparisons = [(main, k) for k, kind, _ in todo
                 if k != main and kind != "baseline"]
  tick_eval = time.time()
  results = evaluate_lib.evaluate(
      eval_rows, scores, "baseline", comparisons, sim.num_users,
      config.report.bootstrap, config.report.level, config.report.seed)
  log.info("evaluation (bootstrap %d) in %.1f s", config.report.bootstrap,
           time.time() - tick_eval)
  setup = {
      "data": data.description, "simulation": sim_dir,
      "simulation_cached": cached, "sim": config.sim.to_dict(),
      "ctr_by_label": _ctr_by_label(sessions),
      "unjudged_impressions": _unjudged_share(sessions, data),
      "train_rows": len(train_rows), "eval_rows": len(eval_rows),
      "towers": {n: t.source for n, t in tables.items()},
      "training": training, "report": config.report.to_dict(),
      "mesh": dict(mesh.shape), "seconds": time.time() - tick}
  path = os.path.join(workdir, "report.md")
  if writer:
    report_lib.roc_plot(eval_rows.click, scores,
                        evaluate_lib.split_masks(eval_rows), labels,
                        os.path.join(workdir, "roc.png"))
    report_lib.write(workdir, results, labels, setup,
                     _notes(config, data, sim, setup, tables))
  log.info("ranking report: %s (%.0f s)", path, time.time() - tick)
  return {"results": results, "report": path, "setup": setup,
          "summary": _summary(results, labels)}
