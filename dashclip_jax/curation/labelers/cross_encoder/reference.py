"""The text teacher's function in transformers (torch, CPU): the reference
that the parity test and bench/teacher_throughput.py compare
`model.CrossEncoder` with.

A "text" teacher started from MiniLM-L6 ("minilm") is a BERT encoder, a
[CLS] tanh pooler and a 3-way head: `BertForSequenceClassification` with
num_labels=3, once the teacher's own pooler and head are copied in (the
encoder comes from the same weights folder). torch and transformers are
imported on use: the package does not need them otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dashclip_jax.convert import pretrained
from dashclip_jax.curation.labelers import interface as labeler_lib


def torch_cross_encoder(params: dict[str, Any], model_dir: str | None = None
                        ) -> Any:
  """-> transformers.BertForSequenceClassification (eval mode) from
  `model_dir` (default: the MiniLM-L6 wheel's,
  `convert.pretrained.minilm_dir`) with
  the teacher's `params["pooler"]` and `params["classifier"]` copied in."""
  # torch, transformers: optional (the [torch] extra), the reference only.
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.BertForSequenceClassification.from_pretrained(
      model_dir or pretrained.minilm_dir(), num_labels=labeler_lib.NUM_LABELS,
      local_files_only=True).eval()
  with torch.no_grad():
    for ours, theirs in ((params["pooler"], model.bert.pooler.dense),
                         (params["classifier"], model.classifier)):
      # Flax kernels are (in, out); torch weights (out, in).
      theirs.weight.copy_(torch.from_numpy(np.array(ours["kernel"]).T.copy()))
      theirs.bias.copy_(torch.from_numpy(np.array(ours["bias"])))
  return model


def torch_logits(model: Any, ids: np.ndarray, mask: np.ndarray
                 ) -> np.ndarray:
  """ids, mask int (B, L) (`inputs.pair_tokens`) -> float32 logits
  (B, 3) of `torch_cross_encoder`'s model; segment ids all 0, as the
  teacher has no segments."""
  import torch  # pylint: disable=g-import-not-at-top  # Optional: as above.
  with torch.inference_mode():
    logits = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(mask.astype(np.int64)),
                   token_type_ids=torch.zeros(ids.shape, dtype=torch.long)
                   ).logits
  return logits.numpy().astype(np.float32)
