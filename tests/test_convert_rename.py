"""The renaming tables: real BLIP / HF names (BLIP_REFERENCE §5a/§5b) go to
the expected param paths; names no row knows are left unused."""

import numpy as np
import pytest

from dashclip_jax import model as model_lib
from dashclip_jax.convert import errors
from dashclip_jax.convert import rename

IGNORED = [None]  # A known tensor, deliberately not converted.
UNKNOWN = []  # No row: reported as unused.
QKV = ("query", "key", "value")

BLIP_ORIGINAL = {
    "visual_encoder.cls_token": ["img/cls_token"],
    "visual_encoder.pos_embed": ["img/pos_embed"],
    "visual_encoder.patch_embed.proj.weight": ["img/patch_embed/kernel"],
    "visual_encoder.blocks.11.norm1.weight": ["img/block_11/norm1/scale"],
    "visual_encoder.blocks.3.attn.qkv.bias": [
        f"img/block_3/attn/{p}/bias" for p in QKV],
    "visual_encoder.blocks.0.attn.proj.weight": ["img/block_0/attn/out/kernel"],
    "visual_encoder.blocks.0.mlp.fc2.bias": ["img/block_0/mlp/fc2/bias"],
    "visual_encoder.norm.bias": ["img/norm/bias"],
    "text_encoder.embeddings.word_embeddings.weight": [
        "txt/word_embed/embedding"],
    "text_encoder.embeddings.LayerNorm.weight": ["txt/embed_norm/scale"],
    "text_encoder.encoder.layer.7.attention.self.key.weight": [
        "txt/layer_7/self_attn/key/kernel"],
    "text_encoder.encoder.layer.0.attention.output.LayerNorm.bias": [
        "txt/layer_0/self_attn_norm/bias"],
    "text_encoder.encoder.layer.0.crossattention.self.value.bias": [
        "txt/layer_0/cross_attn/value/bias"],
    "text_encoder.encoder.layer.0.crossattention.output.dense.weight": [
        "txt/layer_0/cross_attn/out/kernel"],
    "text_encoder.encoder.layer.0.intermediate.dense.weight": [
        "txt/layer_0/mlp/fc1/kernel"],
    "text_encoder.encoder.layer.0.output.dense.weight": [
        "txt/layer_0/mlp/fc2/kernel"],
    "text_encoder.encoder.layer.0.output.LayerNorm.weight": [
        "txt/layer_0/mlp_norm/scale"],
    "vision_proj.weight": ["vision_proj/kernel"],
    "itm_head.bias": ["itm_head/bias"],
    "temp": ["temp"],
    "image_queue": ["queues/image_queue"],
    "queue_ptr": ["queues/queue_ptr"],
    "ptr_queue": ["queues/queue_ptr"],
    "idx_queue": ["queues/idx_queue"],
    "visual_encoder_m.blocks.2.mlp.fc1.weight": [
        "momentum/img/block_2/mlp/fc1/kernel"],
    "text_encoder_m.encoder.layer.1.attention.self.query.bias": [
        "momentum/txt/layer_1/self_attn/query/bias"],
    "text_proj_m.weight": ["momentum/text_proj/kernel"],
    "text_encoder.embeddings.position_ids": IGNORED,
    "text_decoder.bert.encoder.layer.0.output.dense.weight": IGNORED,
    "text_decoder.cls.predictions.bias": IGNORED,
    "itm_head_m.weight": UNKNOWN,
    "visual_encoder.blocks.0.attn.qkv.scale": UNKNOWN,
    "text_encoder.embeddings.token_type_embeddings.weight": UNKNOWN,
}

HF_BLIP = {
    "vision_model.embeddings.class_embedding": ["img/cls_token"],
    "vision_model.embeddings.position_embedding": ["img/pos_embed"],
    "vision_model.embeddings.patch_embedding.bias": ["img/patch_embed/bias"],
    "vision_model.encoder.layers.5.layer_norm2.bias": [
        "img/block_5/norm2/bias"],
    "vision_model.encoder.layers.0.self_attn.qkv.weight": [
        f"img/block_0/attn/{p}/kernel" for p in QKV],
    "vision_model.encoder.layers.0.self_attn.projection.bias": [
        "img/block_0/attn/out/bias"],
    "vision_model.encoder.layers.0.mlp.fc1.weight": [
        "img/block_0/mlp/fc1/kernel"],
    "vision_model.post_layernorm.weight": ["img/norm/scale"],
    "text_encoder.encoder.layer.2.crossattention.self.query.weight": [
        "txt/layer_2/cross_attn/query/kernel"],
    "text_model.embeddings.position_embeddings.weight": ["txt/pos_embed"],
    "text_proj.bias": ["text_proj/bias"],
    "visual_projection.weight": ["vision_proj/kernel"],  # BlipModel.
    "logit_scale": ["temp"],
    "text_encoder.embeddings.position_ids": IGNORED,
    "vision_model.encoder.layers.0.self_attn.qkv.extra": UNKNOWN,
    "text_model.pooler.dense.weight": UNKNOWN,
    "temp": UNKNOWN,
}

HF_BERT = {
    "embeddings.word_embeddings.weight": [
        "txt/word_embed/embedding", "query/word_embed/embedding"],
    "bert.encoder.layer.4.attention.output.dense.bias": [
        "txt/layer_4/self_attn/out/bias", "query/layer_4/self_attn/out/bias"],
    "bert.embeddings.token_type_embeddings.weight": ["token_type"],
    "embeddings.position_ids": IGNORED,
    "pooler.dense.weight": UNKNOWN,
    "cls.predictions.bias": UNKNOWN,
}


def _targets(table, name):
  return [target for target, _ in rename.targets_of(table, name)]


@pytest.mark.parametrize("table, expected", [
    (rename.BLIP_ORIGINAL, BLIP_ORIGINAL),
    (rename.HF_BLIP, HF_BLIP),
    (rename.hf_bert(("txt", "query")), HF_BERT),
], ids=["blip_original", "hf_blip", "hf_bert"])
def test_table_maps_real_names(table, expected):
  got = {name: _targets(table, name) for name in expected}
  assert got == expected


def test_hf_bert_fills_only_the_named_towers():
  assert _targets(rename.hf_bert(("query",)),
                  "encoder.layer.0.output.LayerNorm.bias") == [
                      "query/layer_0/mlp_norm/bias"]


def _config():
  return model_lib.model_config("tiny")  # Width 32, 2 heads of 16.


def test_apply_table_transforms_and_reports():
  w = 32
  qkv = np.arange(3 * w * w, dtype=np.float32).reshape(3 * w, w)
  tensors = {"visual_encoder.blocks.0.attn.qkv.weight": qkv,
             "visual_encoder.blocks.0.mlp.fc1.weight": np.ones((64, w)),
             "text_encoder.embeddings.position_ids": np.arange(8)[None],
             "some.extra.tensor": np.zeros(3)}
  targets, used, ignored = rename.apply_table(tensors, rename.BLIP_ORIGINAL,
                                              _config())
  block = ("img", "block_0")
  for i, part in enumerate(QKV):  # Rows [q | k | v], Wᵀ per head.
    np.testing.assert_array_equal(
        targets[block + ("attn", part, "kernel")],
        qkv[i * w:(i + 1) * w].T.reshape(w, 2, 16))
  assert targets[block + ("mlp", "fc1", "kernel")].shape == (w, 64)
  assert used == {"visual_encoder.blocks.0.attn.qkv.weight",
                  "visual_encoder.blocks.0.mlp.fc1.weight"}
  assert ignored == {"text_encoder.embeddings.position_ids"}
  assert set(tensors) - used - ignored == {"some.extra.tensor"}


def test_fused_qkv_of_the_wrong_size_names_the_tensor():
  bad = {"vision_model.encoder.layers.0.self_attn.qkv.weight":
         np.zeros((64, 32), np.float32)}
  with pytest.raises(errors.ConversionError,
                     match=r"^vision_model\.encoder\.layers\.0\.self_attn\."
                     r"qkv\.weight: vision qkv: shape \(64, 32\), expected "
                     "first dim 96$"):
    rename.apply_table(bad, rename.HF_BLIP, _config())
