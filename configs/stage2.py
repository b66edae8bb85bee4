r"""Stage 2: align the query encoder with the multimodal product embedding.

  python -m dashclip_jax.main --config=configs/stage2.py:demo --workdir=/tmp/dc
  python -m dashclip_jax.main --config=configs/stage2.py:fashion --workdir=/tmp/f
  python -m dashclip_jax.main --config=configs/stage2.py:base \
      --config.init.checkpoint=/tmp/s1 --workdir=/tmp/s2

Variants:
  tiny     CI scale; runs its own tiny stage 1 first (see `stage1` below).
  demo     the README main job: stage 1, stage 2 and a retrieval evaluation
           on the embedded synthetic catalog, minutes on 2 CPU cores.
  fashion  the same three steps on the real catalog in ../shared/data/fashion
           (`--config.data.path` for another copy), sized for 60 minutes on
           2 CPU cores: text and query towers from MiniLM-L6
           (init.text_from; 6 layers, 384 wide, mean pooling), the small
           ViT (4 layers, 256 wide) from scratch at 64 px (the photos are
           128 px; 64 keeps colour and shape and costs a quarter of the
           patches), batch 32; stage 1 300 steps (ITC + ITM, MiniLM at a
           tenth of the lr, about 15 min), stage 2 500 steps at lr 1e-4
           with 4 mined negatives per product, the whole product tower
           trained with the query tower (about 2 s a step). The steps were
           chosen on 10% of the train queries held out of training
           (data.heldout_query_fraction), never on qrels_test.csv.
  base     BLIP-14M geometry on the fashion catalog, initialised from the
           stage-1 workdir or converted checkpoint named by init.checkpoint.

Where `stage1` is set (tiny, demo, fashion) and init.checkpoint is empty,
the main job runs that stage-1 config first in <workdir>/stage1 and starts
stage 2 from its exported model; with init.checkpoint set, the `stage1`
block is ignored. The block sets stage 1's init, train, optim, loss,
checkpoint and eval; data, model, mesh and seed are this config's for both
stages (`--config.model.size=...` moves both; `--config.stage1.model.size`
is an error that says so).
"""

import ml_collections

from dashclip_jax.runtime import config_files

common = config_files.sibling_config(__file__, "common")


def final_eval_block(enabled: bool, variant: str):
  """configs/eval.py settings, run after stage 2 when enabled.

  It evaluates the run's own data: trainers/final_eval.py passes config.data
  through (the block every job reads), so `--config.data.*` overrides move
  it too; the block keeps no data of its own.
  """
  c = config_files.sibling_config(__file__, "eval").get_config("fashion")
  c.enabled = enabled
  del c["data"]
  # "init": the model before any training (stage 1's start when the main
  # job runs stage 1, else init.checkpoint): the untrained reference.
  # MiniLM beside them (a torch model: left out of the CI-scale tiny run).
  c.baselines = ("init", "bm25") + (() if variant == "tiny" else ("minilm",))
  return c


def get_config(arg=None):
  c, v = common.stage_config("stage2", arg)
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",          # Stage-1 workdir/model or converted BLIP.
      query_from_text=True,   # Query tower <- (stage-1) text encoder.
      # "minilm": text + query towers from MiniLM-L6 when no checkpoint.
      text_from="minilm" if v in ("demo", "fashion") else "",
  ))
  c.stage1 = (config_files.sibling_config(__file__, "stage1").get_config(v)
              if v in ("tiny", "demo", "fashion") else None)
  if c.stage1 is not None:
    # Stage 1 runs on this config's data, model, mesh and seed (one override
    # moves both stages): the block keeps no copies that would be ignored.
    for key in config_files.STAGE1_FROM_STAGE2:
      del c.stage1[key]
  c.data = common.data_block(v)  # Stage 1's too.
  if v == "demo":
    # 2 mined negative queries per product, not 4: the query tower runs on
    # 96 queries a step instead of 160 (a stage-2 step 28% fewer FLOPs),
    # which keeps the README job within its minutes on 2 cores.
    c.data.num_negatives = 2
  # demo: 60 steps (was 100, see configs/stage1.py's 40), evaluated before
  # training and at the end only.
  c.train.total_steps = common.by_variant(
      v, tiny=6, demo=60, fashion=500, base=10000)
  c.train.eval_every = common.by_variant(
      v, tiny=3, demo=60, fashion=100, base=1000)
  # 1e-4 for the demo and fashion runs: their query tower is pretrained
  # (MiniLM, through stage 1's text encoder); 1e-3 made the demo forget it.
  c.optim.lr = common.by_variant(
      v, tiny=1e-3, demo=1e-4, fashion=1e-4, base=1e-5)
  c.optim.warmup_steps = common.by_variant(
      v, tiny=1, demo=10, fashion=50, base=500)
  # What trains (first match wins). demo, fashion: the whole product tower
  # (ViT, image-grounded text encoder, product_proj) with the query tower,
  # query_proj and temp; only the stage-1 heads stay frozen. On the fashion
  # catalog that gave NDCG@10 0.938 against 0.828 with the tower frozen and
  # 0.734 with product_proj frozen too, at 150 steps from the same stage 1
  # (bench/ablations.py, README). tiny, base: DashCLIP's frozen product
  # tower body with product_proj trained (a random product_proj that never
  # trains makes the product embedding a random projection); its features
  # are then computed once as a table (train.cache_product_features).
  c.optim.lr_mults = (
      "(vision_proj|text_proj|itm_head)/.*=0; .*=1"
      if v in ("demo", "fashion") else
      "(img|txt|vision_proj|text_proj|itm_head)/.*=0; .*=1")
  # A frozen tower's pooled features: one pass over the train catalog at
  # the start, then each step runs only the query tower. "auto": only when
  # the run's steps x batch products outnumber the train products (else the
  # tower runs per batch, in eval mode: same values); "always", "never".
  c.train.cache_product_features = "auto"
  # Products per global batch while the table is built: the pass runs once
  # over the whole train catalog (400K products at DashCLIP's scale), where
  # a small eval batch costs more in per-call overhead than in compute.
  c.train.table_batch_size = 256
  c.loss = ml_collections.ConfigDict(dict(
      # Label-1 pairs follow data.label1_policy / label1_weight ("exclude"
      # drops them from the training pairs: not even in-batch negatives).
      symmetric=False,             # Add the query->product term.
      hard_k=0,                    # >0: only the k hardest in-batch negatives.
      deterministic=False,
  ))
  # True: each evaluation also scores the hand- and rule-written paraphrases
  # over the train catalog (evaluation/paraphrases.py; needs the fashion
  # catalog's columns), logged as para/* beside the held-out eval/*: how
  # the query tower copes with wording the training queries lack.
  c.eval.paraphrases = v in ("fashion", "base")
  # WiSE-FT (trainers/wise_ft.py): after the last step, mix the trained
  # weights with the start's at each alpha and export the mix whose mean of
  # `select` (held-out TRAIN queries; para/* needs eval.paraphrases) is
  # highest; ties keep the trained model (alpha 1). mix: "query" mixes the
  # query tower and its projection, "all" every param. (): off.
  c.wise_ft = ml_collections.ConfigDict(dict(
      alphas=(), mix="query", select=("eval/ndcg@10",)))
  c.checkpoint.every_steps = common.by_variant(
      v, tiny=2, demo=30, fashion=100, base=1000)
  # True: start over (the previous run is moved aside). Stage 1 of a
  # main job has its own: --config.stage1.checkpoint.restart.
  c.checkpoint.restart = False
  c.checkpoint.best_metric = "eval/ndcg@10"  # On held-out train queries.
  c.final_eval = final_eval_block(enabled=v in ("tiny", "demo", "fashion"),
                                  variant=v)
  return c
