"""The converter refuses bad sources with errors that name the culprit."""

import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from dashclip_jax import convert
from dashclip_jax.model import tokenizer as tok


def _tiny_hf_blip_tensors():
  """A minimal HF-BLIP-layout state dict (1 layer each) as numpy."""
  rng = np.random.default_rng(0)
  w, v, e = 32, tok.VOCAB_SIZE, 16
  t = {
      "vision_model.embeddings.class_embedding": (1, 1, w),
      "vision_model.embeddings.position_embedding": (1, 17, w),
      "vision_model.embeddings.patch_embedding.weight": (w, 3, 8, 8),
      "vision_model.embeddings.patch_embedding.bias": (w,),
      "vision_model.post_layernorm.weight": (w,),
      "vision_model.post_layernorm.bias": (w,),
      "text_encoder.embeddings.word_embeddings.weight": (v, w),
      "text_encoder.embeddings.position_embeddings.weight": (64, w),
      "text_encoder.embeddings.LayerNorm.weight": (w,),
      "text_encoder.embeddings.LayerNorm.bias": (w,),
      "vision_proj.weight": (e, w), "vision_proj.bias": (e,),
      "text_proj.weight": (e, w), "text_proj.bias": (e,),
      "itm_head.weight": (2, w), "itm_head.bias": (2,),
  }
  layer = "vision_model.encoder.layers.0."
  t.update({layer + "layer_norm1.weight": (w,), layer + "layer_norm1.bias": (w,),
            layer + "self_attn.qkv.weight": (3 * w, w),
            layer + "self_attn.qkv.bias": (3 * w,),
            layer + "self_attn.projection.weight": (w, w),
            layer + "self_attn.projection.bias": (w,),
            layer + "layer_norm2.weight": (w,), layer + "layer_norm2.bias": (w,),
            layer + "mlp.fc1.weight": (64, w), layer + "mlp.fc1.bias": (64,),
            layer + "mlp.fc2.weight": (w, 64), layer + "mlp.fc2.bias": (w,)})
  layer = "text_encoder.encoder.layer.0."
  for sub in ("attention", "crossattention"):
    for proj in ("query", "key", "value"):
      t[f"{layer}{sub}.self.{proj}.weight"] = (w, w)
      t[f"{layer}{sub}.self.{proj}.bias"] = (w,)
    t[f"{layer}{sub}.output.dense.weight"] = (w, w)
    t[f"{layer}{sub}.output.dense.bias"] = (w,)
    t[f"{layer}{sub}.output.LayerNorm.weight"] = (w,)
    t[f"{layer}{sub}.output.LayerNorm.bias"] = (w,)
  t.update({layer + "intermediate.dense.weight": (64, w),
            layer + "intermediate.dense.bias": (64,),
            layer + "output.dense.weight": (w, 64),
            layer + "output.dense.bias": (w,),
            layer + "output.LayerNorm.weight": (w,),
            layer + "output.LayerNorm.bias": (w,)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}


HEADS = {"vision.heads": 2, "text.heads": 2, "query.heads": 2}


def test_minimal_source_converts(tmp_path):
  """Sanity for the fixtures below: the unmodified source converts."""
  path = tmp_path / "ok.safetensors"
  save_file(_tiny_hf_blip_tensors(), str(path))
  report = convert.convert(str(path), str(tmp_path / "out"), overrides=HEADS)
  assert report.layout == "hf_blip" and report.unused == []
  assert report.config.vision.depth == 1  # No config.json: from the shapes.
  # The ViT has no config.json here, so BLIP-14M's 224 px does not apply:
  # the image size comes from the position table (4x4 patches of 8 px).
  assert report.config.vision.image_size == 32


def test_wrong_file_type(tmp_path):
  path = tmp_path / "weights.pth"
  path.write_text("this is not a checkpoint")
  with pytest.raises(convert.ConversionError, match="unrecognised file type"):
    convert.convert(str(path), str(tmp_path / "out"))
  png = tmp_path / "image.safetensors"
  png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
  with pytest.raises(convert.ConversionError, match="not a readable safetens"):
    convert.convert(str(png), str(tmp_path / "out"))


def test_truncated_files(tmp_path):
  torch = pytest.importorskip("torch")
  full = tmp_path / "full.pth"
  torch.save({"model": {"temp": torch.tensor(0.07),
                        "x": torch.zeros(1000)}}, full)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(full.read_bytes()[:300])
  with pytest.raises(convert.ConversionError, match=r"cut\.pth.*could not be "
                     "read"):
    convert.convert(str(cut), str(tmp_path / "out"))
  st = tmp_path / "full.safetensors"
  save_file(_tiny_hf_blip_tensors(), str(st))
  cut_st = tmp_path / "cut.safetensors"
  cut_st.write_bytes(st.read_bytes()[:5000])
  with pytest.raises(convert.ConversionError, match="cut.safetensors"):
    convert.convert(str(cut_st), str(tmp_path / "out"))


def test_unknown_layout(tmp_path):
  path = tmp_path / "resnet.safetensors"
  save_file({"conv1.weight": np.zeros((8, 3, 3, 3), np.float32),
             "fc.weight": np.zeros((10, 8), np.float32)}, str(path))
  with pytest.raises(convert.ConversionError,
                     match=r"unknown checkpoint layout.*conv1\.weight"):
    convert.convert(str(path), str(tmp_path / "out"))


def test_shape_mismatch_names_param_and_shapes(tmp_path):
  tensors = _tiny_hf_blip_tensors()
  tensors["itm_head.weight"] = np.zeros((3, 32), np.float32)
  path = tmp_path / "bad.safetensors"
  save_file(tensors, str(path))
  with pytest.raises(convert.ConversionError,
                     match=r"itm_head/kernel: source \(32, 3\) vs target "
                     r"\(32, 2\)"):
    convert.convert(str(path), str(tmp_path / "out"), overrides=HEADS)
  assert not os.path.exists(tmp_path / "out" / "dashclip.json")


def test_unused_and_unfilled_are_listed(tmp_path):
  tensors = _tiny_hf_blip_tensors()
  tensors["some.extra.tensor"] = np.zeros(3, np.float32)
  del tensors["itm_head.bias"]
  path = tmp_path / "partial.safetensors"
  save_file(tensors, str(path))
  report = convert.convert(str(path), str(tmp_path / "out"), overrides=HEADS)
  assert report.unused == ["some.extra.tensor"]
  assert report.unfilled == ["itm_head/bias"]


def test_overrides_reject_unknown_keys(tmp_path):
  path = tmp_path / "ok.safetensors"
  save_file(_tiny_hf_blip_tensors(), str(path))
  with pytest.raises(KeyError, match="vision.hedas"):
    convert.convert(str(path), str(tmp_path / "out"),
                    overrides={"vision.hedas": 2})


def test_cli_reports_errors_in_one_line(tmp_path):
  with pytest.raises(SystemExit, match="convert: error: .*not found"):
    convert.main(["--source", str(tmp_path / "nope.pth"),
                  "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("args, culprit", [
    (["--set", "k"], "--set expects key=value, got 'k'"),
    (["--set", "vision.image_size=big"],
     "'vision.image_size' takes an int (now 32), got 'big'"),
    (["--set", "text.cross_attention=yes"],
     "'text.cross_attention' takes a bool (now True), got 'yes'"),
    (["--set", "vision.hedas=2"], "unknown model config key 'vision.hedas'"),
    (["--size=huge"], "--size: Unknown model size 'huge'"),
    (["--bert_into=txet"], "--bert_into: unknown tower(s) ['txet']"),
])
def test_cli_option_errors_are_one_line(tmp_path, args, culprit):
  path = tmp_path / "ok.safetensors"
  save_file(_tiny_hf_blip_tensors(), str(path))
  with pytest.raises(SystemExit) as e:
    convert.main(["--source", str(path), "--output", str(tmp_path / "out"),
                  *args])
  msg = str(e.value.code)
  assert msg.startswith("convert: error: ") and "\n" not in msg, msg
  assert culprit in msg, msg
  assert not os.path.exists(tmp_path / "out")


def test_missing_tensor_names_it_and_the_source(tmp_path):
  tensors = _tiny_hf_blip_tensors()
  del tensors["vision_model.embeddings.patch_embedding.weight"]
  path = tmp_path / "cut.safetensors"
  save_file(tensors, str(path))
  with pytest.raises(SystemExit) as e:
    convert.main(["--source", str(path), "--output", str(tmp_path / "out")])
  assert str(e.value.code) == (
      f"convert: error: {path}: the hf_blip-layout source has no tensor "
      "'vision_model.embeddings.patch_embedding.weight', which gives the "
      "vision geometry (no config.json to read it from)")


def test_refuses_to_overwrite(tmp_path):
  path = tmp_path / "ok.safetensors"
  save_file(_tiny_hf_blip_tensors(), str(path))
  convert.convert(str(path), str(tmp_path / "out"), overrides=HEADS)
  with pytest.raises(FileExistsError, match="already holds"):
    convert.convert(str(path), str(tmp_path / "out"), overrides=HEADS)
