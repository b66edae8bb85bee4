"""The teacher step for `teacher.kind="gpt"`: a GGUF decoder LM fine-tuned
on the seed (LoRA at `teacher.gpt.lora_rank` > 0, else full), or kept as
it is (`teacher.steps=0`: the zero-shot labeler), written to the teacher
directory the other steps load (`context.load_teacher`)."""

from __future__ import annotations

import logging

import jax

from dashclip_jax.curation.labelers import wording
from dashclip_jax.curation.labelers.cross_encoder import train as teacher_train
from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler
from dashclip_jax.curation.labelers.gpt import train as gpt_train
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.runtime.config_files import ConfigError
from dashclip_jax.train import sharding as shard_lib

log = logging.getLogger("dashclip_jax")


def teacher_config(ctx: context_lib.Context, gguf_path: str
                   ) -> gpt_labeler.GptTeacherConfig:
  t, g = ctx.config.teacher, ctx.config.teacher.gpt
  tuning = "none" if t.steps == 0 else ("lora" if g.lora_rank > 0 else
                                        "full")
  try:
    return gpt_labeler.GptTeacherConfig(
        gguf=g.gguf, gguf_sha256=gpt_labeler.file_sha256(gguf_path),
        fields=ctx.fields, prompt=g.prompt or wording.DEFAULT_PROMPT,
        system=g.system, max_length=g.max_length, tuning=tuning,
        lora_rank=g.lora_rank if tuning == "lora" else 0,
        lora_alpha=g.lora_alpha, dtype=g.dtype)
  except ValueError as e:
    raise ConfigError(f"config.teacher.gpt: {e}") from None


def train_gpt_teacher(ctx: context_lib.Context, directory: str,
                      settings: dict) -> None:
  t, g = ctx.config.teacher, ctx.config.teacher.gpt
  try:
    loaded, tokenizer = gpt_labeler.base_model(g.gguf, g.dtype, g.remat)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config.teacher.gpt.gguf: {e}") from None
  config = teacher_config(ctx, loaded.path)
  prompts = gpt_labeler.prompts_for(config, tokenizer)
  queries, products, labels = context_lib.pairs_of(ctx.teacher_train,
                                                   ctx.catalog)
  ids, mask = prompts.encode(prompts.texts(queries, products))
  trained, history = {}, []
  if config.tuning != "none":
    mesh = shard_lib.make_mesh([tuple(a) for a in ctx.config.mesh])
    log.info("teacher: gpt (%s) from %s on mesh %s, %d pairs of %d tokens "
             "(%d cut to fit), %d steps of %d", config.tuning, loaded.path,
             dict(mesh.shape), len(labels), ids.shape[1], prompts.truncated,
             t.steps, t.batch_size)
    trained, history = gpt_train.train(
        loaded.config, loaded.params, {"ids": ids, "mask": mask}, labels,
        prompts.label_ids, teacher_train.TrainSettings(
            steps=t.steps, batch_size=t.batch_size, lr=t.lr,
            warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
            log_every=t.log_every, seed=ctx.config.seed,
            fast_compile=t.fast_compile),
        mesh, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
  if jax.process_index() == 0:
    teacher_id = gpt_labeler.save_gpt_teacher(directory, config, trained, {
        "init": loaded.path, "settings": settings, "history": history,
        "train_pairs": len(labels), "prompt_tokens": int(ids.shape[1]),
        "truncated_prompts": prompts.truncated, "gguf": loaded.summary()})
    log.info("teacher: wrote %s (%s)", directory, teacher_id)
  context_lib.sync("teacher")
