"""The Hugging Face / PyTorch export reproduces `dashclip_jax.load`.

Tiny models with every param perturbed at random (LayerNorms and biases
included: a wrongly mapped or dropped one would change the outputs) are
exported, then loaded in transformers, sentence-transformers and the
shipped product_embedding.py, and compared with dashclip_jax.load's
encoders (export_hf.roundtrip) on the same pixels and token ids, and on raw
images and text through the exported processor (CPU, float32, 1e-5).
"""

import dataclasses
import json
import os

import jax
import numpy as np
import PIL.Image
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")

import dashclip_jax  # pylint: disable=g-import-not-at-top
import helpers
from dashclip_jax import export_hf
from dashclip_jax.export_hf import roundtrip
from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib
from dashclip_jax.model import tokenizer as tok

TOL = 1e-5
TEMP = 0.05
TITLES = ["red cotton shirt", "Men's T-Shirt (Navy)!!", "steel watch: 40mm;"
          " water-resistant ~ new", "black leather belt for men and women"]
# Texts where BLIP's caption cleaning changes the ids, and where it does not:
# punctuation it removes, and the 30-word cap (the 4th: 40 one-token words,
# the cap cuts it to 30 before the 35-token cut).
QUERIES = ["shirt for men", "Shirt... for MEN!", "watch (steel) #1: ~new~",
           " ".join(["red"] * 40), " ".join(["blue"] * 25) + " jeans.",
           "a t-shirt, size: XL"]


def _perturbed_params(config, seed):
  """init_params + N(0, 0.05) on every array; temp = TEMP."""
  params = model_lib.unbox(model_lib.init_params(config, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(np.shape(x))
                 ).astype(np.float32), params)
  params["temp"] = np.float32(TEMP)
  return params


def _write_run(root, config, params, name):
  """A training workdir the way the main job leaves it: config.json,
  models/7 and an evaluation naming that model."""
  workdir = root / name
  model_dir = workdir / "models" / "7"
  model_dir_lib.save_model_dir(
      str(model_dir), params, config,
      provenance=dict(stage="stage2", workdir=str(workdir), init="test"))
  (workdir / "config.json").write_text(json.dumps(dict(
      stage="stage2", train=dict(total_steps=7, batch_size=4), init={},
      data=dict(source="csv", catalog_path="/data/catalog.csv",
                relevance_train_path="/data/qrels_train.csv"))))
  (workdir / "eval").mkdir()
  (workdir / "eval" / "metrics.json").write_text(json.dumps(
      {"dashclip": {"ndcg@10": 0.8125, "mrr": 0.75},
       "bm25": {"ndcg@10": 0.5, "mrr": 0.4375}}))
  (workdir / "eval" / "report.md").write_text(
      f"# DashCLIP evaluation\n\n- Checkpoint: `{model_dir}`\n")
  return str(workdir), str(model_dir)


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
  """[CLS]/[ENC] poolings, a non-identity query_proj; exported through
  export() from its training workdir."""
  config = model_lib.model_config("tiny")
  root = tmp_path_factory.mktemp("export_cls")
  workdir, model_dir = _write_run(root, config, _perturbed_params(config, 1),
                                  "run")
  report = export_hf.export(workdir, str(root / "out"))
  return dict(model_dir=model_dir, out=str(root / "out"), report=report,
              ours=dashclip_jax.load(model_dir, batch_size=4))


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory):
  """Mean poolings everywhere (the MiniLM init's) and an identity
  query_proj; exported through the CLI."""
  config = helpers.one_layer_tiny_config().replace(
      query_pooling="mean", product_pooling="mean", text_pooling="mean",
      embed_dim=32)
  params = _perturbed_params(config, 2)
  params["query_proj"] = {"kernel": np.eye(32, dtype=np.float32),
                          "bias": np.zeros(32, np.float32)}
  root = tmp_path_factory.mktemp("export_mean")
  model_dir = str(root / "model")
  model_dir_lib.save_model_dir(model_dir, params, config)
  export_hf.main(["--model", model_dir, "--output", str(root / "out")])
  return dict(model_dir=model_dir, out=str(root / "out"),
              ours=dashclip_jax.load(model_dir, batch_size=4))


def _images(n):
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (30 + 9 * i, 40, 3), dtype=np.uint8)
          for i in range(n)]


def _check_blip_and_product(ours, out, texts):
  """Every BLIP output and the product embedding against dashclip's, on
  our pixels and ids (the processor is checked on its own below)."""
  images = _images(len(texts))
  got = roundtrip.torch_outputs(out, roundtrip.encoder_inputs(
      ours, images, texts))
  want = roundtrip.dashclip_outputs(ours, images, texts)
  errors = roundtrip.errors(got, want)
  assert all(e < TOL for e in errors.values()), errors
  assert np.ptp(want["itm"]) > 1e-3  # Not a constant: the weights matter.
  blip = roundtrip.load_blip(out)
  np.testing.assert_allclose(
      np.exp(-blip.config.logit_scale_init_value), TEMP, rtol=1e-6)
  return got, want


def test_blip_and_product_equal_dashclip(cls_model):
  out = cls_model["out"]
  got, want = _check_blip_and_product(cls_model["ours"], out, TITLES)
  # text_pooling "cls": HF's own image-text similarity is dashclip's.
  similarity = want["image"] @ want["text"].T
  assert roundtrip.max_abs_error(got["hf_similarity"], similarity) < TOL


def test_mean_poolings_equal_dashclip(mean_model):
  out = mean_model["out"]
  got, want = _check_blip_and_product(mean_model["ours"], out, TITLES)
  # HF's forward pools [CLS]: with text_pooling "mean" it is not dashclip's
  # similarity (the note and the card say so; text_embedding is).
  similarity = want["image"] @ want["text"].T
  assert roundtrip.max_abs_error(got["hf_similarity"], similarity) > 1e-3
  notes = json.load(open(os.path.join(out, "export_hf.json")))["notes"]
  assert any("text_pooling is 'mean'" in n for n in notes), notes


def test_processor_path_equals_dashclip(cls_model):
  """The user's path: raw PIL images and raw text through the exported
  BlipProcessor (padded to the longest text, not to 35)."""
  images = [PIL.Image.fromarray(im) for im in _images(len(QUERIES))]
  out, ours = cls_model["out"], cls_model["ours"]
  inputs = roundtrip.processor_inputs(out, images, QUERIES)
  assert inputs[1].shape[1] < 35  # The padding differs from ours.
  errors = roundtrip.errors(roundtrip.torch_outputs(out, inputs),
                            roundtrip.dashclip_outputs(ours, images, QUERIES))
  assert all(e < TOL for e in errors.values()), errors


def _query_check(ours, out):
  query = roundtrip.load_query(out)
  got = query.encode(QUERIES, convert_to_numpy=True)
  assert roundtrip.max_abs_error(got, ours.encode_query(QUERIES)) < TOL
  return query


def test_query_tower_in_sentence_transformers(cls_model):
  out = cls_model["out"]
  query = _query_check(cls_model["ours"], out)
  names = [type(m).__name__ for m in query]
  assert names == ["Transformer", "Pooling", "Dense", "Normalize"], names
  assert query.max_seq_length == 35
  bert, info = transformers.BertModel.from_pretrained(
      os.path.join(out, "query"), output_loading_info=True)
  assert not any(info.values()), info


def test_identity_query_proj_has_no_dense(mean_model):
  query = _query_check(mean_model["ours"], mean_model["out"])
  assert [type(m).__name__ for m in query] == [
      "Transformer", "Pooling", "Normalize"]
  assert query[1].get_config_dict()["pooling_mode"] == "mean"


def test_overwrite_replaces_an_earlier_export(mean_model, capsys):
  out = mean_model["out"]
  stale = os.path.join(out, "stale.txt")
  with open(stale, "w") as f:
    f.write("from before")
  export_hf.main(["--model", mean_model["model_dir"], "--output", out,
                  "--overwrite"])
  err = capsys.readouterr().err
  assert "export_hf: note: text_pooling is 'mean'" in err, err
  assert f"export_hf: wrote {out} from {mean_model['model_dir']}" in err
  assert not os.path.exists(stale) and not os.path.exists(out + ".partial")
  _query_check(mean_model["ours"], out)


def test_exported_tokenizers_give_our_ids(cls_model):
  """Raw text through the exported tokenizer/processor = pre_caption + our
  tokenizer, punctuation, word cap and the 35-token cut included."""
  ours = cls_model["ours"]
  texts = QUERIES + TITLES + [" ".join(f"w{i}" for i in range(30))]
  ids, mask = ours.tokenize(texts)
  processor = transformers.BlipProcessor.from_pretrained(
      os.path.join(cls_model["out"], "blip"))
  batch = processor(text=texts, padding="max_length", max_length=35,
                    truncation=True, return_tensors="np")
  np.testing.assert_array_equal(batch["input_ids"], ids)
  np.testing.assert_array_equal(batch["attention_mask"], mask)
  # A plain BERT tokenizer does differ on these texts (why the cleaning is
  # in the exported one).
  plain = transformers.BertTokenizer(vocab=tok.packaged_vocab_file())
  plain_ids = plain(QUERIES[1])["input_ids"]
  assert plain_ids != list(ids[1][:mask[1].sum()])
  # The image processor is our eval transform.
  images = _images(3)
  pixels = processor(images=images, return_tensors="np")["pixel_values"]
  assert roundtrip.max_abs_error(pixels.transpose(0, 2, 3, 1),
                                 ours.preprocess_images(images)) < TOL


def test_model_card_and_report(cls_model):
  out, report = cls_model["out"], cls_model["report"]
  card = open(os.path.join(out, "README.md")).read()
  assert "| dashclip | 0.8125 | 0.7500 |" in card, card
  assert "| bm25 | 0.5000 | 0.4375 |" in card
  assert "7 steps at batch 4" in card and "/data/qrels_train.csv" in card
  assert 'SentenceTransformer("OUT/query")' in card
  assert "ProductEmbedding.from_export" in card
  assert report["model_dir"] == os.path.abspath(cls_model["model_dir"])
  assert json.load(open(os.path.join(out, "export_hf.json"))) == report
  assert sorted(os.listdir(out)) == [
      "README.md", "blip", "export_hf.json", "product_embedding.py",
      "product_proj.safetensors", "query"]


def _cli_error(args):
  with pytest.raises(SystemExit) as exit_info:
    export_hf.main(args)
  message = str(exit_info.value.code)
  assert message.startswith("export_hf: error: ") and "\n" not in message
  return message


def test_error_not_a_dashclip_model(cls_model, tmp_path):
  msg = _cli_error(["--model", os.path.join(cls_model["out"], "blip"),
                            "--output", str(tmp_path / "o")])
  assert "not a dashclip model directory" in msg and "blip" in msg
  assert not os.path.exists(tmp_path / "o")


def test_error_existing_output_without_overwrite(cls_model, tmp_path):
  model_dir, out = cls_model["model_dir"], cls_model["out"]
  msg = _cli_error(["--model", model_dir, "--output", out])
  assert f"output {out} exists" in msg and "--overwrite" in msg
  other = tmp_path / "notes"
  other.mkdir()
  (other / "todo.txt").write_text("keep me")
  msg = _cli_error(["--model", model_dir, "--output", str(other),
                    "--overwrite"])
  assert "not an earlier export" in msg
  assert (other / "todo.txt").read_text() == "keep me"


def test_error_geometry_hf_cannot_hold(tmp_path):
  tiny = helpers.one_layer_tiny_config()  # 32 wide: 3 heads of 10.
  config = tiny.replace(vision=dataclasses.replace(tiny.vision, heads=3))
  model_dir = str(tmp_path / "model")
  shapes = model_lib.abstract_params(config)  # Refused before it is read.
  model_dir_lib.save_model_dir(
      model_dir, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes),
      config)
  msg = _cli_error(["--model", model_dir, "--output", str(tmp_path / "o")])
  assert "vision tower: width 32 is not a multiple of its 3 heads" in msg
  assert not os.path.exists(tmp_path / "o")
