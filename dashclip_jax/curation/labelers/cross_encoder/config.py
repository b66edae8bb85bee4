"""A cross-encoder teacher's geometry and inputs (`TeacherConfig`),
recorded in its directory's teacher.json."""

from __future__ import annotations

import dataclasses
from typing import Any

from dashclip_jax import model as model_lib

KINDS = ("text", "multimodal")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """Geometry and inputs of a teacher (recorded in its directory)."""
  kind: str = "text"
  fields: tuple[str, ...] = ("title",)
  max_length: int = 48        # Tokens of the pair, [CLS] and [SEP]s included.
  query_max_length: int = 16  # The query's share, its [CLS] and [SEP] included.
  text: model_lib.TextConfig = model_lib.TextConfig(cross_attention=False)
  vision: model_lib.VisionConfig | None = None  # Multimodal only.
  dtype: str = "float32"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"teacher kind {self.kind!r} not in {KINDS}")
    if self.kind == "multimodal" and (self.vision is None or
                                      not self.text.cross_attention):
      raise ValueError("a multimodal teacher needs a vision config and a "
                       "text encoder with cross-attention")
    if not 2 <= self.query_max_length < self.max_length:
      raise ValueError(f"query_max_length {self.query_max_length} must be in "
                       f"[2, max_length={self.max_length})")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TeacherConfig":
    d = dict(d, fields=tuple(d["fields"]),
             text=model_lib.TextConfig(**d["text"]))
    if d.get("vision"):
      d["vision"] = model_lib.VisionConfig(**d["vision"])
    return cls(**d)
