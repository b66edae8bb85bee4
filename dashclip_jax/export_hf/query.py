"""OUT/query: the query tower (`query` + `query_proj`) as a
sentence-transformers directory.

Modules: Transformer (a BertModel, the converter's HF-BERT table run
backwards; its tokenizer is ours with pre_caption, hf_tokenizer.py) ->
Pooling (`query_pooling`: cls or mean) -> Dense (`query_proj`, no
activation; left out when it is the identity) -> Normalize. Our tower has
no token types: BERT's one-row token-type table is zeros, which is exact
(the converter folds row 0 into the positions the other way). BERT's
[CLS] pooler is not ours and not used by the pipeline: zeros, so that
BertModel loads without missing keys (its pooler_output is then 0).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch
import transformers

from dashclip_jax.convert import rename
from dashclip_jax.export_hf.errors import ExportError
from dashclip_jax.export_hf import weights
from dashclip_jax import model as model_lib
from dashclip_jax.model import tokenizer as tok

_POOLER = ("pooler.dense.weight", "pooler.dense.bias")


def bert_config(tower: model_lib.TextConfig) -> transformers.BertConfig:
  return transformers.BertConfig(
      vocab_size=tower.vocab_size, hidden_size=tower.width,
      num_hidden_layers=tower.depth, num_attention_heads=tower.heads,
      intermediate_size=tower.mlp_dim, hidden_act="gelu",
      hidden_dropout_prob=tower.dropout,
      attention_probs_dropout_prob=tower.dropout,
      max_position_embeddings=tower.max_positions, type_vocab_size=1,
      layer_norm_eps=tower.ln_eps, pad_token_id=tok.PAD_ID)


def bert_model(config: model_lib.ModelConfig, params: dict
               ) -> transformers.BertModel:
  """The query tower as a BertModel (every tensor set, strictly)."""
  model = transformers.BertModel(bert_config(config.query))
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k not in _POOLER}
  tensors = weights.torch_tensors(
      shapes, rename.hf_bert(("query",)), params, config, exported=("query",),
      constants={("token_type",): 0.0})
  state = {k: torch.from_numpy(v) for k, v in tensors.items()}
  width = config.query.width
  state.update({_POOLER[0]: torch.zeros(width, width),
                _POOLER[1]: torch.zeros(width)})
  model.load_state_dict(state, strict=True)
  return model.eval()


def is_identity(dense: dict) -> bool:
  kernel, bias = np.asarray(dense["kernel"]), np.asarray(dense["bias"])
  return (kernel.shape[0] == kernel.shape[1] and
          np.array_equal(kernel, np.eye(kernel.shape[0], dtype=kernel.dtype))
          and not bias.any())


def write_query(out_dir: str, config: model_lib.ModelConfig, params: dict,
                tokenizer: transformers.PreTrainedTokenizerFast
                ) -> dict[str, Any]:
  """Writes `out_dir` (OUT/query) -> its part of the export report."""
  try:
    import sentence_transformers as st  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError("the query tower is written as a sentence-transformers"
                      " model: pip install sentence-transformers") from e
  modules = st.sentence_transformer.modules
  proj = params["query_proj"]
  width, embed = np.asarray(proj["kernel"]).shape
  identity = is_identity(proj)
  with tempfile.TemporaryDirectory() as bert_dir:
    bert_model(config, params).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    pipeline = [modules.Transformer(bert_dir,
                                    max_seq_length=tokenizer.model_max_length),
                modules.Pooling(width, pooling_mode=config.query_pooling)]
    if not identity:
      pipeline.append(modules.Dense(
          width, embed, bias=True, activation_function=torch.nn.Identity(),
          init_weight=torch.from_numpy(
              np.asarray(proj["kernel"], np.float32).T.copy()),
          init_bias=torch.from_numpy(np.asarray(proj["bias"], np.float32))))
    pipeline.append(modules.Normalize())
    model = st.SentenceTransformer(modules=pipeline, device="cpu")
    model.save(out_dir, create_model_card=False)
  return dict(files=sorted(os.listdir(out_dir)),
              modules=[type(m).__name__ for m in pipeline],
              pooling=config.query_pooling, projection=(
                  "identity (no Dense module)" if identity else
                  f"Dense {width} -> {embed}, bias, no activation"),
              max_seq_length=tokenizer.model_max_length)
