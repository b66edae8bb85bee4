"""Model properties beyond HF parity: dtypes, remat, logical axes, configs."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dashclip_jax import model as model_lib

CONFIG = model_lib.model_config("tiny")


@pytest.fixture(scope="module")
def params():
  return model_lib.unbox(model_lib.init_params(CONFIG, jax.random.key(0)))


def _inputs():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(1000, 2000, (2, 10)).astype(np.int32)
  ids[:, 0] = 101
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  return images, ids, mask


def _product_loss(config, params, images, ids, mask):
  emb, _ = model_lib.DashClip(config).apply(
      {"params": params}, images, ids, mask,
      method=model_lib.DashClip.encode_product)
  return jnp.sum(emb[0] * emb[1])


def test_every_param_has_logical_axes():
  specs = model_lib.logical_axes(CONFIG)
  shapes = jax.eval_shape(lambda r: model_lib.unbox(
      model_lib.init_params(CONFIG, r)), jax.random.key(0))
  flat_specs = jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes))
  assert len(flat_specs) == len(flat_shapes)
  for path, spec in flat_specs:
    assert len(spec) == len(flat_shapes[path].shape), path
  by_name = {jax.tree_util.keystr(p): tuple(s) for p, s in flat_specs}
  assert by_name["['txt']['word_embed']['embedding']"] == ("vocab", "embed")
  assert by_name["['img']['block_0']['mlp']['fc1']['kernel']"] == ("embed",
                                                                   "mlp")
  assert by_name["['txt']['layer_0']['cross_attn']['out']['kernel']"] == (
      "heads", "kv", "embed")
  # Top-level names are public API (optimizer regexes, the converter).
  assert set(shapes) == {"img", "txt", "query", "vision_proj", "text_proj",
                         "product_proj", "query_proj", "itm_head", "temp"}


def _assert_same_loss_and_grads(params, other_config):
  """The product loss and its gradients under CONFIG and `other_config`."""
  images, ids, mask = _inputs()
  f = lambda c: jax.jit(jax.value_and_grad(lambda p: _product_loss(
      c, p, images, ids, mask)))(params)
  (v0, g0), (v1, g1) = f(CONFIG), f(other_config)
  assert float(v0) == pytest.approx(float(v1), abs=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_remat_changes_nothing_numerically(params):
  _assert_same_loss_and_grads(params, CONFIG.replace(remat=True))


def test_scanned_layers_equal_unrolled(params):
  """scan_layers runs the same function (params keep their per-layer
  names); with dropout on, each layer draws its own mask from the rng."""
  # With remat too: the scan body is then checkpointed (the train-step
  # mesh test runs it without).
  _assert_same_loss_and_grads(params, CONFIG.replace(scan_layers=True,
                                                     remat=True))
  _, ids, mask = _inputs()
  module = model_lib.DashClip(CONFIG.replace(scan_layers=True))
  text = jax.jit(lambda det, seed: module.apply(
      {"params": params}, ids, mask, det, method=model_lib.DashClip.encode_text,
      rngs={"dropout": jax.random.key(seed)})[0], static_argnums=0)
  np.testing.assert_array_equal(text(False, 1), text(False, 1))
  assert not np.allclose(text(False, 1), text(False, 2))
  assert not np.allclose(text(False, 1), text(True, 1))


def test_fused_attention_path_equals_einsum(params, monkeypatch):
  """attention="cudnn" routes the unmasked, dropout-free calls (ViT, image
  cross-attention at eval) through jax.nn.dot_product_attention, padded
  (cuDNN on GPU, XLA here). Values and grads equal the einsum path."""
  fused = CONFIG.replace(attention="cudnn")
  _assert_same_loss_and_grads(params, fused)
  # The path is really taken, by the unmasked calls only: 2 ViT blocks and
  # 2 cross-attention layers; the masked text self-attention keeps einsums.
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(
      jax.nn, "dot_product_attention",
      lambda q, k, v, **kw: calls.append((q.shape[1], k.shape[1],
                                          kw["implementation"]))
      or real(q, k, v, **kw))
  jax.make_jaxpr(lambda p: _product_loss(fused, p, *_inputs()))(params)
  # Lengths padded to 64 (17 image tokens, 10 text tokens), cuDNN's rule.
  assert calls == [(64, 64, None)] * 4
  with pytest.raises(ValueError, match="Unknown attention"):
    CONFIG.replace(attention="flash")


def test_texts_sharing_an_image_equal_repeated_images(params):
  """p texts per image give the same ITM logits and gradients as repeating
  each image p times (the image's keys/values are only projected once)."""
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(3, 17, 32)).astype(np.float32)
  ids = rng.integers(1000, 2000, (6, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0

  def itm(p, image_tokens):
    return model_lib.DashClip(CONFIG).apply(
        {"params": p}, ids, mask, image_tokens,
        method=model_lib.DashClip.itm_logits)[0]

  shared = jax.jit(jax.value_and_grad(
      lambda p, t: jnp.sum(itm(p, t) ** 2), argnums=(0, 1)))
  repeated = jax.jit(jax.value_and_grad(
      lambda p, t: jnp.sum(itm(p, jnp.repeat(t, 2, axis=0)) ** 2),
      argnums=(0, 1)))
  (v0, g0), (v1, g1) = shared(params, tokens), repeated(params, tokens)
  logits = jax.jit(itm)
  np.testing.assert_allclose(logits(params, tokens),
                             logits(params, np.repeat(tokens, 2, axis=0)),
                             atol=1e-6)
  assert float(v0) == pytest.approx(float(v1), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  with pytest.raises(ValueError, match="6 texts for 4 images"):
    itm(params, np.concatenate([tokens, tokens[:1]]))


def test_every_encoder_returns_out_and_aux(params):
  """One convention: each encoder method returns (out, aux dict)."""
  images, ids, mask = _inputs()
  module, m = model_lib.DashClip(CONFIG), model_lib.DashClip
  apply = lambda method, *a: module.apply({"params": params}, *a,
                                          method=method)
  _, aux = apply(m.encode_image, images)
  tokens = aux["tokens"]
  calls = {
      m.encode_image: (images,), m.encode_text: (ids, mask),
      m.encode_multimodal: (ids, mask, tokens),
      m.itm_logits: (ids, mask, tokens),
      m.product_features: (images, ids, mask),
      m.product_features_from_tokens: (tokens, ids, mask),
      m.encode_product: (images, ids, mask),
      m.encode_product_from_tokens: (tokens, ids, mask),
      m.encode_product_text: (ids, mask), m.encode_query: (ids, mask),
  }
  for method, args in calls.items():
    result = apply(method, *args)
    assert isinstance(result, tuple) and len(result) == 2, method.__name__
    assert isinstance(result[1], dict), method.__name__
  hidden, _ = apply(m.encode_multimodal, ids, mask, tokens)
  logits, aux = apply(m.itm_logits, ids, mask, tokens)
  assert logits.shape == (2, 2)
  np.testing.assert_array_equal(aux["hidden"], hidden)


def test_pool_takes_position_zero_or_masked_mean():
  hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
  mask = np.array([[1, 1, 1], [1, 1, 0]])
  for pooling in ("cls", "enc"):
    np.testing.assert_array_equal(model_lib.pool(hidden, mask, pooling),
                                  hidden[:, 0])
  mean = model_lib.pool(hidden.astype(jnp.bfloat16), mask, "mean")
  assert mean.dtype == jnp.float32
  np.testing.assert_allclose(mean, [[2, 3], [7, 8]])  # Row 1: positions 0-1.
  with pytest.raises(ValueError, match="Unknown pooling 'max'"):
    model_lib.pool(hidden, mask, "max")


def test_bfloat16_compute_keeps_float32_params(params):
  images, ids, mask = _inputs()
  bf16 = CONFIG.replace(dtype="bfloat16")
  p16 = model_lib.unbox(model_lib.init_params(bf16, jax.random.key(0)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p16))
  emb32, _ = model_lib.DashClip(CONFIG).apply(
      {"params": params}, images, ids, mask,
      method=model_lib.DashClip.encode_product)
  emb16, aux = model_lib.DashClip(bf16).apply(
      {"params": params}, images, ids, mask,
      method=model_lib.DashClip.encode_product)
  assert aux["hidden"].dtype == jnp.bfloat16
  assert emb16.dtype == jnp.float32  # Projections and norms in float32.
  np.testing.assert_allclose(emb16, emb32, atol=5e-2)
  assert not np.allclose(emb16, emb32, atol=1e-6)  # It did run in bf16.


def test_padding_does_not_change_real_tokens(params):
  """Extra [PAD] columns leave every real token's hidden state unchanged, in
  the text and image-grounded modes, and so the pooled embedding."""
  images, ids, mask = _inputs()
  module = model_lib.DashClip(CONFIG)
  m = model_lib.DashClip
  apply = lambda *a, method: module.apply({"params": params}, *a,
                                          method=method)
  pad = lambda x: np.concatenate([x, np.zeros((2, 6), np.int32)], axis=1)
  real = mask.astype(bool)  # Row 1 is padded already from column 6.
  _, aux = apply(images, method=m.encode_image)
  short, aux_s = apply(ids, mask, method=m.encode_text)
  long, aux_l = apply(pad(ids), pad(mask), method=m.encode_text)
  np.testing.assert_allclose(short, long, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux_l["hidden"])[:, :10][real],
                             np.asarray(aux_s["hidden"])[real], atol=1e-5)
  short, _ = apply(ids, mask, aux["tokens"], method=m.encode_multimodal)
  long, _ = apply(pad(ids), pad(mask), aux["tokens"],
                  method=m.encode_multimodal)
  np.testing.assert_allclose(np.asarray(long)[:, :10][real],
                             np.asarray(short)[real], atol=1e-5)
  # The same 6 columns unmasked do reach the real tokens: what the checks
  # above show is the mask at work.
  unmasked = np.concatenate([mask, np.ones((2, 6), np.int32)], axis=1)
  _, aux_u = apply(pad(ids), unmasked, method=m.encode_text)
  assert not np.allclose(np.asarray(aux_u["hidden"])[:, :10][real],
                         np.asarray(aux_s["hidden"])[real], atol=1e-3)


def test_config_round_trip_and_errors():
  c = model_lib.model_config("small", embed_dim=64)
  assert model_lib.ModelConfig.from_dict(c.to_dict()) == c
  with pytest.raises(ValueError, match="Unknown model size"):
    model_lib.model_config("huge")
  with pytest.raises(ValueError, match="Unknown model config keys"):
    model_lib.ModelConfig.from_dict({**c.to_dict(), "widht": 3})
  base = model_lib.model_config("base")
  assert (base.vision.width, base.vision.depth, base.text.heads,
          base.embed_dim, base.vision.ln_eps, base.text.ln_eps) == (
              768, 12, 12, 256, 1e-6, 1e-12)


def test_shape_errors_are_clear(params):
  module = model_lib.DashClip(CONFIG)
  with pytest.raises(ValueError, match="not a multiple of patch"):
    module.apply({"params": params}, np.zeros((1, 30, 30, 3), np.float32),
                 method=model_lib.DashClip.encode_image)
  long_ids = np.ones((1, 100), np.int32)
  with pytest.raises(ValueError, match="exceeds max_positions 64"):
    module.apply({"params": params}, long_ids, long_ids,
                 method=model_lib.DashClip.encode_text)


def test_interpolate_pos_embed_matches_torch():
  torch = pytest.importorskip("torch")
  table = np.random.default_rng(0).normal(size=(1, 1 + 16, 8)).astype(
      np.float32)
  ours = np.asarray(model_lib.interpolate_pos_embed(table, (6, 6)))
  grid = torch.from_numpy(table[0, 1:].reshape(1, 4, 4, 8)).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic",
                                        align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(36, 8).numpy()
  np.testing.assert_array_equal(ours[0, 0], table[0, 0])
  np.testing.assert_allclose(ours[0, 1:], ref, atol=1e-5)
