"""Pure, jit-sharded train steps for DashCLIP stage 1 (ITC + ITM) and 2 (QCC).

Factories take the model config, a `StepConfig` and an optax transformation
and return `step(state, batch, rng) -> (state, metrics)`, a pure function;
`jit_step` compiles it with explicit in/out shardings and the state donated.
Losses are computed on the *global* batch (see losses.py), so any mesh
shape gives the same loss and the same update.

Batches (global arrays, batch dim first, sharded over ("data", "fsdp")):
  stage 1:
    image       float32 (B, S, S, 3) normalised NHWC pixels
    ids, mask   int32 (B, L) caption/title tokens ([CLS] first), mask 1/0
    product_id  int32 (B,) instance ids: equal ids are all ITC positives and
                never ITM hard negatives of each other
    valid       optional bool (B,): False rows (padding of a ragged last
                batch) are ignored by every loss and are not enqueued
  stage 2:
    query_ids, query_mask          int32 (B, Lq) the positive query of row i
    image                          float32 (B, S, S, 3) product image
    title_ids, title_mask          int32 (B, Lt) product title
    product_id                     int32 (B,)
    neg_query_ids, neg_query_mask  optional int32 (B, N, Lq) mined negatives
    neg_valid                      optional bool (B, N)
    relevant_product_ids           optional int32 (B, R), -1 padded: products
                                   known relevant to query i (false negatives)
    label_weight                   optional float32 (B,) pair weights (from
                                   the data pipeline's label-1 policy)
    label                          optional int32 (B,) graded label (2/1);
                                   used instead of label_weight only when
                                   `StepConfig.label_policy` is set
  Extra keys (category, query_index, ...) are carried and ignored. Names and
  shapes match `dashclip_jax.data` (pipelines.stage1/2_dataset).

Gradient accumulation (`accum_steps = k > 1`) is GradCache-style, so the
contrastive terms still see the whole batch: (1) embeddings of all k
microbatches without grad, (2) loss and its grads w.r.t. the embeddings on
the full batch, (3) per microbatch, a VJP of the encoders with those
cotangents, summed. ITM's multimodal passes run inside (2) as a scan over k
chunks with `jax.checkpoint`, so only one chunk's activations are alive.
The result equals one step on the k-times-larger batch (tested), with one
encoder forward more than plain backprop.

Choices that differ from BLIP (BLIP_REFERENCE §4): the in-batch ITC columns
and the ITM hard negatives span the *global* batch (BLIP pretraining uses the
local one); negatives are sampled from online-vs-online similarities with
every same-product pair masked (BLIP's retrieval variant), by
`jax.random.categorical`, so the draw depends on the rng only, not on the
mesh. The momentum update runs before the momentum forward, as in BLIP.
Unused towers should be frozen in the optimizer: `STAGE1_LR_MULTS` (query
tower in stage 1) and `STAGE2_FROZEN_TOWER` (product tower in stage 2); the
trainers take these rules from the configs' `optim.lr_mults`, which any run
can override.

Stage 2's product side: the product tower body (ViT + image-grounded text
encoder, `PRODUCT_TOWER_BODY_REGEX`) is either trained (`train_product_tower`)
or frozen. Frozen, it runs in eval mode (no dropout, whatever
`deterministic` says; the data side uses the eval image transform), so its
pooled features are a function of the params alone; the trainer then computes
them once per run as a table and feeds them as `product_features` (B, D),
and the step runs only the query tower and `product_proj`. `product_proj`
always gets gradients; `optim.lr_mults` decides whether it moves.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from dashclip_jax import losses
from dashclip_jax import model as model_lib
from dashclip_jax import sharding as shard_lib

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, Array]

# Modules with BLIP momentum copies (BLIP_REFERENCE §1.4).
MOMENTUM_MODULES = ("img", "txt", "vision_proj", "text_proj")
# Everything the stage-2 product tower (and stage-1 heads) consists of:
# freeze it in stage 2 with `optim.OptimConfig(lr_mults=STAGE2_FROZEN_TOWER)`.
PRODUCT_TOWER_REGEX = r"(img|txt|product_proj|vision_proj|text_proj|itm_head)/.*"
STAGE2_FROZEN_TOWER = ((PRODUCT_TOWER_REGEX, 0.0), (".*", 1.0))
# The product tower without its projection: what stage 2 may cache.
PRODUCT_TOWER_BODY_REGEX = r"(img|txt)/.*"
# Stage 2's default (configs/stage2.py): the tower body and the stage-1
# heads frozen, `product_proj` trained with the query tower. A random
# `product_proj` that never trains makes the product embedding a random
# projection of the [ENC]/mean state.
STAGE2_TRAIN_PRODUCT_PROJ = ((r"(img|txt|vision_proj|text_proj|itm_head)/.*",
                              0.0), (".*", 1.0))
# Stage 1 never uses the query tower or product_proj: freeze them, else
# AdamW's weight decay alone would shrink a pretrained query tower (and
# their optimizer state would cost memory and time for nothing).
STAGE1_LR_MULTS = ((r"(query|query_proj|product_proj)/.*", 0.0), (".*", 1.0))


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a plain pytree (no methods, no callables)."""
  step: Array  # () int32
  params: Any
  opt_state: Any
  params_m: Any = None  # Momentum copies of MOMENTUM_MODULES (stage 1 MD).
  queue: Any = None  # losses.init_queue(...) dict (stage 1 MD).


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Loss and step options (the model's dtype/remat live in ModelConfig)."""
  accum_steps: int = 1
  deterministic: bool = False  # True: dropout off (tests, parity).
  # Stage 1.
  itc_weight: float = 1.0
  itm_weight: float = 1.0
  momentum: float | None = None  # e.g. 0.995 enables BLIP distillation.
  queue_size: int = 0  # Only with momentum; 0 = in-batch momentum targets.
  alpha: float = 0.4
  alpha_ramp_steps: int = 0  # BLIP: 1-2 epochs of steps.
  # Stage 2. False: the product tower body is frozen and runs in eval mode.
  train_product_tower: bool = False
  # None: pair weights come from the batch's `label_weight` (the data
  # pipeline's `label1_policy`, default "weighted" 0.5, one source of truth).
  # Set to "positive"/"weighted"/"exclude" to recompute them from `label`;
  # "exclude" then masks label-1 rows out entirely (not even negatives),
  # the pipeline's meaning (see losses.LABEL_POLICIES).
  label_policy: str | None = None
  partial_weight: float = losses.DEFAULT_PARTIAL_WEIGHT
  symmetric: bool = False
  hard_k: int | None = None


# ---------------------------------------------------------------------------
# Microbatching helpers. Microbatch m takes rows m, m+k, m+2k, ...: a strided
# split keeps every device's rows spread over all microbatches (a contiguous
# split would put microbatch 0 on the first devices only).
# ---------------------------------------------------------------------------


def _split(tree: Any, k: int) -> Any:
  def f(x):
    if x.shape[0] % k:
      raise ValueError(f"batch {x.shape[0]} not divisible by accum_steps {k}")
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)  # (k, B/k, ...)
  return jax.tree.map(f, tree)


def _merge(tree: Any) -> Any:
  def f(x):
    x = jnp.swapaxes(x, 0, 1)  # (B/k, k, ...)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(f, tree)


def _cached_value_and_grad(
    encode: Callable[[Any, Any, Array], Any],
    loss_on_reps: Callable[[Any, Any], tuple[Array, Metrics]],
    params: Any, batch: Any, rng: Array, k: int,
) -> tuple[tuple[Array, Metrics], Any]:
  """GradCache: d loss(params, encode(params, batch)) / d params, k microbatches.

  Args:
    encode: (params, microbatch, rng) -> pytree of per-example reps (b, ...).
    loss_on_reps: (params, reps of the full batch) -> (loss, metrics).
    params, batch, rng: as for the step; microbatch m gets fold_in(rng, m).
    k: number of microbatches.
  """
  if k == 1:
    def full(p):
      return loss_on_reps(p, encode(p, batch, rng))
    return jax.value_and_grad(full, has_aux=True)(params)

  mbs = _split(batch, k)
  rngs = jax.random.split(rng, k)
  p_sg = jax.lax.stop_gradient(params)
  reps = jax.lax.map(lambda a: encode(p_sg, a[0], a[1]), (mbs, rngs))
  reps = _merge(reps)
  (loss, metrics), (g_p, g_reps) = jax.value_and_grad(
      loss_on_reps, argnums=(0, 1), has_aux=True)(params, reps)
  g_reps = _split(g_reps, k)

  def body(acc, xs):
    mb, r, ct = xs
    _, vjp = jax.vjp(lambda p: encode(p, mb, r), params)
    (g,) = vjp(ct)
    return jax.tree.map(jnp.add, acc, g), None

  g_enc, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, g_p),
                          (mbs, rngs, g_reps))
  return (loss, metrics), jax.tree.map(jnp.add, g_p, g_enc)


def _apply_update(tx: optax.GradientTransformation, state: TrainState,
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


def make_stage1_step(model_config: model_lib.ModelConfig, cfg: StepConfig,
                     tx: optax.GradientTransformation,
                     mesh: Mesh | None = None):
  """Builds `stage1_step(state, batch, rng) -> (state, metrics)` (unjitted)."""
  model = model_lib.DashClip(model_config)
  m = model_lib.DashClip
  det = cfg.deterministic
  k = cfg.accum_steps
  use_md = cfg.momentum is not None

  def encode(params, mb, rng):
    """Per-example reps with grad: image/text embeddings and image tokens."""
    mb = _constrain_batch(mb, mesh)
    img, aux = model.apply({"params": params}, mb["image"],
                           method=m.encode_image)
    txt, _ = model.apply({"params": params}, mb["ids"], mb["mask"], det,
                         method=m.encode_text, rngs={"dropout": rng})
    return _constrain_batch({"img": img, "txt": txt, "tokens": aux["tokens"]},
                            mesh)

  def encode_m(params_m, temp, mb, rng):
    """Momentum features (no grad), dropout on as in BLIP unless det."""
    v = {**params_m, "temp": temp}
    mb = _constrain_batch(mb, mesh)
    img, _ = model.apply({"params": v}, mb["image"], method=m.encode_image)
    txt, _ = model.apply({"params": v}, mb["ids"], mb["mask"], det,
                         method=m.encode_text, rngs={"dropout": rng})
    return jax.lax.stop_gradient(img), jax.lax.stop_gradient(txt)

  def step(state: TrainState, batch: Batch, rng: Array
           ) -> tuple[TrainState, Metrics]:
    b = batch["ids"].shape[0]
    ids = batch["product_id"]
    valid = batch.get("valid")
    if valid is not None:
      valid = valid.astype(bool)  # The eval pipelines use int32 0/1.
    r_enc, r_neg, r_itm, r_m = jax.random.split(rng, 4)

    params_m = queue = None
    img_m = txt_m = None
    if use_md:
      # BLIP order: momentum update first, then momentum features.
      params_m = losses.ema_update(
          state.params_m, {n: state.params[n] for n in MOMENTUM_MODULES},
          cfg.momentum)
      if k == 1:
        img_m, txt_m = encode_m(params_m, state.params["temp"], batch, r_m)
      else:
        feats = jax.lax.map(
            lambda a: encode_m(params_m, state.params["temp"], a[0], a[1]),
            (_split(batch, k), jax.random.split(r_m, k)))
        img_m, txt_m = _merge(feats)
      alpha = losses.alpha_ramp(state.step, cfg.alpha_ramp_steps, cfg.alpha)

    def loss_on_reps(params, reps):
      temp = params["temp"]
      qkw = {}
      if use_md:
        qkw = dict(img_m=img_m, txt_m=txt_m, alpha=alpha)
        if state.queue is not None:
          qkw.update(img_queue=state.queue["img"], txt_queue=state.queue["txt"],
                     id_queue=state.queue["ids"])
      l_itc, mets = losses.itc_loss(reps["img"], reps["txt"], temp, ids=ids,
                                    valid=valid, **qkw)
      # Hard negatives over the global batch, online-vs-online similarities
      # (BLIP retrieval variant), same product id masked.
      sim = reps["img"] @ reps["txt"].T / losses.clamp_temp(temp)
      neg_txt, neg_img, ok_t, ok_i = losses.sample_hard_negatives(
          r_neg, sim, ids, valid)
      tokens = reps["tokens"]
      w_pos = jnp.ones((b,), jnp.float32) if valid is None else valid.astype(
          jnp.float32)
      # Per image b: its positive text and its hard-negative text share its
      # cross-attention keys/values (2 texts per image, projected once);
      # text b's hard-negative image is a gathered copy. Weights per image:
      # [positive, (text b, hard image), (hard text, image b)].
      pairs = {
          "own_ids": jnp.stack([batch["ids"], batch["ids"][neg_txt]], 1),
          "own_mask": jnp.stack([batch["mask"], batch["mask"][neg_txt]], 1),
          "tokens": tokens,
          "ids": batch["ids"], "mask": batch["mask"],
          "neg_tokens": tokens[neg_img],
          "w": jnp.stack([w_pos, w_pos * ok_i, w_pos * ok_t], 1),
      }

      def itm_sums(c, r):
        """(weighted NLL sum, weighted hit sum) over a chunk of images."""
        n, _, length = c["own_ids"].shape
        r_own, r_neg = jax.random.split(r)
        own = model.apply({"params": params},
                          c["own_ids"].reshape(2 * n, length),
                          c["own_mask"].reshape(2 * n, length), c["tokens"],
                          det, method=m.itm_logits, rngs={"dropout": r_own})
        neg = model.apply({"params": params}, c["ids"], c["mask"],
                          c["neg_tokens"], det, method=m.itm_logits,
                          rngs={"dropout": r_neg})
        own = own.reshape(n, 2, 2)
        # BLIP's order: positives; (text b, hard image); (hard text, image b).
        logits = jnp.concatenate([own[:, 0], neg, own[:, 1]])
        w = c["w"].T.reshape(-1)
        l, im = losses.itm_loss(logits, w)  # Weighted means; sums below.
        w_sum = jnp.sum(w)
        return jnp.stack([l * w_sum, im["itm_acc"] * w_sum])

      sums = _chunked_sums(itm_sums, pairs, jax.random.split(r_itm, k), k)
      w_total = jnp.maximum(jnp.sum(pairs["w"]), 1e-12)
      l_itm = sums[0] / w_total
      mets = {**mets, "itm_loss": l_itm, "itm_acc": sums[1] / w_total}
      loss = cfg.itc_weight * l_itc + cfg.itm_weight * l_itm
      return loss, {**mets, "loss": loss}

    (loss, mets), grads = _cached_value_and_grad(
        encode, loss_on_reps, state.params, batch, r_enc, k)
    params, opt_state, gnorm = _apply_update(tx, state, grads)
    if use_md and state.queue is not None:
      q = state.queue
      q_img, ptr = losses.enqueue(q["img"], q["ptr"], img_m, valid)
      q_txt, _ = losses.enqueue(q["txt"], q["ptr"], txt_m, valid)
      q_ids, _ = losses.enqueue(q["ids"], q["ptr"], ids, valid)
      queue = {"img": q_img, "txt": q_txt, "ids": q_ids, "ptr": ptr}
    new = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state, params_m=params_m, queue=queue)
    return new, {**mets, "grad_norm": gnorm}

  return step


def _chunked_sums(fn: Callable[[Any, Array], Array], xs: Any, rngs: Array,
                  k: int) -> Array:
  """sum_m fn(chunk m of xs, rngs[m]); one checkpointed chunk alive at a time.

  jax.checkpoint makes the backward pass recompute each chunk from its
  inputs instead of keeping every chunk's activations.
  """
  if k == 1:
    return fn(xs, rngs[0])
  body = jax.checkpoint(fn)
  def step(acc, x):
    return acc + body(*x), None
  first = jax.eval_shape(fn, jax.tree.map(lambda a: a[0], _split(xs, k)),
                         rngs[0])
  total, _ = jax.lax.scan(step, jnp.zeros(first.shape, first.dtype),
                          (_split(xs, k), rngs))
  return total


# ---------------------------------------------------------------------------
# Stage 2: QCC, query tower vs the multimodal product tower.
# ---------------------------------------------------------------------------


def make_stage2_step(model_config: model_lib.ModelConfig, cfg: StepConfig,
                     tx: optax.GradientTransformation,
                     mesh: Mesh | None = None):
  """Builds `stage2_step(state, batch, rng) -> (state, metrics)` (unjitted).

  With `train_product_tower=False` no gradient reaches the product tower
  body, which runs in eval mode (or comes as the batch's cached
  `product_features`); freeze it in the optimizer too
  (`STAGE2_TRAIN_PRODUCT_PROJ`, the stage-2 config's default) so weight
  decay does not move it either. `product_proj` gets gradients either way.
  """
  model = model_lib.DashClip(model_config)
  m = model_lib.DashClip
  det = cfg.deterministic
  k = cfg.accum_steps
  product_features = make_product_features_fn(model_config, cfg, mesh)

  def encode_queries(params, mb, rng):
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

  def encode(params, mb, rng):
    reps = encode_queries(params, mb, rng)
    if cfg.train_product_tower:
      reps["product_features"] = product_features(params, mb, rng)
    return reps

  def frozen_features(params, batch, rng):
    """The frozen tower's features: from the batch's cached table rows, else
    computed once without grad (never recomputed by the GradCache VJP)."""
    if "product_features" in batch:
      return batch["product_features"].astype(jnp.float32)
    p = jax.lax.stop_gradient(params)
    if k == 1:
      return product_features(p, batch, rng)
    return _merge(jax.lax.map(lambda a: product_features(p, a[0], a[1]),
                              (_split(batch, k), jax.random.split(rng, k))))

  def step(state: TrainState, batch: Batch, rng: Array
           ) -> tuple[TrainState, Metrics]:
    valid = None  # Every row a training pair (the pipelines drop remainders).
    if cfg.label_policy is not None:
      if "label" not in batch:
        raise KeyError("stage2: StepConfig.label_policy is set but the batch "
                       f"has no 'label' (keys: {sorted(batch)}).")
      weights = losses.label_weights(batch["label"], cfg.label_policy,
                                     cfg.partial_weight)
      # Pairs the policy excludes are no training pairs, not even negatives:
      # the batch the pipeline's label1_policy would have built without them.
      valid = losses.label_valid(batch["label"], cfg.label_policy)
    else:
      weights = batch.get("label_weight")

    if cfg.train_product_tower and "product_features" in batch:
      raise ValueError("stage2: the batch carries cached product_features but "
                       "the product tower is trained (train_product_tower)")
    features = (None if cfg.train_product_tower else
                frozen_features(state.params, batch, rng))

    def loss_on_reps(params, reps):
      feats = reps["product_features"] if cfg.train_product_tower else features
      # product_proj runs here, with grad, on the full batch.
      prod = model.apply({"params": params}, feats, method=m.project_product)
      loss, mets = losses.qcc_loss(
          prod, reps["query"], params["temp"], batch["product_id"],
          neg_query=reps.get("neg"), neg_valid=batch.get("neg_valid"),
          relevant_ids=batch.get("relevant_product_ids"), weights=weights,
          valid=valid, symmetric=cfg.symmetric, hard_k=cfg.hard_k)
      return loss, {**mets, "loss": loss}

    (loss, mets), grads = _cached_value_and_grad(
        encode, loss_on_reps, state.params, batch, rng, k)
    params, opt_state, gnorm = _apply_update(tx, state, grads)
    new = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state)
    return new, {**mets, "grad_norm": gnorm}

  return step


def make_product_features_fn(model_config: model_lib.ModelConfig,
                             cfg: StepConfig, mesh: Mesh | None = None):
  """-> `features(params, batch, rng)`: float32 (B, D) pooled product states
  (`DashClip.product_features`) of the batch's image + title.

  A frozen tower (`train_product_tower=False`) runs in eval mode, so the
  result does not depend on `rng` and equals the cached table's rows.
  """
  model = model_lib.DashClip(model_config)
  det = cfg.deterministic or not cfg.train_product_tower

  def features(params, batch, rng):
    batch = _constrain_batch(batch, mesh)
    feats, _ = model.apply({"params": params}, batch["image"],
                           batch["title_ids"], batch["title_mask"], det,
                           method=model_lib.DashClip.product_features,
                           rngs={"dropout": jax.random.split(rng, 3)[0]})
    return _constrain_batch(feats, mesh)
  return features


# ---------------------------------------------------------------------------
# State init and jit with shardings.
# ---------------------------------------------------------------------------


def init_state(model_config: model_lib.ModelConfig, cfg: StepConfig,
               tx: optax.GradientTransformation, rng: Array,
               mesh: Mesh | None = None, rules=shard_lib.DEFAULT_RULES,
               params: Any = None, params_m: Any = None,
               queue: Any = None) -> TrainState:
  """A TrainState born sharded on `mesh` (params from the logical axes).

  `params` (unboxed) replaces the random init, e.g. a converted checkpoint;
  under momentum distillation `params_m` (MOMENTUM_MODULES' trees) replaces
  the copies of the online encoders and `queue` (a `losses.init_queue`
  dict) the random queues, e.g. BLIP's. Optimizer moments and momentum
  copies take their param's sharding (FSDP shards them too); counts and
  queues are replicated.
  """
  r_init, r_q = jax.random.split(rng)
  abstract = jax.eval_shape(
      lambda r: model_lib.init_params(model_config, r), r_init)
  if mesh is not None:
    p_sh = shard_lib.param_shardings(abstract, mesh, rules)
  else:
    p_sh = None
  if params is None:
    params = jax.jit(
        lambda r: model_lib.unbox(model_lib.init_params(model_config, r)),
        out_shardings=p_sh)(r_init)
  elif p_sh is not None:
    params = jax.device_put(params, p_sh)

  def rest(p, r, given_m, given_q):
    opt_state = tx.init(p)
    params_m = queue = None
    if cfg.momentum is not None:
      params_m = given_m if given_m is not None else {
          n: jax.tree.map(jnp.copy, p[n]) for n in MOMENTUM_MODULES}
      if cfg.queue_size:
        queue = given_q if given_q is not None else losses.init_queue(
            r, cfg.queue_size, model_config.embed_dim)
    return TrainState(step=jnp.zeros((), jnp.int32), params=p,
                      opt_state=opt_state, params_m=params_m, queue=queue)

  if mesh is None:
    return jax.jit(rest)(params, r_q, params_m, queue)
  rep = shard_lib.replicated(mesh)
  m_sh = None if params_m is None else {n: p_sh[n] for n in MOMENTUM_MODULES}
  q_sh = None if queue is None else jax.tree.map(lambda _: rep, queue)
  if params_m is not None:
    params_m = jax.device_put(params_m, m_sh)
  if queue is not None:
    queue = jax.device_put(queue, q_sh)
  abstract_state = jax.eval_shape(rest, params, r_q, params_m, queue)
  st_sh = TrainState(
      step=rep, params=p_sh,
      opt_state=shard_lib.optimizer_shardings(
          tx, abstract_state.opt_state, p_sh, mesh),
      params_m=None if abstract_state.params_m is None else
      {n: p_sh[n] for n in MOMENTUM_MODULES},
      queue=None if abstract_state.queue is None else
      jax.tree.map(lambda _: rep, abstract_state.queue))
  return jax.jit(rest, in_shardings=(p_sh, rep, m_sh, q_sh),
                 out_shardings=st_sh)(params, r_q, params_m, queue)


def state_shardings(state: TrainState) -> Any:
  """Shardings of a (concrete) state, to pin the step's in/out shardings."""
  return jax.tree.map(lambda x: x.sharding, state)


def batch_shardings(batch: Batch, mesh: Mesh) -> dict[str, NamedSharding]:
  return {k: shard_lib.batch_sharding(mesh, v.ndim) for k, v in batch.items()}


def jit_step(step_fn, state: TrainState, batch: Batch, mesh: Mesh,
             compiler_options: dict[str, Any] | None = None):
  """jax.jit with explicit in/out shardings and the state donated.

  `state`/`batch` are examples (concrete arrays) fixing the layout; metrics
  come back replicated. `compiler_options` go to XLA (the tests use
  {"xla_backend_optimization_level": 0} to halve CPU compile time).
  """
  st_sh = state_shardings(state)
  rep = shard_lib.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(st_sh, batch_shardings(batch, mesh), rep),
                 out_shardings=(st_sh, rep), donate_argnums=(0,),
                 compiler_options=compiler_options)
