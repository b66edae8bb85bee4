"""The GPT labeler on a tiny GGUF: probabilities by hand, prompts, saved
teacher directories, and the curation job with `teacher.kind="gpt"`."""

import json

import jax
import numpy as np
import pytest

import gpt_helpers

from dashclip_jax.curation import pipeline
from dashclip_jax.curation.labelers import interface as labeler_lib
from dashclip_jax.curation.labelers import wording
from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler
from dashclip_jax.curation.labelers.gpt import lora as lora_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import prompts as prompts_lib
from dashclip_jax.runtime import config_files

pytest.importorskip("gguf")
pytest.importorskip("torch")

FIELDS = ("title", "category")
PRODUCTS = [{"product_id": str(i), "title": t, "category": c}
            for i, (t, c) in enumerate([
                ("Titan Men Black Watch", "Watches"),
                ("Nike Men Blue Running Shoes", "Sports Shoes"),
                ("Red Cotton Kurta", "Kurtas"),
                ("Blue Tshirt", ""),
                ("Puma Women Grey Track Pants", "Track Pants")])]
QUERIES = ["black watch", "blue running shoes", "red kurta for women",
           "tshirts", "black watch"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path, _, _ = gpt_helpers.tiny_gguf(str(tmp_path_factory.mktemp("gguf")))
  loaded, tokenizer = gpt_labeler.base_model(path)
  return path, loaded, tokenizer


def _labeler(tiny, params=None, **kw):
  _, loaded, tokenizer = tiny
  prompts = prompts_lib.Prompts(tokenizer, FIELDS, max_length=kw.pop(
      "max_length", 256))
  return gpt_labeler.GptLabeler(loaded.config, params or loaded.params,
                                prompts, "test", batch_size=4, **kw)


def _full_logits(labeler, text):
  """The model's logits at a prompt's last token, the prompt alone."""
  ids = np.asarray([labeler.prompts.tokenizer.encode([text])[0]], np.int32)
  logits, _ = jax.jit(model_lib.Llama(labeler.config).apply)(
      {"params": jax.device_get(labeler.params)}, ids, np.ones_like(ids))
  return np.asarray(logits[0, -1], np.float64)


def test_label_probs_are_the_softmax_of_the_label_token_logits(tiny):
  labeler = _labeler(tiny)
  assert isinstance(labeler, labeler_lib.Labeler)
  assert labeler.batch_size == 8  # Rounded up to the 8 devices.
  probs = labeler.predict(QUERIES, PRODUCTS)
  assert probs.shape == (5, 3) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
  texts = labeler.prompts.texts(QUERIES, PRODUCTS)
  assert texts[3].endswith("<|im_start|>assistant\n")
  assert "title: Blue Tshirt\nAnswer" in texts[3]  # Empty category left out.
  label_ids = [labeler.prompts.tokenizer.token_id(t) for t in "012"]
  # Two prompts (one compile each) against the model run on each alone.
  ids, logprobs = labeler.next_token_logprobs([texts[0], texts[3]], top_k=4)
  for row, i in enumerate((0, 3)):
    logits = _full_logits(labeler, texts[i])
    want = np.exp(logits[label_ids] - logits[label_ids].max())
    np.testing.assert_allclose(probs[i], want / want.sum(), atol=1e-5)
    full = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    np.testing.assert_array_equal(ids[row], np.argsort(-full)[:4])
    np.testing.assert_allclose(logprobs[row], np.sort(full)[::-1][:4],
                               atol=1e-5)


def test_long_products_are_cut_to_fit(tiny):
  labeler = _labeler(tiny, max_length=200)  # The bare prompt is ~125.
  long_product = dict(PRODUCTS[0], title="Titan Men Black Watch " * 40)
  texts = labeler.prompts.texts(["black watch"] * 2,
                                [long_product, PRODUCTS[1]])
  assert labeler.prompts.truncated == 1
  lengths = [len(t) for t in labeler.prompts.tokenizer.encode(texts)]
  assert 190 < lengths[0] <= 200 and lengths[1] < 190
  assert texts[0].endswith("<|im_start|>assistant\n")
  assert labeler.predict(["black watch"], [long_product]).shape == (1, 3)
  with pytest.raises(ValueError, match=r"prompt 0 has \d+ tokens; need 1 to"):
    labeler.label_probs([texts[0] + " more" * 50])
  with pytest.raises(ValueError, match=r"must use \{query\} and \{product\}"):
    wording.check_template("Query: {query} {title}")


def test_saved_teachers_label_as_their_params_do(tiny, tmp_path):
  path, loaded, _ = tiny
  config = gpt_labeler.GptTeacherConfig(
      gguf=path, gguf_sha256=gpt_labeler.file_sha256(path), fields=FIELDS,
      max_length=256, tuning="lora", lora_rank=2, lora_alpha=4.0)
  lora = lora_lib.init(loaded.params, 2, jax.random.key(1))
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.05, lora)  # b != 0.
  teacher_id = gpt_labeler.save_gpt_teacher(str(tmp_path / "lora"), config,
                                            lora, {"init": path})
  assert teacher_id.startswith("gpt-") and gpt_labeler.is_gpt_teacher(
      str(tmp_path / "lora"))
  got = gpt_labeler.load_gpt_teacher(str(tmp_path / "lora"), batch_size=4)
  assert got.teacher_id == teacher_id
  merged = jax.tree.map(np.asarray, lora_lib.merge(loaded.params, lora, 2.0))
  want = _labeler(tiny, merged).predict(QUERIES, PRODUCTS)
  np.testing.assert_allclose(got.predict(QUERIES, PRODUCTS), want, atol=1e-6)
  assert np.abs(want - _labeler(tiny).predict(QUERIES, PRODUCTS)).max() > 1e-4
  with open(tmp_path / "lora" / "teacher.json") as f:
    meta = json.load(f)
  meta["config"]["gguf_sha256"] = "0" * 64
  with open(tmp_path / "lora" / "teacher.json", "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match="not the GGUF this teacher was"):
    gpt_labeler.load_gpt_teacher(str(tmp_path / "lora"))


def test_curation_job_trains_and_scores_a_gpt_teacher(tiny, tmp_path):
  path, _, _ = tiny
  config = config_files.load_config("configs/curate.py", "tiny", {
      "label.progress": False, "run": "teacher,report",
      "teacher.kind": "gpt", "teacher.gpt.gguf": path,
      "teacher.gpt.max_length": 256, "teacher.gpt.lora_rank": 2,
      "teacher.steps": 2, "teacher.batch_size": 8})
  out = pipeline.run(config, str(tmp_path))
  with open(tmp_path / "teacher" / "teacher.json") as f:
    meta = json.load(f)
  assert meta["config"]["tuning"] == "lora" and meta["teacher_id"].startswith(
      "gpt-")
  assert len(meta["provenance"]["history"]) == 1
  assert meta["provenance"]["history"][0]["step"] == 2
  # Training moved the weights: LoRA starts at b = 0 (the base model), so
  # the saved teacher's projections differ from the base only if it
  # trained; the frozen base (norms, embeddings) is the GGUF's.
  _, loaded, _ = tiny
  trained = gpt_labeler.load_gpt_teacher(str(tmp_path / "teacher"),
                                         batch_size=4)
  moved = jax.tree.map(
      lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
      jax.device_get(trained.params), loaded.params)
  assert moved["blocks"]["attn"]["query"]["kernel"] > 1e-6, moved
  assert moved["blocks"]["attn_norm"]["scale"] == 0.0
  assert moved["embed"]["embedding"] == 0.0, moved
  assert out["teacher"]["validation"]["pairs"] > 0
  assert out["report"]["metrics"]["truth"]["pairs"] > 0
  again = pipeline.run(config, str(tmp_path))  # Reused, not retrained.
  assert again["teacher"]["key"]["teacher_id"] == meta["teacher_id"]
