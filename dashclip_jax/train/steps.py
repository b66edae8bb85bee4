"""Pure, jit-sharded train steps for DashCLIP stage 1 (ITC + ITM) and 2 (QCC).

Factories take the model config, a `StepConfig` and an optax transformation
and return `step(state, batch, rng) -> (state, metrics)`, a pure function;
`train_state.jit_step` compiles it with explicit in/out shardings and the
state donated (`train_state.init_state` builds the state). Losses are
computed on the *global* batch (see losses/), so any mesh shape gives the
same loss and the same update.

Batches are the data pipelines' (their keys and shapes are documented once,
in `dashclip_jax/data/__init__.py`), as global arrays sharded over ("data",
"fsdp"). What the steps read beyond them: stage 1's optional `valid` bool
(B,) (False rows, padding of a ragged last batch, are ignored by every loss
and not enqueued); stage 2's optional `product_features` float32 (B, D)
(the frozen tower's cached features, below), its `label_weight` pair
weights, or its graded `label` when `StepConfig.label_policy` is set.
Other keys are carried and ignored.

Gradient accumulation (`accum_steps = k > 1`) is GradCache-style
(grad_cache.py), so the contrastive terms still see the whole batch; ITM's
multimodal passes run inside the loss as k checkpointed chunks. The result
equals one step on the k-times-larger batch (tested).

Choices that differ from BLIP (BLIP_REFERENCE §4): the in-batch ITC columns
and the ITM hard negatives span the *global* batch (BLIP pretraining uses the
local one); negatives are sampled from online-vs-online similarities with
every same-product pair masked (BLIP's retrieval variant), by
`jax.random.categorical`, so the draw depends on the rng only, not on the
mesh. The momentum update runs before the momentum forward, as in BLIP.
Unused towers should be frozen in the optimizer (the query tower in stage 1,
the product tower body in stage 2): the configs' `optim.lr_mults` are the
only freeze rules, and any run can override them.

Stage 2's product side: the product tower body (ViT + image-grounded text
encoder, `step_config.PRODUCT_TOWER_BODY_REGEX`) is either trained
(`train_product_tower`) or frozen. Frozen, it runs in eval mode (no dropout,
whatever `deterministic` says; the data side uses the eval image transform),
so its pooled features are a function of the params alone; the trainer then
computes them once per run as a table and feeds them as `product_features`
(B, D), and the step runs only the query tower and `product_proj`.
`product_proj` always gets gradients; `optim.lr_mults` decides whether it
moves.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dashclip_jax import losses
from dashclip_jax import model as model_lib
from dashclip_jax.train import grad_cache
from dashclip_jax.train import itm_pairs
from dashclip_jax.train import sharding as shard_lib
from dashclip_jax.train import state as state_lib
from dashclip_jax.train import step_config

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]

def _apply_update(tx: optax.GradientTransformation,
                  state: state_lib.TrainState,
                  grads: Any) -> tuple[Any, Any, Array]:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # BLIP clamps temp in place before each forward: same as after each update.
  params = {**params, "temp": jnp.clip(params["temp"], losses.TEMP_MIN,
                                        losses.TEMP_MAX)}
  return params, opt_state, optax.tree.norm(grads)


def _constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
  """Pins leading (batch) dims to ("data", "fsdp") inside the step.

  Used on microbatches and cached reps so that XLA keeps activations split
  by example (FSDP/data parallel), whatever it would infer from the params.
  (The model's own flax logical constraints are not activated: under a mesh
  context flax's apply-time param shape check re-runs the DenseGeneral init
  and constrains the pre-reshape kernel, which fails on rank.)
  """
  if mesh is None:
    return tree
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  def f(x):
    if x.ndim == 0 or x.shape[0] % n:
      return x
    return jax.lax.with_sharding_constraint(
        x, shard_lib.batch_sharding(mesh, x.ndim))
  return jax.tree.map(f, tree)


# ---------------------------------------------------------------------------
# Stage 1: ITC + ITM on the product encoders.
# ---------------------------------------------------------------------------


def _itm_score(model: model_lib.DashClip, det: bool, params: Any, ids: Array,
               mask: Array, tokens: Array, rng: Array) -> Array:
  """ITM logits float32 (P, 2) of pairs (text ids/mask, image tokens)."""
  return model.apply({"params": params}, ids, mask, tokens, det,
                     method=model_lib.DashClip.itm_logits,
                     rngs={"dropout": rng})[0]


def _itm_sums(score, chunk: Batch, rng: Array) -> Array:
  """(weighted NLL sum, weighted hit sum) over a chunk of images."""
  logits, w = itm_pairs.pair_logits(chunk, score, rng)
  l, mets = losses.itm_loss(logits, w)  # Weighted means; sums below.
  w_sum = jnp.sum(w)
  return jnp.stack([l * w_sum, mets["itm_acc"] * w_sum])


def _itm_loss(model: model_lib.DashClip, det: bool, params: Any,
              pairs: Batch, rng: Array, k: int) -> tuple[Array, Metrics]:
  """Weighted mean ITM loss and accuracy over all pairs, in k chunks."""
  sums = functools.partial(
      _itm_sums, functools.partial(_itm_score, model, det, params))
  total = grad_cache.chunked_sum(sums, pairs, rng, k)
  w_total = jnp.maximum(jnp.sum(pairs["w"]), 1e-12)
  loss = total[0] / w_total
  return loss, {"itm_loss": loss, "itm_acc": total[1] / w_total}


def _stage1_loss(model: model_lib.DashClip, cfg: step_config.StepConfig,
                 batch: Batch, valid: Array | None, distill: dict[str, Any],
                 rngs: tuple[Array, Array], params: Any, reps: Batch
                 ) -> tuple[Array, Metrics]:
  """ITC + ITM of the full batch's reps; `distill`: itc_loss' momentum
  targets (or {}); rngs: (hard negatives, ITM dropout)."""
  r_neg, r_itm = rngs
  temp = params["temp"]
  ids = batch["product_id"]
  l_itc, mets = losses.itc_loss(reps["img"], reps["txt"], temp, ids=ids,
                                valid=valid, **distill)
  # Hard negatives over the global batch, online-vs-online similarities
  # (BLIP retrieval variant), same product id masked.
  sim = reps["img"] @ reps["txt"].T / losses.clamp_temp(temp)
  neg_txt, neg_img, ok_t, ok_i = losses.sample_hard_negatives(
      r_neg, sim, ids, valid)
  pairs = itm_pairs.make_pairs(batch["ids"], batch["mask"], reps["tokens"],
                               neg_txt, neg_img, ok_t, ok_i, valid)
  l_itm, itm_mets = _itm_loss(model, cfg.deterministic, params, pairs, r_itm,
                              cfg.accum_steps)
  loss = cfg.itc_weight * l_itc + cfg.itm_weight * l_itm
  return loss, {**mets, **itm_mets, "loss": loss}


def _image_text(model: model_lib.DashClip, det: bool, params: Any, mb: Batch,
                rng: Array) -> tuple[Array, dict[str, Array], Array]:
  """(image embeddings, the image tower's aux, text embeddings) of a
  microbatch."""
  m = model_lib.DashClip
  img, aux = model.apply({"params": params}, mb["image"],
                         method=m.encode_image)
  txt, _ = model.apply({"params": params}, mb["ids"], mb["mask"], det,
                       method=m.encode_text, rngs={"dropout": rng})
  return img, aux, txt


def _encode_stage1(model: model_lib.DashClip, det: bool, mesh: Mesh | None,
                   params: Any, mb: Batch, rng: Array) -> Batch:
  """Per-example reps with grad: image/text embeddings and image tokens."""
  img, aux, txt = _image_text(model, det, params, _constrain_batch(mb, mesh),
                              rng)
  return _constrain_batch({"img": img, "txt": txt, "tokens": aux["tokens"]},
                          mesh)


def _encode_momentum(model: model_lib.DashClip, det: bool, mesh: Mesh | None,
                     variables: Any, mb: Batch, rng: Array
                     ) -> tuple[Array, Array]:
  """The momentum encoders' image and text embeddings (no grad)."""
  img, _, txt = _image_text(model, det, variables,
                            _constrain_batch(mb, mesh), rng)
  return jax.lax.stop_gradient(img), jax.lax.stop_gradient(txt)


def _momentum_targets(model: model_lib.DashClip,
                      cfg: step_config.StepConfig, mesh: Mesh | None,
                      state: state_lib.TrainState, batch: Batch, rng: Array
                      ) -> tuple[Any, dict[str, Any]]:
  """BLIP's order: EMA update of the momentum encoders, then their features
  (no grad; dropout on unless deterministic) -> (params_m, itc_loss kwargs)."""
  params_m = losses.ema_update(
      state.params_m, {n: state.params[n] for n in state_lib.MOMENTUM_MODULES},
      cfg.momentum)
  encode = functools.partial(_encode_momentum, model, cfg.deterministic, mesh,
                             {**params_m, "temp": state.params["temp"]})
  img_m, txt_m = grad_cache.map_microbatches(encode, batch, rng,
                                             cfg.accum_steps)
  distill = dict(img_m=img_m, txt_m=txt_m, alpha=losses.alpha_ramp(
      state.step, cfg.alpha_ramp_steps, cfg.alpha))
  if state.queue is not None:
    distill.update(img_queue=state.queue["img"], txt_queue=state.queue["txt"],
                   id_queue=state.queue["ids"])
  return params_m, distill


def _enqueue(queue: dict[str, Array], img_m: Array, txt_m: Array, ids: Array,
             valid: Array | None) -> dict[str, Array]:
  """The momentum features and ids of the batch's valid rows, enqueued."""
  q_img, ptr = losses.enqueue(queue["img"], queue["ptr"], img_m, valid)
  q_txt, _ = losses.enqueue(queue["txt"], queue["ptr"], txt_m, valid)
  q_ids, _ = losses.enqueue(queue["ids"], queue["ptr"], ids, valid)
  return {"img": q_img, "txt": q_txt, "ids": q_ids, "ptr": ptr}


def _stage1_step(model: model_lib.DashClip, cfg: step_config.StepConfig,
                 tx: optax.GradientTransformation, mesh: Mesh | None,
                 state: state_lib.TrainState, batch: Batch, rng: Array
                 ) -> tuple[state_lib.TrainState, Metrics]:
  """One stage-1 step (ITC + ITM, optional momentum distillation)."""
  valid = batch.get("valid")
  if valid is not None:
    valid = valid.astype(bool)  # The eval pipelines use int32 0/1.
  r_enc, r_neg, r_itm, r_m = jax.random.split(rng, 4)
  params_m = queue = None
  distill = {}
  if cfg.momentum is not None:
    params_m, distill = _momentum_targets(model, cfg, mesh, state, batch,
                                          r_m)
  encode = functools.partial(_encode_stage1, model, cfg.deterministic, mesh)
  loss_on_reps = functools.partial(_stage1_loss, model, cfg, batch, valid,
                                   distill, (r_neg, r_itm))
  (_, mets), grads = grad_cache.value_and_grad(
      encode, loss_on_reps, state.params, batch, r_enc, cfg.accum_steps)
  params, opt_state, gnorm = _apply_update(tx, state, grads)
  if cfg.momentum is not None and state.queue is not None:
    queue = _enqueue(state.queue, distill["img_m"], distill["txt_m"],
                     batch["product_id"], valid)
  new = state.replace(step=state.step + 1, params=params,
                      opt_state=opt_state, params_m=params_m, queue=queue)
  return new, {**mets, "grad_norm": gnorm}


def make_stage1_step(model_config: model_lib.ModelConfig,
                     cfg: step_config.StepConfig,
                     tx: optax.GradientTransformation,
                     mesh: Mesh | None = None):
  """Builds `stage1_step(state, batch, rng) -> (state, metrics)` (unjitted)."""
  return functools.partial(_stage1_step, model_lib.DashClip(model_config), cfg,
                           tx, mesh)


# ---------------------------------------------------------------------------
# Stage 2: QCC, query tower vs the multimodal product tower.
# ---------------------------------------------------------------------------


def _encode_queries(model: model_lib.DashClip, det: bool, mesh: Mesh | None,
                    params: Any, mb: Batch, rng: Array) -> Batch:
  """The query tower's embeddings of the positive queries (B, E) and of
  the mined negatives (B, N, E) if the batch has any."""
  m = model_lib.DashClip
  _, r_q, r_n = jax.random.split(rng, 3)
  mb = _constrain_batch(mb, mesh)
  qry, _ = model.apply({"params": params}, mb["query_ids"],
                       mb["query_mask"], det, method=m.encode_query,
                       rngs={"dropout": r_q})
  reps = {"query": qry}
  # data.num_negatives=0 still ships (B, 0, Lq) arrays: nothing to encode.
  if "neg_query_ids" in mb and mb["neg_query_ids"].shape[1]:
    bb, n, lq = mb["neg_query_ids"].shape
    neg, _ = model.apply(
        {"params": params}, mb["neg_query_ids"].reshape(bb * n, lq),
        mb["neg_query_mask"].reshape(bb * n, lq), det,
        method=m.encode_query, rngs={"dropout": r_n})
    reps["neg"] = neg.reshape(bb, n, -1)
  return _constrain_batch(reps, mesh)


def _encode_stage2(model: model_lib.DashClip, cfg: step_config.StepConfig,
                   mesh: Mesh | None, params: Any, mb: Batch, rng: Array
                   ) -> Batch:
  """Per-example reps with grad: the queries, and the product features
  when the tower trains."""
  reps = _encode_queries(model, cfg.deterministic, mesh, params, mb, rng)
  if cfg.train_product_tower:
    reps["product_features"] = _product_features(model, cfg, mesh, params,
                                                 mb, rng)
  return reps


def _frozen_features(model: model_lib.DashClip, cfg: step_config.StepConfig,
                     mesh: Mesh | None, params: Any, batch: Batch, rng: Array
                     ) -> Array:
  """The frozen tower's features: from the batch's cached table rows, else
  computed once without grad (never recomputed by the GradCache VJP)."""
  if "product_features" in batch:
    return batch["product_features"].astype(jnp.float32)
  features = functools.partial(_product_features, model, cfg, mesh,
                               jax.lax.stop_gradient(params))
  return grad_cache.map_microbatches(features, batch, rng, cfg.accum_steps)


def _pair_weights(cfg: step_config.StepConfig, batch: Batch
                  ) -> tuple[Array | None, Array | None]:
  """-> (pair weights float32 (B,), valid bool (B,)): the batch's
  `label_weight`, or under `label_policy` recomputed from its `label`."""
  if cfg.label_policy is None:
    # Every row a training pair (the pipelines drop remainders).
    return batch.get("label_weight"), None
  if "label" not in batch:
    raise KeyError("stage2: StepConfig.label_policy is set but the batch "
                   f"has no 'label' (keys: {sorted(batch)}).")
  weights = losses.label_weights(batch["label"], cfg.label_policy,
                                 cfg.partial_weight)
  # Pairs the policy excludes are no training pairs, not even negatives:
  # the batch the pipeline's label1_policy would have built without them.
  return weights, losses.label_valid(batch["label"], cfg.label_policy)


def _stage2_loss(model: model_lib.DashClip, cfg: step_config.StepConfig,
                 batch: Batch, weights: Array | None, valid: Array | None,
                 features: Array | None, params: Any, reps: Batch
                 ) -> tuple[Array, Metrics]:
  """QCC of the full batch's reps; `features` the frozen tower's (None
  when the tower trains: then they are among the reps)."""
  feats = reps["product_features"] if cfg.train_product_tower else features
  # product_proj runs here, with grad, on the full batch.
  prod = model.apply({"params": params}, feats,
                     method=model_lib.DashClip.project_product)
  loss, mets = losses.qcc_loss(
      prod, reps["query"], params["temp"], batch["product_id"],
      neg_query=reps.get("neg"), neg_valid=batch.get("neg_valid"),
      relevant_ids=batch.get("relevant_product_ids"), weights=weights,
      valid=valid, symmetric=cfg.symmetric, hard_k=cfg.hard_k)
  return loss, {**mets, "loss": loss}


def _stage2_step(model: model_lib.DashClip, cfg: step_config.StepConfig,
                 tx: optax.GradientTransformation, mesh: Mesh | None,
                 state: state_lib.TrainState, batch: Batch, rng: Array
                 ) -> tuple[state_lib.TrainState, Metrics]:
  """One stage-2 step (QCC)."""
  weights, valid = _pair_weights(cfg, batch)
  if cfg.train_product_tower and "product_features" in batch:
    raise ValueError("stage2: the batch carries cached product_features but "
                     "the product tower is trained (train_product_tower)")
  features = (None if cfg.train_product_tower else
              _frozen_features(model, cfg, mesh, state.params, batch, rng))
  encode = functools.partial(_encode_stage2, model, cfg, mesh)
  loss_on_reps = functools.partial(_stage2_loss, model, cfg, batch, weights,
                                   valid, features)
  (_, mets), grads = grad_cache.value_and_grad(
      encode, loss_on_reps, state.params, batch, rng, cfg.accum_steps)
  params, opt_state, gnorm = _apply_update(tx, state, grads)
  new = state.replace(step=state.step + 1, params=params,
                      opt_state=opt_state)
  return new, {**mets, "grad_norm": gnorm}


def make_stage2_step(model_config: model_lib.ModelConfig,
                     cfg: step_config.StepConfig,
                     tx: optax.GradientTransformation,
                     mesh: Mesh | None = None):
  """Builds `stage2_step(state, batch, rng) -> (state, metrics)` (unjitted).

  With `train_product_tower=False` no gradient reaches the product tower
  body, which runs in eval mode (or comes as the batch's cached
  `product_features`); freeze it in the optimizer too
  (configs/stage2.py's `optim.lr_mults` for tiny and base) so weight
  decay does not move it either. `product_proj` gets gradients either way.
  """
  return functools.partial(_stage2_step, model_lib.DashClip(model_config), cfg,
                           tx, mesh)


def _product_features(model: model_lib.DashClip, cfg: step_config.StepConfig,
                      mesh: Mesh | None, params: Any, batch: Batch,
                      rng: Array) -> Array:
  """float32 (B, D) pooled product states of the batch's image + title; a
  frozen tower runs in eval mode."""
  det = cfg.deterministic or not cfg.train_product_tower
  batch = _constrain_batch(batch, mesh)
  feats, _ = model.apply({"params": params}, batch["image"],
                         batch["title_ids"], batch["title_mask"], det,
                         method=model_lib.DashClip.product_features,
                         rngs={"dropout": jax.random.split(rng, 3)[0]})
  return _constrain_batch(feats, mesh)


def make_product_features_fn(model_config: model_lib.ModelConfig,
                             cfg: step_config.StepConfig,
                             mesh: Mesh | None = None):
  """-> `features(params, batch, rng)`: float32 (B, D) pooled product states
  (`DashClip.product_features`) of the batch's image + title.

  A frozen tower (`train_product_tower=False`) runs in eval mode, so the
  result does not depend on `rng` and equals the cached table's rows.
  """
  return functools.partial(_product_features, model_lib.DashClip(model_config),
                           cfg, mesh)
