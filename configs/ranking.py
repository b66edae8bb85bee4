r"""Downstream ranking: a DCN-V2 click model with and without an embedding
tower, on simulated search sessions, judged by AUC on the next week.

  python -m dashclip_jax.ranking.main --config=configs/ranking.py:fashion \
      --config.embeddings=/work/runs/fashion_s2/export --workdir=/tmp/rank
  python -m dashclip_jax.ranking.main \
      --config=configs/ranking.py:fashion,clicks=steep \
      --config.embeddings=DIR --config.sim.seed=1 --workdir=/tmp/rank_steep
  python -m dashclip_jax.ranking.main --config=configs/ranking.py:tiny \
      --config.embeddings=DIR --workdir=/tmp/rank_tiny

Variants:
  tiny     CI scale: the embedded synthetic catalog's test split, a few
           hundred sessions, seconds on 2 CPU cores.
  fashion  ../shared/data/fashion's test split (1,185 products, the 600
           qrels_test queries, complete labels: the products the main job's
           final export embeds), 3,000 users, 14 days x 2,000 sessions.
Arguments: `clicks=default|steep` picks the click-model parameters (below).

`embeddings` (required) is the model under test: an embedding export
(dashclip_jax/index.py layout) or "minilm". `alternatives` adds
more towers: "minilm", "NAME=EXPORT_DIR" or "NAME=model:MODEL_DIR" (a
dashclip model dir, e.g. a run's models/0, the untrained "init"; encoded once
and cached). Every run trains: the baseline DCN, DCN + tower for the model
under test and for each alternative, and (`ablation`) the same embedding
features fed into the single DCN tower.

The simulation is cached in `cache_dir` (default <workdir>/cache) under a
key of its seed, parameters and data: a second run with the same ones
reuses it (and the MiniLM/model embeddings), whatever its models.
"""

import ml_collections

from dashclip_jax.runtime import config_files

common = config_files.sibling_config(__file__, "common")

VARIANTS = ("tiny", "fashion")

# Click-model parameter sets (config.sim.click). P(click) = examination(pos)
# x attractiveness; examination = (1 + pos)^-position_power (pos from 0);
# attractiveness = sigmoid(label_logits[label] + affinity_weight * affinity
# + popularity_weight * popularity). P(purchase | click) = purchase_rate x
# attractiveness.
CLICKS = {
    # Relevance dominates; moderate position bias.
    "default": dict(label_logits=(-3.0, -1.5, 0.0), affinity_weight=1.0,
                    popularity_weight=0.3, position_power=1.0,
                    purchase_rate=0.3),
    # Flatter label gains, personal affinity twice as strong, steeper
    # position bias: the "other click-model parameters" check.
    "steep": dict(label_logits=(-2.5, -1.6, -0.6), affinity_weight=2.0,
                  popularity_weight=0.5, position_power=1.6,
                  purchase_rate=0.4),
}


def get_config(arg=None):
  arg = config_files.parse_arg(arg, variant="fashion", clicks="default")
  v = arg.variant
  if v not in VARIANTS:
    raise ValueError(f"unknown ranking variant {v!r}: {', '.join(VARIANTS)}")
  if arg.clicks not in CLICKS:
    raise ValueError(f"unknown ranking clicks {arg.clicks!r}: "
                     f"{', '.join(CLICKS)}")
  tiny = v == "tiny"
  pick = lambda t, f: t if tiny else f
  c = ml_collections.ConfigDict()
  c.stage = "ranking"
  c.seed = 0               # Model init and batch order (not the simulation).
  c.mesh = common.mesh_config()
  c.embeddings = ""        # Required: export dir of the model under test.
  c.name = "dashclip"      # Its name in the tables.
  c.alternatives = pick("", "minilm")  # Comma-separated further towers.
  c.ablation = True        # Also: its features in the single DCN tower.
  c.cache_dir = ""         # "": <workdir>/cache (simulations, embeddings).
  # The data every job reads (configs/common.py data_block). Sessions run over
  # data.split's products and its relevance file's queries. "test": qrels
  # list every label > 0 pair, so every pair has a true label. "train":
  # relevance_train.csv judges a sample; its unjudged pairs take
  # sim.unjudged_label.
  c.data = common.data_block(pick("tiny", "fashion"))
  if tiny:
    c.data.synthetic.update(dict(num_products=160, num_train_queries=8,
                                 num_test_queries=24, image_size=16,
                                 test_fraction=0.5))
  # Catalog column of each attribute the simulator and the DCN read; brand
  # "" = the title's words before its gender word (fashion titles start
  # with the brand: "Quechua Men Sweat Proof T-shirt"). The synthetic
  # catalog has no usage: its pattern stands in.
  c.attributes = ml_collections.ConfigDict(dict(
      gender="gender", colour=pick("colour", "baseColour"),
      usage=pick("pattern", "usage"), brand=pick("brand", "")))
  c.sim = ml_collections.ConfigDict(dict(
      seed=0,
      num_users=pick(120, 3000),
      no_history_share=0.3,     # Users with no purchase before day 1.
      history_mean=pick(4.0, 6.0),   # Mean purchases before day 1 (others).
      history_days=84,          # Purchases this recent form the history.
      max_history=16,           # Most recent purchases the models see.
      num_days=14,              # Days 1..train_days train, the rest is NW.
      train_days=7,
      sessions_per_day=pick(60, 2000),
      impressions=10,           # K products shown per session.
      # A session's query is drawn with P(q | u) ~ exp(query_temperature x
      # the user's mean affinity to the query's label-2 products).
      query_temperature=1.5,
      # History purchases are drawn with P(p | u) ~ exp(history_temperature
      # x affinity(u, p)).
      history_temperature=1.5,
      unjudged_label=0,         # Label of pairs the relevance data omits.
      users=dict(               # affinity(u, p): weighted matches, centred.
          favourite_colours=2, favourite_brands=3,
          gender_weight=1.0,    # Product gender is the user's or Unisex.
          colour_weight=0.7, usage_weight=0.5, brand_weight=0.8,
          taste_weight=0.6),    # x the user's N(0, 1) taste of the type.
      # Impressions: top K of bm25 / max bm25 of the query / temperature
      # + popularity_weight x popularity + Gumbel noise.
      retriever=dict(k1=1.5, b=0.75, temperature=0.1, popularity_weight=0.5,
                     noise=1.0),
      click=dict(CLICKS[arg.clicks]),
  ))
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=8,             # Per categorical feature.
      cross_layers=2,
      cross_rank=0,            # 0: full-rank W; r > 0: W = U V^T, rank r.
      mlp=(64, 32),            # The DCN's deep part, beside the cross net.
      tower_dim=16,            # Projection of each embedding input.
      tower_mlp=(64, 32),
      head_mlp=(32,),          # After the two towers' concatenation.
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=pick(64, 512),  # Global.
      epochs=pick(2, 3),
      lr=2e-3, weight_decay=1e-5, warmup_steps=pick(2, 50),
      eval_batch_size=pick(128, 4096),
      fast_compile=tiny,        # XLA opt level 0 for the step (CI scale).
      progress=not tiny,        # tqdm bars (steps, days) with ETA.
  ))
  c.report = ml_collections.ConfigDict(dict(
      bootstrap=pick(100, 1000),  # Resamples of users.
      level=0.95,
      seed=0,
  ))
  return c
