"""Model geometry and numerics: the dataclasses checkpoints record, and the
named sizes ("tiny", "small", "base")."""

from __future__ import annotations

import dataclasses
from typing import Any

from dashclip_jax.model import tokenizer as tok

ATTENTION_IMPLEMENTATIONS = ("einsum", "cudnn")


@dataclasses.dataclass(frozen=True)
class TowerSize:
  """The geometry both towers have; the defaults are BLIP base's (ViT-B/16,
  BERT-base)."""
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerSize):
  image_size: int = 224
  patch_size: int = 16
  ln_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerSize):
  vocab_size: int = tok.VOCAB_SIZE
  max_positions: int = 512
  ln_eps: float = 1e-12
  dropout: float = 0.1
  cross_attention: bool = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Geometry and numerics of the whole model (recorded in checkpoints)."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  query: TextConfig = TextConfig(cross_attention=False)
  embed_dim: int = 256
  temp_init: float = 0.07
  query_pooling: str = "cls"  # "cls" or "mean" (e.g. for a MiniLM query tower).
  # Product embedding from the image-grounded text states: "enc" (BLIP's
  # [ENC] position 0) or "mean" (masked mean over the title's positions,
  # how MiniLM-style sentence encoders pool).
  product_pooling: str = "enc"
  # Unimodal text embedding (stage 1's ITC): "cls" (BLIP) or "mean".
  text_pooling: str = "cls"
  dtype: str = "float32"  # Compute dtype.
  param_dtype: str = "float32"
  remat: bool = False
  # Run each tower's layers as one jax.lax.scan over their (stacked)
  # params: the same function, compiled once per tower instead of once per
  # layer (base stage 1: 12+12 unrolled layers take minutes to compile).
  # Params keep their per-layer names; dropout draws differ from unrolled.
  scan_layers: bool = False
  # "einsum": attention as einsums + float32 softmax (any mask, dropout on
  # the probs). "cudnn": jax.nn.dot_product_attention for the calls that
  # have no key mask and no active probs dropout (the ViT; the image-grounded
  # text at eval), through cuDNN's fused (flash) kernel on GPU and XLA on
  # other backends (same function, so a model trained with it runs
  # anywhere); other calls keep the einsum path. Experimental: bench/mfu.py
  # has yet to time it on a GPU.
  attention: str = "einsum"

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"Unknown attention {self.attention!r}; choose from "
                       f"{ATTENTION_IMPLEMENTATIONS}")
    for name, value, known in (("query_pooling", self.query_pooling,
                                ("cls", "mean")),
                               ("product_pooling", self.product_pooling,
                                ("enc", "mean")),
                               ("text_pooling", self.text_pooling,
                                ("cls", "mean"))):
      if value not in known:
        raise ValueError(f"Unknown {name} {value!r}; choose from {known}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown model config keys: {sorted(unknown)}")
    for key, sub in (("vision", VisionConfig), ("text", TextConfig),
                     ("query", TextConfig)):
      if key in d and isinstance(d[key], dict):
        d[key] = sub(**d[key])
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


def _tiny_text(cross: bool) -> TextConfig:
  return TextConfig(width=32, depth=2, heads=2, mlp_dim=64, max_positions=64,
                    cross_attention=cross)


def _small_text(cross: bool) -> TextConfig:
  return TextConfig(width=256, depth=4, heads=4, mlp_dim=1024,
                    max_positions=128, cross_attention=cross)


_SIZES = {
    # CI scale: compiles in seconds on 2 CPU cores.
    "tiny": ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=32, depth=2,
                            heads=2, mlp_dim=64),
        text=_tiny_text(True), query=_tiny_text(False), embed_dim=16),
    # Laptop scale for the demo and the CPU benchmarks.
    "small": ModelConfig(
        vision=VisionConfig(image_size=128, patch_size=16, width=256, depth=4,
                            heads=4, mlp_dim=1024),
        text=_small_text(True), query=_small_text(False), embed_dim=128),
    # BLIP-14M: ViT-B/16 at 224 px, BERT-base, 256-d embeddings.
    "base": ModelConfig(),
}


def model_config(size: str = "tiny", **overrides) -> ModelConfig:
  """Named model geometry ("tiny", "small", "base") with field overrides."""
  if size not in _SIZES:
    raise ValueError(f"Unknown model size {size!r}; choose from {sorted(_SIZES)}")
  return _SIZES[size].replace(**overrides)

