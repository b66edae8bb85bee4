"""The training machinery the trainers (`trainers/`) put together.

  state         TrainState, the born-sharded init and `jit_step`
  steps         the stage-1 / stage-2 train steps (+ StepConfig)
  grad_cache    the contrastive gradient cache for accumulation
  itm_pairs     ITM pair building (hard negatives) for stage 1
  optim         optimizer, schedule and freeze masks
  sharding      mesh, logical-axis rules, param and batch shardings
  checkpoints   training checkpoints: retention, resume, config check
  metric_writer metrics.jsonl / TensorBoard writer
  flops         analytic model FLOPs (for MFU)
"""
