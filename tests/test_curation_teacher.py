"""The cross-encoder teachers: inputs, the sharded train step, save/load."""

import helpers
import jax
import numpy as np
import pytest

from dashclip_jax.curation.labelers import interface as labeler
from dashclip_jax.curation.labelers.cross_encoder import inputs as teacher_inputs
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.cross_encoder import train as teacher_train
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.train import optim
from dashclip_jax.train import sharding
from dashclip_jax.train import state as train_state


def _tiny(kind="text", seed=0, **kw):
  return teacher_lib.initial_params(
      kind, "", size="tiny", fields=("title", "category"), max_length=16,
      query_max_length=6, image_size=0, dropout=0.1, seed=seed, **kw)


def _batch(config, n=8, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, 3000, (n, config.max_length)).astype(np.int32)
  mask = (np.arange(config.max_length)[None] < rng.integers(
      5, config.max_length, (n, 1))).astype(np.int32)
  batch = {"ids": ids * mask, "mask": mask,
           "label": rng.integers(0, 3, n).astype(np.int32),
           "weight": np.ones(n, np.float32)}
  if config.kind == "multimodal":
    s = config.vision.image_size
    batch["images"] = rng.normal(size=(n, s, s, 3)).astype(np.float32)
  return batch


def _two_steps(config, params, mesh_config, devices):
  mesh = sharding.make_mesh(mesh_config, devices)
  tx = helpers.keeping_grads(optim.make_optimizer(
      optim.OptimConfig(lr=1e-3, total_steps=10), params))
  state, shardings = teacher_train.init_state(config, params, tx, mesh)
  step = teacher_train.make_train_step(config, tx)  # Dropout on.
  jitted, losses = None, []
  for i in range(2):
    batch = sharding.global_batch(_batch(config, seed=i), mesh)
    jitted = jitted or train_state.jit_step(step, shardings, batch, mesh,
                                            fast_compile=True)
    state, metrics = jitted(state, batch, jax.random.key(i))
    losses.append(float(metrics["loss"]))
    grads = grads if i else jax.device_get(state.opt_state[0])
  return jax.device_get(state.params), losses, grads


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_train_step_is_the_same_on_every_mesh(kind):
  config, params, _ = _tiny(kind)
  want, want_losses, want_grads = _two_steps(config, params, [("data", 1)],
                                             jax.devices()[:1])
  meshes = ([("data", 2), ("fsdp", 4), ("tensor", 1)],
            [("data", 8), ("fsdp", 1), ("tensor", 1)])
  for mesh_config in meshes[:2 if kind == "text" else 1]:
    got, losses, grads = _two_steps(config, params, mesh_config,
                                    jax.devices())
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    # AdamW hides a uniform gradient scale (a sum for a mean over "data")
    # from the params; the first step's gradients show it.
    helpers.assert_same_grads(grads, want_grads)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)
  assert want_losses[1] != want_losses[0]  # The step moved something.


def test_pair_tokens_layout_and_truncation():
  t = teacher_inputs.default_tokenizer()
  ids, mask = teacher_inputs.pair_tokens(
      t, ["red shirt", "a very long query that is cut early"],
      ["nike red shirt | shirts", "blue jeans | jeans | men | casual wear"],
      max_length=10, query_max_length=5)
  q, p = t(["red shirt"], 8)[0][0], t(["nike red shirt | shirts"], 16)[0][0]
  n_q, n_p = int((q > 0).sum()), int((p > 0).sum())
  want = np.concatenate([q[:n_q], p[1:n_p]])[:10]
  np.testing.assert_array_equal(ids[0, :len(want)], want[:10])
  assert list(ids[0]).count(tok.CLS_ID) == 1
  assert list(ids[0]).count(tok.SEP_ID) == 2
  # Row 2: query cut to 5 tokens ([CLS] 3 words [SEP]), text cut with its
  # final [SEP] kept; the whole row is used.
  assert ids[1, 0] == tok.CLS_ID and ids[1, 4] == tok.SEP_ID
  assert ids[1, -1] == tok.SEP_ID and mask[1].all()


def test_saved_teacher_is_a_labeler(tmp_path):
  config, params, _ = _tiny()
  teacher_id = teacher_lib.save_teacher(str(tmp_path), config, params,
                                        {"init": "random"})
  teacher = teacher_lib.load_teacher(str(tmp_path), batch_size=4)
  assert isinstance(teacher, labeler.Labeler)
  assert teacher.teacher_id == teacher_id and teacher_id.startswith("text-")
  products = [{"product_id": str(i), "title": f"red shirt {i}",
               "category": "shirts"} for i in range(5)]
  probs = teacher.predict(["red shirt"] * 5, products)  # 5 = 4 + 1 padded.
  assert probs.shape == (5, 3) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  # Sharded over the 8 local devices, batches rounded up to a multiple.
  assert teacher.batch_size == 8
  again = teacher_lib.load_teacher(str(tmp_path), batch_size=16)
  np.testing.assert_allclose(again.predict(["red shirt"] * 5, products),
                             probs, atol=1e-6)
  # The saved weights, not just some weights: the in-memory params applied
  # directly (one device, no batching) give the loaded teacher's numbers...
  inputs, _ = teacher_inputs.encode_pairs(
      config, teacher.tokenizer, ["red shirt"] * 5, products)
  logits = teacher_lib.CrossEncoder(config).apply({"params": params},
                                                  **inputs)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits, -1), atol=1e-6)
  # ...and an in-memory teacher with other weights gives other numbers.
  _, other, _ = _tiny(seed=1)
  other = teacher_lib.Teacher(config, other, "other", batch_size=4)
  assert np.abs(other.predict(["red shirt"] * 5, products) - probs).max() \
      > 1e-3


def test_label_loss_by_hand_and_padding_rows_count_for_nothing():
  # Row 0: logits (0, 0, ln 2) -> p = (1/4, 1/4, 1/2), label 2: -ln(1/2).
  # Row 1: logits (ln 3, 0, 0) -> p = (3/5, 1/5, 1/5), label 1: -ln(1/5).
  # Row 2 is padding (weight 0): a wrong, confident row that must not count.
  logits = np.array([[0.0, 0.0, np.log(2.0)], [np.log(3.0), 0.0, 0.0],
                     [50.0, 0.0, 0.0]], np.float32)
  label = np.array([2, 1, 2], np.int32)
  weight = np.array([1.0, 1.0, 0.0], np.float32)
  loss, metrics = teacher_train.label_loss(logits, label, weight)
  expected = (np.log(2.0) + np.log(5.0)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)
  assert float(metrics["accuracy"]) == 0.5  # Row 0 right, row 1 wrong.



def test_text_teacher_is_bert_for_sequence_classification(tmp_path):
  """The text teacher's logits equal transformers' on the same weights and
  tokens (`teacher_reference`, the bench's reference too). The encoder goes
  to HF through the exporter's BERT table (its parity: test_export_hf);
  the MiniLM start's conversion has its own (test_convert_parity)."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from dashclip_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation.labelers.cross_encoder import reference as teacher_reference  # pylint: disable=g-import-not-at-top
  from dashclip_jax.export_hf import query as export_query  # pylint: disable=g-import-not-at-top
  config, params, _ = _tiny()
  # Kernels 5x the init's (0.02 std: the [CLS] output hardly depends on the
  # input), and a pooler and head giving logits of order 1 (the init's are
  # ~0.01): an encoder's difference is not lost under atol.
  params["txt"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 5 if path[-1].key == "kernel" else x, params["txt"])
  rng = np.random.default_rng(0)
  for name in ("pooler", "classifier"):
    k = params[name]["kernel"]
    params[name] = {
        "kernel": rng.normal(0, 2 / np.sqrt(k.shape[0]), k.shape).astype(
            np.float32),
        "bias": rng.normal(0, 0.1, k.shape[1]).astype(np.float32)}
  bert = export_query.bert_model(
      model_lib.model_config("tiny").replace(query=config.text),
      {"query": params["txt"]})
  bert.save_pretrained(tmp_path / "bert")
  theirs = teacher_reference.torch_cross_encoder(params, str(tmp_path / "bert"))
  queries = ["red shirt", "blue running shoes for men", "watch", "kurta"]
  texts = ["Nike Red Shirt | Shirts", "Puma Blue Running Shoes | Shoes",
           "Titan Men Black Watch | Watches | steel strap black dial date "
           "window water resistant",
           "Red Cotton Kurta | Kurtas"]
  ids, mask = teacher_inputs.pair_tokens(
      teacher_inputs.default_tokenizer(), queries, texts, config.max_length,
      config.query_max_length)
  # Rows with padding and one cut to the full length.
  assert 0 < mask.sum(1).min() < mask.sum(1).max() == mask.shape[1]
  ours = np.asarray(teacher_lib.CrossEncoder(config).apply(
      {"params": params}, ids, mask))
  want = teacher_reference.torch_logits(theirs, ids, mask)
  assert np.abs(want).max() > 0.5 and np.ptp(want, 0).min() > 0.05
  np.testing.assert_allclose(ours, want, atol=1e-5, rtol=1e-5)
