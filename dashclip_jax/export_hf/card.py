"""OUT/README.md: the model card (what was exported, training data, config,
evaluation, and how to load each part).

Training data and evaluation come from the run that trained the model, when
its files are still there (`run_info`: the run's or its main job's
`config.json`, and the evaluation's `metrics.json` that names this model).
"""

from __future__ import annotations

import json
import os
from typing import Any

from dashclip_jax import model as model_lib
from dashclip_jax.evaluation import report as eval_report
from dashclip_jax.runtime import run_info

_DATA_KEYS = ("source", "path", "catalog_path", "relevance_train_path",
              "relevance_test_path", "tfds_dir", "text_max_length",
              "query_max_length", "label1_policy", "num_negatives")


def _metrics_table(results: dict[str, dict]) -> list[str]:
  cols = [k for k in eval_report.METRIC_KEYS
          if any(k in m for m in results.values())]
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| system | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(fmt(m.get(k, "–")) for k in cols)
            + " |" for name, m in results.items()]
  return lines


def _training_lines(train_cfg: dict[str, Any] | None, workdir: str | None,
                    meta: dict[str, Any]) -> list[str]:
  prov = meta.get("provenance", {})
  lines = [f"- Provenance: {json.dumps(prov)}" if prov else
           "- Provenance: none recorded (a converted checkpoint?)"]
  if train_cfg is None:
    return lines + ["- Training config: not found (no config.json in the "
                    "run's workdir)."]
  data = train_cfg.get("data", {})
  shown = {k: data[k] for k in _DATA_KEYS if data.get(k) not in (None, "")}
  if data.get("source") == "synthetic":
    shown["synthetic"] = data.get("synthetic")
  train = train_cfg.get("train", {})
  lines += [f"- Config: `{os.path.join(workdir, run_info.CONFIG_FILE)}`",
            f"- Run: `{workdir}` (stage {train_cfg.get('stage')}, "
            f"{train.get('total_steps')} steps at batch "
            f"{train.get('batch_size')}; init "
            f"`{json.dumps(train_cfg.get('init'))}`)",
            "- Data (`config.data`):", "", "```json",
            json.dumps(shown, indent=2), "```"]
  return lines


def usage_lines(config: model_lib.ModelConfig, max_length: int,
                max_words: int) -> list[str]:
  e = config.embed_dim
  same = ("the same" if config.text_pooling == "cls" else
          "NOT the same: use text_embedding")
  return f"""## Usage

Query embeddings (sentence-transformers; equal to
`dashclip_jax.load(DIR).encode_query(texts)`):

```python
from sentence_transformers import SentenceTransformer
query = SentenceTransformer("OUT/query")
emb = query.encode(["men navy blue shirt"])   # (B, {e}), unit norm
```

Image and text embeddings and ITM (transformers; `product_embedding.py`
holds the three functions, torch only):

```python
import sys, torch, transformers
sys.path.insert(0, "OUT")
import product_embedding as pe
blip = transformers.BlipForImageTextRetrieval.from_pretrained("OUT/blip").eval()
processor = transformers.BlipProcessor.from_pretrained("OUT/blip")
batch = processor(images=images, text=texts, padding=True, truncation=True,
                  return_tensors="pt")
with torch.no_grad():
  image = pe.image_embedding(blip, batch["pixel_values"])
  text = pe.text_embedding(blip, batch["input_ids"], batch["attention_mask"])
  itm = pe.itm_probability(blip, batch["pixel_values"], batch["input_ids"],
                           batch["attention_mask"])
```

Product embeddings (the catalog side of query -> product retrieval):

```python
embed = pe.ProductEmbedding.from_export("OUT")
with torch.no_grad():
  products = embed(batch["pixel_values"], batch["input_ids"],
                   batch["attention_mask"])   # (B, {e}), unit norm
scores = torch.from_numpy(query.encode(["men navy blue shirt"])) @ products.T
```

## Differences from `dashclip_jax.load`

- Text cleaning: dashclip applies BLIP's `pre_caption` before WordPiece
  (lower-case; `. ! " ( ) * # : ; ~` become spaces; at most
  {max_words} words). The exported tokenizers do the same as
  normalizers in `tokenizer.json`, so raw text gives dashclip's ids; do not
  clean it again. Texts are cut at {max_length} tokens, [SEP] kept
  (`truncation=True`). A text that spells a special token such as `[SEP]`
  becomes that token here (dashclip lower-cases it first).
- Pixels: `BlipImageProcessorPil` is dashclip's eval transform (PIL bicubic
  square resize, /255, CLIP mean/std).
- ITM: BLIP's ITM reads position 0 as `[ENC]` (id 30523), which
  `BlipForImageTextRetrieval` does not insert: call `itm_probability`,
  or set `input_ids[:, 0] = 30523` before `blip(..., use_itm_head=True)`.
- Unimodal text: `text_pooling` is `{config.text_pooling}`;
  `blip(..., use_itm_head=False)` always pools `[CLS]`
  ({same}).
- Temperature: `temp` = exp(-`logit_scale_init_value`) in blip/config.json
  (also `dashclip.temp`); the retrieval class has no tensor for it.
- The query tower's BertModel has zero token-type and pooler weights (not
  part of the model; `pooler_output` is 0): use `last_hidden_state`, as the
  sentence-transformers pipeline does.
""".splitlines()


def model_card(model_dir: str, meta: dict[str, Any],
               config: model_lib.ModelConfig, report: dict[str, Any]
               ) -> str:
  """The README.md text."""
  workdir = run_info.run_workdir(model_dir, meta)
  evaluated = run_info.evaluation(workdir, model_dir)
  lines = [
      "---", "library_name: transformers",
      "tags: [dashclip, blip, image-text-retrieval, sentence-transformers, "
      "feature-extraction]", "---", "",
      "# DashCLIP: query and product embeddings", "",
      f"Exported from the dashclip_jax model directory `{model_dir}` by "
      "`python -m dashclip_jax.export_hf`.", "",
      "| part | holds | loads with |", "|---|---|---|",
      "| `blip/` | ViT, text encoder with cross-attention, vision_proj, "
      "text_proj, itm_head; tokenizer and image processor | "
      "`transformers.BlipForImageTextRetrieval`, `BlipProcessor` |",
      "| `query/` | query tower, pooling "
      f"({config.query_pooling}), query_proj | "
      "`sentence_transformers.SentenceTransformer` |",
      "| `product_proj.safetensors`, `product_embedding.py` | product "
      f"projection (pooling {config.product_pooling}) and the torch code "
      "that runs it on `blip/` | `product_embedding.ProductEmbedding` |",
      "", "## Training data", ""]
  lines += _training_lines(run_info.training_config(workdir), workdir, meta)
  lines += ["", "## Evaluation", ""]
  if evaluated:
    lines += [f"From `{evaluated[0]}` (dashclip_jax.evaluation):", ""]
    lines += _metrics_table(evaluated[1])
  else:
    lines += ["No evaluation of this model was found beside its run."]
  lines += ["", "## Model config", "", "```json",
            json.dumps(dict(model_config=config.to_dict(),
                            preprocessing=meta.get("preprocessing", {})),
                       indent=2), "```", ""]
  lines += usage_lines(config, report["query"]["max_seq_length"],
                       report["caption_max_words"])
  if report.get("notes"):
    lines += ["", "## Export notes", ""] + [f"- {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"
