"""The inference API: preprocessing parity, batching, compile-once, errors."""

import jax
import numpy as np
import pytest
from PIL import Image

import dashclip_jax
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import preprocess
from dashclip_jax.model import tokenizer as tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("ckpt") / "model"
  config = model_lib.model_config("tiny")
  model_dir_lib.save_model_dir(
      str(path), model_lib.init_params(config, jax.random.key(1)), config)
  return str(path)


@pytest.fixture(scope="module")
def encoder(model_dir):
  return dashclip_jax.load(model_dir, batch_size=4)


def _images(n, seed=0):
  rng = np.random.default_rng(seed)
  # Different sizes and kinds: arrays, PIL, grayscale.
  out = [rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)
         for i in range(n)]
  if n > 1:
    out[1] = Image.fromarray(out[1])
  if n > 2:
    out[2] = out[2][..., 0]
  return out


def test_eval_transform_matches_hf_blip_image_processor():
  pil_blip = pytest.importorskip(
      "transformers.models.blip.image_processing_pil_blip")
  proc = pil_blip.BlipImageProcessorPil(size={"height": 32, "width": 32})
  img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
  ref = proc(images=[img], return_tensors="np")["pixel_values"][0]
  ours = preprocess.eval_transform(img, 32)
  np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), atol=1e-6)


def test_pre_caption_follows_blip():
  assert tok.pre_caption("Men's  Navy-Blue (Slim) shirt!!\n") == \
      "men's navy-blue slim shirt"
  assert tok.pre_caption(" ".join(["w"] * 40)) == " ".join(["w"] * 30)


def test_tokenizer_layout():
  t = tok.BlipTokenizer.from_vocab()
  ids, mask = t(["hello world", "x " * 50], max_length=8)
  assert ids[0, 0] == tok.CLS_ID and ids[0, 3] == tok.SEP_ID
  assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert ids[1, -1] == tok.SEP_ID and mask[1].all()  # Truncated, keeps [SEP].
  assert t(["[ENC]"], 4)[0][0, 1] == tok.ENC_ID


def test_encoders_equal_direct_model_apply(encoder, model_dir):
  config, trees, _ = model_dir_lib.load_model_dir(model_dir)
  module, params = model_lib.DashClip(config), {"params": trees["params"]}
  images, titles = _images(5), ["red shirt", "blue jeans for men", "watch",
                                "black leather belt", "sandals"]
  pixels = encoder.preprocess_images(images)
  ids, mask = encoder.tokenize(titles)
  direct = {
      "image": module.apply(params, pixels,
                            method=model_lib.DashClip.encode_image)[0],
      "text": module.apply(params, ids, mask,
                           method=model_lib.DashClip.encode_text)[0],
      "query": module.apply(params, ids, mask,
                            method=model_lib.DashClip.encode_query)[0],
      "product": module.apply(params, pixels, ids, mask,
                              method=model_lib.DashClip.encode_product)[0],
  }
  got = {"image": encoder.encode_image(images),
         "text": encoder.encode_text(titles),
         "query": encoder.encode_query(titles),
         "product": encoder.encode_product(images, titles)}
  for name, value in got.items():
    assert isinstance(value, np.ndarray) and value.shape == (5, 16), name
    np.testing.assert_allclose(value, direct[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(value, axis=-1), 1.0, atol=1e-5)
  scores = encoder.itm_score(images, titles)
  assert scores.shape == (5,) and ((scores > 0) & (scores < 1)).all()


def test_batches_compile_once(model_dir):
  encoder = dashclip_jax.load(model_dir, batch_size=4)
  for n in (1, 3, 4, 9):  # Ragged tails are padded to the one batch shape.
    out = encoder.encode_query(["query"] * n)
    assert out.shape == (n, 16)
  assert encoder._query._cache_size() == 1  # pylint: disable=protected-access
  # Padding must not leak into results: row 0 is the same alone or batched.
  alone = encoder.encode_query(["red shirt"])
  batched = encoder.encode_query(["red shirt", "blue", "x", "y", "z"])
  np.testing.assert_allclose(alone[0], batched[0], atol=1e-6)


def test_bad_inputs_are_named(encoder, tmp_path):
  with pytest.raises(TypeError, match="list of str"):
    encoder.encode_text("not a list")
  with pytest.raises(TypeError, match=r"texts\[1\]"):
    encoder.encode_query(["ok", 3])
  with pytest.raises(ValueError, match="2 images but 1 titles"):
    encoder.encode_product(_images(2), ["one"])
  with pytest.raises(TypeError, match="uint8"):
    encoder.encode_image([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(FileNotFoundError, match="not found"):
    dashclip_jax.load(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="holds no dashclip model"):
    dashclip_jax.load(str(tmp_path))
