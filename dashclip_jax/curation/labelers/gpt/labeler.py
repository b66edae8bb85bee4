"""The GPT relevance labeler: a chat prompt -> three label-token logits.

The prompt (`prompts.Prompts`) asks for the label as the assistant's next
token; the label distribution is the softmax over the logits of the tokens
"0", "1", "2" at that position. `GptLabeler` is a curation `Labeler`
(`predict`) and offers the in-process API a server needs, on rendered
prompt texts: `label_probs(prompts)` and `next_token_logprobs(prompts,
top_k)`. Batches are padded to `batch_size` rows (a multiple of the local
devices, over which they are split; params laid out by their logical axes).

A GPT teacher directory is `teacher.json` (the GGUF it starts from with
its sha256, the prompt, the fields, the tuning) + `params.msgpack`: {} for
the zero-shot model, the LoRA tree, or the full fine-tuned params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import flax
import jax
import numpy as np

from dashclip_jax.curation.labelers import wording
from dashclip_jax.curation.labelers.cross_encoder import model as teacher_lib
from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import lora as lora_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import prompts as prompts_lib
from dashclip_jax.curation.labelers.gpt import tokenizer as tokenizer_lib
from dashclip_jax.train import sharding as shard_lib

KIND = "gpt"
TUNINGS = ("none", "lora", "full")


@dataclasses.dataclass(frozen=True)
class GptTeacherConfig:
  """What a GPT teacher is (recorded in its directory)."""
  gguf: str                  # Its path; "": the packaged SmolLM2.
  gguf_sha256: str
  fields: tuple[str, ...] = ("title",)
  prompt: str = wording.DEFAULT_PROMPT
  system: str = wording.DEFAULT_SYSTEM  # "": the template's own.
  max_length: int = 128      # Tokens of a prompt, chat template included.
  tuning: str = "none"
  lora_rank: int = 0
  lora_alpha: float = 16.0
  dtype: str = "float32"
  kind: str = KIND

  def __post_init__(self):
    wording.check_template(self.prompt)
    if self.tuning not in TUNINGS:
      raise ValueError(f"tuning {self.tuning!r} not in {TUNINGS}")
    if (self.tuning == "lora") != (self.lora_rank > 0):
      raise ValueError(f"tuning {self.tuning!r} with lora_rank "
                       f"{self.lora_rank}")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "GptTeacherConfig":
    return cls(**dict(d, fields=tuple(d["fields"])))


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


class GptLabeler:
  """A decoder LM as a `Labeler`: batched, jitted, sharded scoring."""

  def __init__(self, config: model_lib.LlamaConfig, params: Any,
               prompts: prompts_lib.Prompts, teacher_id: str, *,
               batch_size: int = 16, mesh: jax.sharding.Mesh | None = None):
    self.config, self.prompts, self.teacher_id = config, prompts, teacher_id
    self.mesh = mesh or teacher_lib.local_mesh()
    n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    self.batch_size = -(-batch_size // n) * n  # A multiple of the devices.
    self.params = jax.device_put(params, shard_lib.param_shardings(
        model_lib.abstract_boxed(config), self.mesh))
    module, rep = model_lib.Llama(config), shard_lib.replicated(self.mesh)
    label_ids = prompts.label_ids
    self._label_logits = jax.jit(
        lambda p, ids, mask: module.apply(
            {"params": p}, ids, mask, label_ids,
            method=model_lib.Llama.next_token), out_shardings=rep)
    self._next_logprobs = jax.jit(
        lambda p, ids, mask: jax.nn.log_softmax(module.apply(
            {"params": p}, ids, mask, method=model_lib.Llama.next_token)),
        out_shardings=rep)

  # Scoring.

  def _batched(self, fn, prompts: Sequence[str], width: int) -> np.ndarray:
    out, b = [], self.batch_size
    for start in range(0, len(prompts), b):
      ids, mask = self.prompts.encode(prompts[start:start + b])
      real = len(ids)
      if real < b:  # Pad rows repeat the last one: one shape per length.
        ids, mask = (np.concatenate([x, np.repeat(x[-1:], b - real, 0)])
                     for x in (ids, mask))
      sh = shard_lib.batch_sharding(self.mesh, 2)
      out.append(np.asarray(fn(self.params, jax.device_put(ids, sh),
                               jax.device_put(mask, sh)))[:real])
    if not out:
      return np.zeros((0, width), np.float32)
    return np.concatenate(out).astype(np.float32)

  def label_logits(self, prompts: Sequence[str]) -> np.ndarray:
    """float32 (B, 3) logits of the tokens "0", "1", "2" next."""
    return self._batched(self._label_logits, prompts,
                         len(wording.LABEL_TOKENS))

  def label_probs(self, prompts: Sequence[str]) -> np.ndarray:
    """float32 (B, 3) label probabilities of rendered prompts."""
    logits = self.label_logits(prompts)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)

  def next_token_logprobs(self, prompts: Sequence[str], top_k: int = 5
                          ) -> tuple[np.ndarray, np.ndarray]:
    """-> (token ids int32 (B, k), their log-probabilities (B, k)), the
    k most likely next tokens of each prompt, most likely first."""
    logprobs = self._batched(self._next_logprobs, prompts,
                             self.config.vocab_size)
    top = np.argsort(-logprobs, axis=1, kind="stable")[:, :top_k]
    return top.astype(np.int32), np.take_along_axis(logprobs, top, 1)

  def predict(self, queries: Sequence[str],
              products: Sequence[dict[str, Any]]) -> np.ndarray:
    """float32 (B, 3) label probabilities (see curation.labelers.interface)."""
    return self.label_probs(self.prompts.texts(queries, products))


# ---------------------------------------------------------------------------
# Teacher directories.
# ---------------------------------------------------------------------------


def base_model(gguf: str = "", dtype: str = "float32", remat: bool = False
               ) -> tuple[gguf_loader.GgufModel, tokenizer_lib.GptTokenizer]:
  """The GGUF's model (every param filled, else ValueError) and tokenizer."""
  loaded = gguf_loader.load_gguf(gguf, dtype=dtype, remat=remat)
  if loaded.unfilled:
    raise ValueError(f"{loaded.path} lacks {len(loaded.unfilled)} params "
                     f"(first: {loaded.unfilled[0]}): not a complete model")
  return loaded, tokenizer_lib.from_metadata(loaded.metadata)


def prompts_for(config: GptTeacherConfig,
                tokenizer: tokenizer_lib.GptTokenizer) -> prompts_lib.Prompts:
  return prompts_lib.Prompts(tokenizer, config.fields, config.prompt,
                             config.system, config.max_length)


def tuned_params(config: GptTeacherConfig, base: dict, trained: dict) -> dict:
  """The params a teacher labels with: the base, merged LoRA, or full."""
  if config.tuning == "lora":
    scale = config.lora_alpha / config.lora_rank
    return jax.tree.map(np.asarray, lora_lib.merge(base, trained, scale))
  return trained if config.tuning == "full" else base


def save_gpt_teacher(directory: str, config: GptTeacherConfig,
                     trained: dict, provenance: dict[str, Any]) -> str:
  """Writes a GPT teacher directory (params first, teacher.json last and
  atomically, as `cross_encoder.model.save_teacher`) -> teacher_id."""
  os.makedirs(directory, exist_ok=True)
  data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray,
                                                           trained))
  digest = hashlib.sha256(data).hexdigest()
  meta = json.dumps(dataclasses.asdict(config), sort_keys=True)
  teacher_id = f"{KIND}-" + hashlib.sha256(
      (digest + meta).encode()).hexdigest()[:12]
  for name, payload in ((teacher_lib.PARAMS_FILE, data), (
      teacher_lib.CONFIG_FILE, json.dumps(
          {"teacher_id": teacher_id, "params_sha256": digest,
           "config": dataclasses.asdict(config), "provenance": provenance},
          indent=2, default=str).encode())):
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, os.path.join(directory, name))
  return teacher_id


def is_gpt_teacher(directory: str) -> bool:
  path = os.path.join(directory, teacher_lib.CONFIG_FILE)
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    return json.load(f).get("config", {}).get("kind") == KIND


def load_gpt_teacher(directory: str, *, batch_size: int = 16,
                     mesh: jax.sharding.Mesh | None = None) -> GptLabeler:
  """A saved GPT teacher as a labeler (its GGUF must be unchanged)."""
  with open(os.path.join(directory, teacher_lib.CONFIG_FILE)) as f:
    meta = json.load(f)
  config = GptTeacherConfig.from_dict(meta["config"])
  if file_sha256(gguf_loader.resolve(config.gguf)) != config.gguf_sha256:
    raise ValueError(f"{directory}: {config.gguf} is not the GGUF this "
                     "teacher was trained from (sha256 differs)")
  loaded, tokenizer = base_model(config.gguf, config.dtype)
  with open(os.path.join(directory, teacher_lib.PARAMS_FILE), "rb") as f:
    trained = flax.serialization.msgpack_restore(f.read())
  return GptLabeler(
      loaded.config, tuned_params(config, loaded.params, trained),
      prompts_for(config, tokenizer), meta["teacher_id"],
      batch_size=batch_size, mesh=mesh)
