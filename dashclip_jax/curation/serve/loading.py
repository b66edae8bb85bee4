"""--model of the labeling server -> the GPT model it serves: a .gguf file,
a directory with one, a saved GPT teacher (LoRA merged), or the packaged
SmolLM2 ("default" or "")."""

from __future__ import annotations

import glob
import os
from typing import Any

import jax

from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler


def load_model(spec: str) -> tuple[str, Any, dict, Any]:
  """DIR -> (model id, LlamaConfig, params, GptTokenizer); a missing or
  unusable DIR -> ValueError naming it."""
  spec = spec.strip()
  if spec not in ("", "default") and not os.path.exists(spec):
    raise ValueError(f"--model={spec}: no such file or directory")
  if os.path.isdir(spec) and gpt_labeler.is_gpt_teacher(spec):
    teacher = gpt_labeler.load_gpt_teacher(spec)
    return (teacher.teacher_id, teacher.config,
            jax.device_get(teacher.params),
            teacher.prompts.tokenizer)
  if spec in ("", "default"):
    path = gguf_loader.resolve("")
  elif os.path.isdir(spec):
    found = sorted(glob.glob(os.path.join(spec, "*.gguf")))
    if len(found) != 1:
      raise ValueError(f"--model={spec}: a directory needs exactly one .gguf "
                       f"file or a GPT teacher's teacher.json; it has "
                       f"{len(found)} .gguf files")
    path = found[0]
  else:
    path = spec
  loaded, tokenizer = gpt_labeler.base_model(path)
  return (os.path.splitext(os.path.basename(path))[0], loaded.config,
          loaded.params, tokenizer)
