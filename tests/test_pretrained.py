"""init.text_from="minilm": MiniLM-L6 text and query towers, no convert step.

The query tower must reproduce the sentence-transformers embedding of
all-MiniLM-L6-v2 (transformers' BertModel, masked mean, L2 norm) within 1e-5.
"""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dashclip_jax.convert import pretrained  # pylint: disable=g-import-not-at-top
from dashclip_jax.evaluation import baselines  # pylint: disable=g-import-not-at-top
from dashclip_jax import model as model_lib  # pylint: disable=g-import-not-at-top
from dashclip_jax.model import tokenizer as tok  # pylint: disable=g-import-not-at-top
from dashclip_jax.trainers import init_checkpoint  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
# Lower-case, punctuation-free: BLIP's pre_caption leaves them unchanged.
TEXTS = ["red running shoes for women",
         "organic whole milk",
         "a stainless steel chef knife with a wooden handle and a sheath",
         "usb c cable"]


@pytest.fixture(scope="module")
def minilm_init():
  return pretrained.text_init("minilm", model_lib.model_config("tiny"), 0)


@pytest.fixture(scope="module")
def hf_tokenizer():
  return transformers.BertTokenizerFast.from_pretrained(
      pretrained.minilm_dir(), local_files_only=True)


@pytest.fixture(scope="module")
def minilm_tensors():
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(os.path.join(pretrained.minilm_dir(), "model.safetensors"))


def _stage2_tiny(**init):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "stage2_config", os.path.join(REPO, "configs", "stage2.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.init.update(init)
  return config


def _shapes(tree):
  return {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_minilm_geometry_pooling_and_shapes(minilm_init):
  config, params = minilm_init
  tiny = model_lib.model_config("tiny")
  for tower in (config.text, config.query):
    assert (tower.width, tower.depth, tower.heads, tower.mlp_dim) == (
        384, 6, 12, 1536)
    assert tower.vocab_size == tok.VOCAB_SIZE
  assert config.text.cross_attention and not config.query.cross_attention
  assert config.embed_dim == 384
  assert (config.query_pooling, config.product_pooling) == ("mean", "mean")
  assert config.vision == tiny.vision  # The experiment's, not MiniLM's.
  assert _shapes(params) == _shapes(model_lib.abstract_params(config))
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
  for head in ("query_proj", "product_proj"):
    np.testing.assert_array_equal(params[head]["kernel"], np.eye(384))
    np.testing.assert_array_equal(params[head]["bias"], np.zeros(384))
  # Stage 1's ITC heads stay random.
  assert np.abs(params["text_proj"]["kernel"] - np.eye(384)).max() > 0.01


def test_unknown_name_is_a_value_error_naming_it():
  with pytest.raises(ValueError, match=r"'bert-large'.*'minilm'.*''"):
    pretrained.text_init("bert-large", model_lib.model_config("tiny"), 0)


@pytest.mark.parametrize("length", [None, 24])  # Longest; trainer-style pad.
def test_query_embedding_is_minilm_sentence_embedding(minilm_init,
                                                      hf_tokenizer, length):
  config, params = minilm_init
  enc = hf_tokenizer(TEXTS, return_tensors="np",
                     padding="max_length" if length else True,
                     max_length=length)
  ids = jnp.asarray(enc["input_ids"], jnp.int32)
  mask = jnp.asarray(enc["attention_mask"], jnp.int32)
  assert (mask.sum(1) < mask.shape[1]).any()  # Some rows padded.
  ours, _ = jax.jit(lambda p, i, m: model_lib.DashClip(config).apply(
      {"params": p}, i, m, method=model_lib.DashClip.encode_query))(
          params, ids, mask)
  reference = baselines.MiniLM().encode(TEXTS)
  np.testing.assert_allclose(np.asarray(ours), reference, atol=TOL, rtol=0)


def test_product_embedding_starts_near_minilm_title_embedding(minilm_init,
                                                              hf_tokenizer):
  # Mean pooling + identity product_proj: only the random cross-attention
  # separates it from MiniLM's title embedding (cos ~0.95 at tiny's 32-wide
  # ViT, ~0.85 at base's), so each title still retrieves its own query.
  config, params = minilm_init
  enc = hf_tokenizer(TEXTS, return_tensors="np", padding=True)
  s = config.vision.image_size
  images = np.random.default_rng(0).normal(size=(len(TEXTS), s, s, 3))
  products, _ = jax.jit(lambda p, x, i, m: model_lib.DashClip(config).apply(
      {"params": p}, x, i, m, method=model_lib.DashClip.encode_product))(
          params, images.astype(np.float32), enc["input_ids"].astype(np.int32),
          enc["attention_mask"].astype(np.int32))
  sims = np.asarray(products) @ baselines.MiniLM().encode(TEXTS).T
  assert np.diag(sims).min() > 0.8, sims
  np.testing.assert_array_equal(sims.argmax(1), np.arange(len(TEXTS)))


def test_blip_tokenizer_matches_minilm_tokenizer(hf_tokenizer):
  # Same bert-base-uncased vocab and WordPiece rules: same ids, so the data
  # pipeline (pre_caption + BlipTokenizer) feeds MiniLM what it was trained
  # on. They differ only where pre_caption drops punctuation (. ! " ( ) *
  # # : ; ~) that MiniLM's tokenizer keeps as tokens: "Size: XL (Blue)!"
  # loses ":", "(", ")", "!" and "2.5%" becomes "2 5 %". Lower-casing and
  # accent stripping agree ("Café" -> "cafe" in both).
  ours, our_mask = tok.BlipTokenizer.from_vocab()(
      [tok.pre_caption(t) for t in TEXTS], 24)
  enc = hf_tokenizer(TEXTS, padding="max_length", max_length=24,
                     return_tensors="np")
  np.testing.assert_array_equal(ours, enc["input_ids"])
  np.testing.assert_array_equal(our_mask, enc["attention_mask"])


def test_mesh_and_init_takes_minilm_towers(minilm_tensors, caplog):
  caplog.set_level(logging.INFO, logger="dashclip_jax")
  _, init_dir, config, params = init_checkpoint.mesh_and_init(
      _stage2_tiny(text_from="minilm"), "stage 2")
  assert init_dir is None
  assert (config.query.width, config.query.depth, config.embed_dim) == (
      384, 6, 384)
  words = minilm_tensors["embeddings.word_embeddings.weight"]
  for tower in ("query", "txt"):
    np.testing.assert_array_equal(
        params[tower]["word_embed"]["embedding"][:words.shape[0]], words)
  # token_type row 0 is folded into the positions (BERT adds it always).
  np.testing.assert_allclose(
      params["query"]["pos_embed"],
      minilm_tensors["embeddings.position_embeddings.weight"]
      + minilm_tensors["embeddings.token_type_embeddings.weight"][0],
      rtol=0, atol=0)
  assert "init.text_from=minilm" in caplog.text
  assert "stay random" in caplog.text


def test_mesh_and_init_rejects_an_unknown_text_from():
  with pytest.raises(ValueError, match="'minilm-l12'"):
    init_checkpoint.mesh_and_init(_stage2_tiny(text_from="minilm-l12"),
                                  "stage 2")


def test_text_from_is_ignored_with_an_init_checkpoint(tmp_path, caplog):
  from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  tiny = model_lib.model_config("tiny")
  model_dir_lib.save_model_dir(
      str(tmp_path / "m"), model_lib.init_params(tiny, jax.random.key(1)),
      tiny)
  caplog.set_level(logging.INFO, logger="dashclip_jax")
  _, init_dir, config, _ = init_checkpoint.mesh_and_init(
      _stage2_tiny(checkpoint=str(tmp_path / "m"), text_from="minilm"),
      "stage 2")
  assert init_dir == str(tmp_path / "m")
  assert config.query.width == tiny.query.width
  assert "init.text_from='minilm' ignored" in caplog.text


def test_text_from_of_a_stage2_config_reaches_its_nested_stage1():
  from dashclip_jax import main  # pylint: disable=g-import-not-at-top
  config = _stage2_tiny(text_from="minilm")
  assert config.stage1.init.text_from == ""  # The tiny stage 1's own value.
  assert main.stage1_config_of(config).init.text_from == "minilm"


def test_minilm_init_sets_enc_and_dec_rows_to_cls(minilm_init):
  _, params = minilm_init
  for tower in ("txt", "query"):
    table = params[tower]["word_embed"]["embedding"]
    np.testing.assert_array_equal(table[tok.ENC_ID], table[tok.CLS_ID])
    np.testing.assert_array_equal(table[tok.DEC_ID], table[tok.CLS_ID])
