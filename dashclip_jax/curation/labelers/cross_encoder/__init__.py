"""Cross-encoder teachers (`teacher.kind` "text" or "multimodal").

  config     TeacherConfig: the geometry and inputs (teacher.json)
  model      the teacher's params, forward pass, and saved directories
  inputs     a pair's tokens and the product's pixels
  train      the sharded jit train step and loop on seed labels
  reference  the PyTorch BertForSequenceClassification it is checked with
"""
