"""The synonym table's rewording, and stage 2's on-the-fly query rewrite."""

import json

import numpy as np
import pytest

from dashclip_jax.data import query_rewrite
from dashclip_jax.data import synthetic
from dashclip_jax.data import train_datasets
from dashclip_jax.model import tokenizer as tokenizer_lib


def test_synonym_substitution_by_hand():
  table = {"for men": ("for him",), "men": ("mens",), "tshirts": ("tee",),
           "navy blue": ("navy",)}
  rng = np.random.default_rng(0)
  sub = lambda text, rate: query_rewrite.substitute(text, table, rng, rate)
  # The phrase "for men" wins over its word "men"; "navy blue" is one key.
  # "T-shirts" normalises to two words, "t shirts": not the key "tshirts".
  assert sub("Navy Blue T-shirts for Men", 1.0) == "navy t shirts for him"
  assert sub("navy blue tshirts for men", 1.0) == "navy tee for him"
  assert sub("men tshirts", 1.0) == "mens tee"
  assert sub("men tshirts", 0.0) == "men tshirts"


@pytest.fixture(scope="module")
def data():
  return synthetic.synthetic_data()


def _queries_seen(data, rate, tok, batches=6):
  ds = train_datasets.stage2_dataset(
      data.train_catalog, data.train, train_datasets.PipelineOptions(
          batch_size=8, shard=(0, 1), seed=5, num_epochs=1),
      image_size=16, num_negatives=2, tokenizer=tok, augment=False,
      query_rewrite_rate=rate)
  it = iter(ds)
  out = [next(it) for _ in range(batches)]
  return ([tok.decode(ids) for b in out for ids in b["query_ids"]],
          [q for b in out for q in b["query_index"].tolist()])


def test_stage2_rewrites_training_queries_by_the_table(data):
  tok = tokenizer_lib.BlipTokenizer.from_vocab()
  plain, order = _queries_seen(data, 0.0, tok)
  reworded, order_r = _queries_seen(data, 1.0, tok)
  assert order == order_r  # The same pairs, in the same order.
  queries = data.train.queries
  written = [tokenizer_lib.pre_caption(queries[q]) for q in order]
  assert plain == written
  # At rate 1 every query with a table word comes out reworded, as the
  # table allows; the rest stay as written.
  replaced = 0
  for text, q in zip(reworded, order):
    norm = query_rewrite.normalise(queries[q]).split()
    keys = [w for w in norm if w in query_rewrite.SYNONYMS] + [
        " ".join(p) for p in zip(norm, norm[1:])
        if " ".join(p) in query_rewrite.SYNONYMS]
    if not keys:
      assert text == tokenizer_lib.pre_caption(queries[q])
      continue
    replaced += 1
    assert text != tokenizer_lib.pre_caption(queries[q])
    assert any(s in text for k in keys for s in query_rewrite.SYNONYMS[k])
  assert replaced >= len(order) // 4, (replaced, len(order))
  # Deterministic for a seed: the same pipeline again gives the same words.
  assert _queries_seen(data, 1.0, tok)[0] == reworded


def test_reworded_batches_resume_exactly(data):
  tok = tokenizer_lib.BlipTokenizer.from_vocab()
  ds = train_datasets.stage2_dataset(
      data.train_catalog, data.train, train_datasets.PipelineOptions(
          batch_size=8, shard=(0, 1), seed=5, num_epochs=None),
      image_size=16, num_negatives=2, tokenizer=tok, augment=False,
      query_rewrite_rate=0.5)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    for key in ("query_ids", "query_mask", "query_index"):
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)
