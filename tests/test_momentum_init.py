"""Stage 1 from a converted BLIP checkpoint: its momentum encoders and ITC
queues (BLIP_REFERENCE §5a) start momentum distillation; `base` follows
BLIP's queue and alpha ramp.

The source is a tiny state dict with BLIP's own key names (random values,
momentum copies = online / 2 so that the two differ), converted with
`dashclip_jax.convert`; stage 1 runs in-process up to its train loop.
"""

import math
import pathlib

import jax
import numpy as np
import pytest

from dashclip_jax import convert
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import tokenizer as tok
from dashclip_jax.runtime import config_files
from dashclip_jax.train import state as train_state
from dashclip_jax.train import step_config
from dashclip_jax.trainers import init_checkpoint
from dashclip_jax.trainers import inputs
from dashclip_jax.trainers import loop
from dashclip_jax.trainers import stage1

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTH, MLP, DEPTH, PATCH, SIDE, EMBED, QUEUE = 32, 64, 2, 8, 4, 16, 16
HEADS = {"vision.heads": 2, "text.heads": 2, "query.heads": 2}


def _blip_state_dict(kind: str) -> dict[str, np.ndarray]:
  """BLIP_Pretrain ("pretrain") / BLIP_Retrieval ("retrieval") names at
  the tiny geometry (BLIP_REFERENCE §5a)."""
  rng = np.random.default_rng(0)
  w, f32 = WIDTH, np.float32

  def r(*shape):
    return (0.02 * rng.standard_normal(shape)).astype(f32)
  vit = {"cls_token": r(1, 1, w), "pos_embed": r(1, SIDE * SIDE + 1, w),
         "patch_embed.proj.weight": r(w, 3, PATCH, PATCH),
         "patch_embed.proj.bias": r(w), "norm.weight": r(w),
         "norm.bias": r(w)}
  for n in range(DEPTH):
    for name, out, inp in (("norm1", w, None), ("attn.qkv", 3 * w, w),
                           ("attn.proj", w, w), ("norm2", w, None),
                           ("mlp.fc1", MLP, w), ("mlp.fc2", w, MLP)):
      vit[f"blocks.{n}.{name}.weight"] = r(out) if inp is None else r(out,
                                                                      inp)
      vit[f"blocks.{n}.{name}.bias"] = r(out)
  bert = {"embeddings.word_embeddings.weight": r(tok.VOCAB_SIZE, w),
          "embeddings.position_embeddings.weight": r(64, w),
          "embeddings.LayerNorm.weight": r(w),
          "embeddings.LayerNorm.bias": r(w)}
  for n in range(DEPTH):
    layer = f"encoder.layer.{n}."
    for name, out, inp in (
        ("attention.self.query", w, w), ("attention.self.key", w, w),
        ("attention.self.value", w, w), ("attention.output.dense", w, w),
        ("attention.output.LayerNorm", w, None),
        ("crossattention.self.query", w, w),
        ("crossattention.self.key", w, w),
        ("crossattention.self.value", w, w),
        ("crossattention.output.dense", w, w),
        ("crossattention.output.LayerNorm", w, None),
        ("intermediate.dense", MLP, w), ("output.dense", w, MLP),
        ("output.LayerNorm", w, None)):
      bert[layer + name + ".weight"] = r(out) if inp is None else r(out, inp)
      bert[layer + name + ".bias"] = r(out)
  online = {f"visual_encoder.{k}": v for k, v in vit.items()}
  online.update({f"text_encoder.{k}": v for k, v in bert.items()})
  for head, out in (("vision_proj", EMBED), ("text_proj", EMBED),
                    ("itm_head", 2)):
    online[f"{head}.weight"], online[f"{head}.bias"] = r(out, w), r(out)
  state = dict(online)
  for name, value in online.items():
    module, rest = name.split(".", 1)
    if module != "itm_head":  # BLIP has no itm_head_m.
      state[f"{module}_m.{rest}"] = value * 0.5
  state["temp"] = np.asarray(0.05, f32)
  queues = rng.standard_normal((2, EMBED, QUEUE)).astype(f32)
  queues /= np.linalg.norm(queues, axis=1, keepdims=True)  # Unit columns.
  state["image_queue"], state["text_queue"] = queues
  if kind == "pretrain":
    state["queue_ptr"] = np.asarray([8], np.int64)
  else:
    state["ptr_queue"] = np.asarray([4], np.int64)
    state["idx_queue"] = np.arange(QUEUE, dtype=np.int64)[None]  # BLIP ids.
  return state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(model dir, BLIP_Pretrain state dict) of the converted tiny BLIP."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("blip")
  state = _blip_state_dict("pretrain")
  save_file(state, str(d / "blip.safetensors"))
  report = convert.convert(str(d / "blip.safetensors"), str(d / "model"),
                           size="tiny", overrides=HEADS)
  assert report.layout == "blip_original" and report.momentum is not None
  return str(d / "model"), state


@pytest.fixture(scope="module")
def retrieval_queues(tmp_path_factory):
  """BLIP_Retrieval's queues (ptr_queue, idx_queue) as the converter maps
  them (convert.rename.map_source), in a model dir of their own."""
  d = tmp_path_factory.mktemp("retrieval")
  state = _blip_state_dict("retrieval")
  report = convert.convert_tensors(state, None,
                                   base=model_lib.model_config("tiny"),
                                   overrides=HEADS)
  assert set(report.queues) == {"image_queue", "text_queue", "queue_ptr",
                                "idx_queue"}
  model_dir_lib.save_model_dir(str(d / "model"), report.params,
                               report.config, momentum=report.momentum,
                               queues=report.queues)
  return str(d / "model"), state


def _stage1_config(variant="tiny", **overrides):
  return config_files.load_config(ROOT / "configs" / "stage1.py", variant,
                                  overrides)


def _initial_state(monkeypatch, config, workdir):
  """Runs stage1.train up to its loop -> the state the loop would start."""
  seen = []

  def no_loop(config, stage, state, *args, **kwargs):
    del config, stage, args, kwargs
    seen.append(jax.device_get(state))
    return state
  monkeypatch.setattr(loop, "train_loop", no_loop)
  stage1.train(config, str(workdir))
  return seen[0]


def test_stage1_starts_from_blip_momentum_encoders_and_queues(
    converted, monkeypatch, tmp_path, caplog):
  model_dir, blip = converted
  config = _stage1_config(**{
      "init.checkpoint": model_dir, "loss.momentum": 0.995,
      "loss.queue_size": QUEUE, "loss.alpha_ramp_epochs": 1.0})
  with caplog.at_level("INFO", logger="dashclip_jax"):
    state = _initial_state(monkeypatch, config, tmp_path)
  _, trees, _ = model_dir_lib.load_model_dir(model_dir,
                                             items=("params", "momentum"))
  # The momentum encoders are BLIP's *_m modules (online / 2), not copies.
  for module in train_state.MOMENTUM_MODULES:
    for got, want, online in zip(jax.tree.leaves(state.params_m[module]),
                                 jax.tree.leaves(trees["momentum"][module]),
                                 jax.tree.leaves(state.params[module])):
      np.testing.assert_array_equal(got, want)
      assert not np.array_equal(got, online)
  np.testing.assert_allclose(
      state.params_m["vision_proj"]["kernel"],
      blip["vision_proj_m.weight"].T, rtol=1e-6)
  # The queues: BLIP's (E, Q) columns as rows, its pointer, ids -1.
  np.testing.assert_array_equal(state.queue["img"], blip["image_queue"].T)
  np.testing.assert_array_equal(state.queue["txt"], blip["text_queue"].T)
  assert int(state.queue["ptr"]) == 8
  np.testing.assert_array_equal(state.queue["ids"], -np.ones(QUEUE))
  log = "\n".join(r.getMessage() for r in caplog.records)
  assert "momentum encoders (img, txt, vision_proj, text_proj) from" in log
  assert f"ITC queues from {model_dir}: {QUEUE} rows, pointer 8" in log
  # alpha_ramp_epochs=1: one epoch of the train catalog in steps.
  n = len(inputs.load_sources(config.data).train_catalog)
  steps = math.ceil(n / config.train.batch_size)
  assert f"over {steps} steps (1 epoch(s) of {n} train products" in log


def test_queue_size_and_layout_variants(retrieval_queues, caplog):
  model_dir, blip = retrieval_queues
  mc, _, _ = model_dir_lib.load_model_dir(model_dir)
  params = init_checkpoint.load_init_params(model_dir, mc)
  on = step_config.StepConfig(momentum=0.995, queue_size=QUEUE)
  # BLIP_Retrieval names: ptr_queue is the pointer; idx_queue's ids are
  # BLIP's images, never this catalog's products.
  with caplog.at_level("INFO", logger="dashclip_jax"):
    params_m, queue = stage1.momentum_init(model_dir, on, params, EMBED)
  assert int(queue["ptr"]) == 4 and (queue["ids"] == -1).all()
  np.testing.assert_array_equal(queue["img"], blip["image_queue"].T)
  assert params_m is not None
  # Another queue size: the queues start random, said in one line.
  caplog.clear()
  with caplog.at_level("INFO", logger="dashclip_jax"):
    params_m, queue = stage1.momentum_init(
        model_dir, step_config.StepConfig(momentum=0.995, queue_size=32),
        params, EMBED)
  assert queue is None and params_m is not None
  lines = [r.getMessage() for r in caplog.records if "queue" in
           r.getMessage()]
  assert len(lines) == 1 and "start random" in lines[0] and \
      "loss.queue_size=16 loads them" in lines[0], lines
  # No momentum distillation: nothing is loaded.
  assert stage1.momentum_init(model_dir, step_config.StepConfig(), params,
                              EMBED) == (None, None)


def test_base_follows_blip_momentum_distillation():
  c = _stage1_config("base")
  assert (c.loss.momentum, c.loss.queue_size, c.loss.alpha) == (
      0.995, 57600, 0.4)
  assert c.loss.alpha_ramp_epochs == 1.0
  assert c.loss.queue_size % c.train.batch_size == 0  # BLIP asserts it.
  # The ramp in steps follows the data: the fashion catalog's ~10.7k train
  # products at batch 256 are 42 steps, a 1.2M-image set 4688.
  for n, steps in ((10_700, 42), (1_200_000, 4688)):
    sc = stage1.step_config(c.loss, 1, n, c.train.batch_size)
    assert sc.alpha_ramp_steps == steps and sc.queue_size == 57600
  # Without momentum the ramp setting is inert.
  tiny = _stage1_config("tiny", **{"loss.alpha_ramp_epochs": 1.0})
  assert stage1.step_config(tiny.loss, 1, 96, 8).alpha_ramp_steps == 0
