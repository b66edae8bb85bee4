"""The OpenAI-compatible client labeler against a fake endpoint on loopback.

The fake (FastAPI on uvicorn, in a thread, on a free 127.0.0.1 port)
answers /v1/chat/completions and /v1/completions from a table of label
logprobs per query, records every request it gets, and can be told to
answer the next requests with given statuses, to answer some queries with
no label, to be slow, or to shut itself down after N answers.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time

import fastapi
import numpy as np
import pyarrow.parquet as pq
import pytest
import uvicorn

from dashclip_jax.curation import label_shards
from dashclip_jax.curation.labelers.openai_client import answers as llm_answers
from dashclip_jax.curation.labelers.openai_client import labeler as ol
from dashclip_jax.data import catalog as catalog_lib

TEMPLATE = "Query: {query}\nProduct:\n{product}\nLabel?"
SYSTEM = "Rate the match."
# Label-token logprobs per query; the fake answers the top token.
TABLE = {
    "red shirt": {"2": -0.3, "1": -1.6, "0": -3.0, "The": -4.0},
    # " 2" and "2" both mean 2; "0" is below the top-3 the tests ask for.
    "blue jeans": {"1": -0.7, " 2": -1.2, "2": -2.0, "Yes": -2.5,
                   "0": -6.0},
}
MALFORMED_TEXT = "I cannot rate this product"


def softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x))
  return e / e.sum()


class FakeEndpoint:
  """What the fake server answers, and what it was asked."""

  def __init__(self, table=None, logprobs=True):
    self.table = dict(TABLE if table is None else table)
    self.logprobs = logprobs        # False: text only, like some hosts.
    self.malformed = set()          # Queries answered with no label.
    self.inject = []                # Statuses for the next requests.
    self.delay_once = 0.0           # Seconds the next request sleeps.
    self.die_after = None           # Shut down after this many answers.
    self.requests = []              # (time, path, body, authorization).
    self.answered = []              # Queries answered with 200.
    self.server = None
    self.lock = threading.Lock()

  def top(self, query):
    if query in self.malformed:
      return "I", {"I": -0.1, "Sorry": -2.5}
    if query in self.table:
      alts = self.table[query]
    else:  # Any other query: a deterministic label from its text.
      label = sum(map(ord, query)) % 3
      alts = {str(label): -0.2, str((label + 1) % 3): -2.0}
    return max(alts, key=alts.get), alts


def _query_of(text):
  return re.search(r"Query: (.*)\n", text).group(1)


def make_app(fake):
  app = fastapi.FastAPI()

  async def answer(request, chat):
    body = await request.json()
    with fake.lock:
      fake.requests.append((time.monotonic(), request.url.path, body,
                            request.headers.get("authorization")))
      status = fake.inject.pop(0) if fake.inject else 200
      delay, fake.delay_once = fake.delay_once, 0.0
    if delay:
      await asyncio.sleep(delay)
    if status != 200:
      # A careless server echoing the caller's key, to show it is redacted.
      message = f"injected {status} for {request.headers.get('authorization')}"
      return fastapi.responses.JSONResponse(
          {"error": {"message": message, "type": "injected"}},
          status_code=status, headers={"retry-after": "0"})
    text = body["messages"][-1]["content"] if chat else body["prompt"]
    query = _query_of(text)
    token, alts = fake.top(query)
    text_out = MALFORMED_TEXT if query in fake.malformed else token
    k = (body.get("top_logprobs", 0) if chat and body.get("logprobs")
         else body.get("logprobs") or 0) if fake.logprobs else 0
    ranked = sorted(alts.items(), key=lambda a: -a[1])[:k]
    with fake.lock:  # No await since the check: exactly die_after answers.
      dying = fake.die_after is not None and len(
          fake.answered) >= fake.die_after
      if not dying:
        fake.answered.append(query)
        if len(fake.answered) == fake.die_after:
          fake.server.should_exit = True
    if dying:  # Never answered: cut off when the server goes down.
      await asyncio.sleep(60)
    if chat:
      logprobs = {"content": [{
          "token": token, "logprob": alts[token], "bytes": None,
          "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                           for t, lp in ranked]}]} if k else None
      choice = {"index": 0, "finish_reason": "length", "logprobs": logprobs,
                "message": {"role": "assistant", "content": text_out}}
      obj = "chat.completion"
    else:
      logprobs = {"tokens": [token], "token_logprobs": [alts[token]],
                  "top_logprobs": [dict(ranked)],
                  "text_offset": [0]} if k else None
      choice = {"index": 0, "finish_reason": "length", "logprobs": logprobs,
                "text": text_out}
      obj = "text_completion"
    return {"id": "fake", "object": obj, "created": 0,
            "model": body["model"], "choices": [choice]}

  @app.post("/v1/chat/completions")
  async def chat(request: fastapi.Request):
    return await answer(request, chat=True)

  @app.post("/v1/completions")
  async def completions(request: fastapi.Request):
    return await answer(request, chat=False)

  return app


@contextlib.contextmanager
def serving(fake):
  """The fake on a free loopback port -> its base URL (…/v1)."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  # Requests still open 0.2 s into a shutdown are cut off, unanswered.
  server = uvicorn.Server(uvicorn.Config(
      make_app(fake), log_level="critical", lifespan="off",
      timeout_graceful_shutdown=0.2))
  fake.server = server
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                            daemon=True)
  thread.start()
  deadline = time.monotonic() + 20
  while not server.started:
    assert thread.is_alive() and time.monotonic() < deadline, "no server"
    time.sleep(0.01)
  try:
    yield f"http://127.0.0.1:{port}/v1"
  finally:
    server.should_exit = True
    thread.join(20)
    sock.close()


@pytest.fixture(autouse=True)
def fake_api_key(monkeypatch):
  monkeypatch.setenv("FAKE_LLM_KEY", "sk-test-unused")


def make_labeler(url, tmp_path=None, **kw):
  settings = dict(api_key_env="FAKE_LLM_KEY", template=TEMPLATE,
                  system=SYSTEM, fields=("title",), top_logprobs=3,
                  concurrency=4, backoff_s=0.01, max_backoff_s=0.05,
                  timeout_s=5.0)
  if tmp_path is not None:
    settings["cache_path"] = str(tmp_path / "cache" / "answers.sqlite")
  settings.update(kw)
  return ol.OpenAICompatibleLabeler(url, "fake-model", **settings)


def records(titles):
  return [{"product_id": f"p{i}", "title": t, "category": "Shirts"}
          for i, t in enumerate(titles)]


def small_catalog(n):
  return catalog_lib.Catalog(
      name="test", ids=[f"p{i}" for i in range(n)],
      titles=[f"Product {i}" for i in range(n)],
      category=np.full(n, -1, np.int32), category_names=[],
      split=["train"] * n, images=[b""] * n,
      where=[f"row {i}" for i in range(n)])


def label_job(labeler, out_dir, n_pairs, n_products=6, shard_size=4,
              batch_size=4, malformed=()):
  """label_pairs over pairs (query q{i % 5} or a malformed one, product
  i % n_products) -> the shard paths."""
  queries = [f"q{i % 5}" for i in range(n_pairs)]
  for i in malformed:
    queries[i] = f"broken {i}"
  return label_shards.label_pairs(
      labeler, small_catalog(n_products),
      [f"id-{q}" for q in queries], queries,
      np.arange(n_pairs) % n_products, str(out_dir), shard_size=shard_size,
      batch_size=batch_size, progress=False)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_probabilities_are_the_softmax_of_the_label_logprobs(api):
  fake = FakeEndpoint()
  with serving(fake) as url:
    labeler = make_labeler(url, api=api)
    probs = labeler.predict(["red shirt", "blue jeans"],
                            records(["Red Shirt", "Blue Jeans"]))
  # red shirt: the top 3 are the three labels.
  np.testing.assert_allclose(probs[0], softmax([-3.0, -1.6, -0.3]),
                             rtol=1e-6)
  # blue jeans: top 3 are "1", " 2", "2" -> 2 is their log-sum-exp, and 0,
  # absent from the top 3, gets probability 0.
  two = np.logaddexp(-1.2, -2.0)
  np.testing.assert_allclose(probs[1], [0.0, *softmax([-0.7, two])],
                             rtol=1e-6)
  s = labeler.summary()
  assert (s["from_logprobs"], s["from_text"], s["requests"]) == (2, 0, 2)
  body = next(b for _, _, b, _ in fake.requests if "red" in json.dumps(b))
  user = "Query: red shirt\nProduct:\ntitle: Red Shirt\nLabel?"
  if api == "chat":
    assert body["messages"] == [{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": user}]
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
  else:
    assert (body["prompt"], body["logprobs"]) == (user + "\nAnswer:", 3)
  assert fake.requests[0][1] == {"chat": "/v1/chat/completions",
                                 "completions": "/v1/completions"}[api]


def test_without_logprobs_the_label_is_read_from_the_text():
  fake = FakeEndpoint(logprobs=False)
  with serving(fake) as url:
    probs = make_labeler(url).predict(["red shirt", "blue jeans"],
                                      records(["a", "b"]))
  np.testing.assert_array_equal(probs, [[0, 0, 1], [0, 1, 0]])


@pytest.mark.parametrize("text,label", [
    ("2", 2), (" 1.", 1), ("Label: 0", 0), ("10 out of 10", None),
    ("", None), ("rated 3, or 2", 2)])
def test_label_from_text(text, label):
  assert llm_answers.label_from_text(text) == label


def test_a_rerun_is_answered_entirely_from_the_cache(tmp_path):
  fake = FakeEndpoint()
  queries = ["red shirt", "blue jeans", "green hat", "black shoes"]
  with serving(fake) as url:
    first = make_labeler(url, tmp_path).predict(queries, records(queries))
    assert len(fake.requests) == 4
    again = make_labeler(url, tmp_path)  # A new process, the same cache.
    second = again.predict(queries, records(queries))
    assert len(fake.requests) == 4  # Not one more.
    np.testing.assert_array_equal(first, second)
    s = again.summary()
    assert (s["requests"], s["cache_hits"], s["labelled"]) == (0, 4, 4)
    # Another temperature is another question: asked again.
    make_labeler(url, tmp_path, temperature=0.5).predict(
        queries[:1], records(queries[:1]))
    assert len(fake.requests) == 5


def test_429_500_and_timeouts_are_retried_and_counted(tmp_path):
  fake = FakeEndpoint()
  with serving(fake) as url:
    # A timeout no answer here comes near, however loaded the runner: the
    # counts are the injected statuses' alone.
    labeler = make_labeler(url, concurrency=1, timeout_s=60.0)
    fake.inject = [429, 500, 500, 503]
    probs = labeler.predict(["red shirt", "blue jeans"],
                            records(["a", "b"]))
    s = labeler.summary()
    assert s["retries"] == {"429": 1, "5xx": 3, "timeout": 0,
                            "connection": 0}
    # red shirt 5 tries, blue jeans 1.
    assert s["requests"] == len(fake.requests) == 5 + 1
    np.testing.assert_allclose(probs[0], softmax([-3.0, -1.6, -0.3]),
                               rtol=1e-6)
    # A request that sleeps 60 s times out at 2 s and is retried. A slow
    # runner may time out a retry too, so the counts are checked against
    # each other, not against an exact number of timeouts.
    timing_out = make_labeler(url, concurrency=1, timeout_s=2.0)
    before, fake.delay_once = len(fake.requests), 60.0
    got = timing_out.predict(["green hat"], records(["c"]))
    s = timing_out.summary()
    tries = len(fake.requests) - before
    assert s["retries"]["timeout"] >= 1 and s["requests"] == tries == 1 + \
        s["retries"]["timeout"], (s, tries)
    assert s["retries"]["429"] == s["retries"]["5xx"] == 0
    np.testing.assert_allclose(got, labeler.predict(["green hat"],
                                                    records(["c"])))
    # Past max_retries: a clear error naming the kind and the pair.
    fake.inject = [500] * 3
    with pytest.raises(ol.EndpointError, match=r"5xx on all 3 tries for "
                       r"query 'red shirt', product p0"):
      make_labeler(url, max_retries=2).predict(["red shirt"],
                                               records(["a"]))


def test_a_malformed_answer_is_named_skipped_and_not_cached(tmp_path):
  fake = FakeEndpoint()
  fake.malformed = {"broken 5"}
  with serving(fake) as url:
    labeler = make_labeler(url, tmp_path)
    paths = label_job(labeler, tmp_path / "labels", 8, malformed=[5])
    rows = label_shards.read_shards(paths)
    s = labeler.summary()
    assert s["malformed"] == 1 and s["labelled"] == 7
    assert s["malformed_pairs"] == [{"query": "broken 5", "product_id": "p5",
                                     "answer": MALFORMED_TEXT}]
    assert rows.num_rows == 7 and "broken 5" not in rows["query"].to_pylist()
    # Not cached: a new job asks for it again, and only for it.
    n = len(fake.requests)
    again = make_labeler(url, tmp_path).predict(
        ["broken 5", "q0"], [{"product_id": "p5", "title": "Product 5"},
                             {"product_id": "p0", "title": "Product 0"}])
    assert len(fake.requests) == n + 1
    assert np.isnan(again[0]).all() and np.isfinite(again[1]).all()


def test_the_budget_stops_the_job_and_keeps_what_was_labelled(tmp_path):
  fake = FakeEndpoint()
  with serving(fake) as url:
    with pytest.raises(ol.BudgetSpent, match="request budget of 6 requests"
                       ".* spent"):
      label_job(make_labeler(url, tmp_path, budget=6, concurrency=2),
                tmp_path / "labels", 12)
    assert len(fake.requests) == 6
    assert sorted(os.listdir(tmp_path / "labels")) == [
        "labels.json", "part-00000-of-00003.parquet"]
    # The rest, paying only for the 6 pairs never answered.
    labeler = make_labeler(url, tmp_path)
    paths = label_job(labeler, tmp_path / "labels", 12)
  assert len(fake.requests) == 12
  assert labeler.summary()["cache_hits"] == 2
  assert label_shards.read_shards(paths).num_rows == 12


def test_the_rps_limit_holds_at_the_server():
  fake = FakeEndpoint()
  with serving(fake) as url:
    labeler = make_labeler(url, rps=20.0, concurrency=4)
    labeler.predict([f"q{i}" for i in range(10)], records(["t"] * 10))
  times = [t for t, *_ in fake.requests]
  assert len(times) == 10
  assert max(times) - min(times) >= 0.4  # 9 gaps of 1/20 s: 0.45 s.


def test_the_api_key_is_sent_but_never_written_or_logged(tmp_path, caplog,
                                                         monkeypatch):
  key = "sk-unique-7f3a9c0e51d24b86-secret"
  monkeypatch.setenv("FAKE_LLM_KEY", key)
  caplog.set_level(logging.DEBUG)
  fake = FakeEndpoint()
  fake.malformed = {"broken 1"}
  with serving(fake) as url:
    labeler = make_labeler(url, tmp_path)
    fake.inject = [429]
    label_job(labeler, tmp_path / "labels", 6, malformed=[1])
    labeler.write_summary(str(tmp_path / "summary.json"))
    fake.inject = [401]  # Its message echoes the key: redacted.
    with pytest.raises(ol.EndpointError, match="HTTP 401") as refused:
      make_labeler(url, tmp_path).predict(["new"], records(["x"]))
    labeler.close()
  assert {auth for *_, auth in fake.requests} == {f"Bearer {key}"}
  assert key not in str(refused.value) and "***" in str(refused.value)
  written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path)
             for f in fs]
  assert any(f.endswith(".sqlite") for f in written)
  for path in written:
    with open(path, "rb") as f:
      assert key.encode() not in f.read(), path
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["retries"]["429"] == 1
  assert caplog.records and key not in caplog.text
  assert key not in repr(labeler.summary())


def test_server_killed_mid_run_then_rerun_labels_every_pair_once(tmp_path):
  n = 20
  first = FakeEndpoint()
  first.die_after = 9  # Shard 0, shard 1 and a bit of shard 2.
  with serving(first) as url:
    with pytest.raises(ol.EndpointError, match="connection on all"):
      label_job(make_labeler(url, tmp_path, concurrency=2, max_retries=2),
                tmp_path / "labels", n)
  committed = sorted(p for p in os.listdir(tmp_path / "labels")
                     if p.endswith(".parquet"))
  assert committed[:2] == ["part-00000-of-00005.parquet",
                           "part-00001-of-00005.parquet"]
  assert len(committed) < 5
  before = {p: os.stat(tmp_path / "labels" / p).st_mtime_ns
            for p in committed}
  assert len(first.answered) == 9
  second = FakeEndpoint()  # Restarted (on another port).
  with serving(second) as url:
    labeler = make_labeler(url, tmp_path)
    paths = label_job(labeler, tmp_path / "labels", n)
  assert labeler.summary()["cache_hits"] == 1  # Shard 2's one answer.
  # Every pair (q{i % 5}, product i % 6: 20 distinct ones) answered once
  # over both servers, and written once.
  rows = label_shards.read_shards(paths)
  pairs = list(zip(rows["query"].to_pylist(), rows["product_id"].to_pylist()))
  assert len(pairs) == len(set(pairs)) == n
  assert len(first.answered) + len(second.answered) == n
  for p, mtime in before.items():  # Not relabelled, not rewritten.
    assert os.stat(tmp_path / "labels" / p).st_mtime_ns == mtime
  assert pq.read_table(paths[-1]).num_rows == 4


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
    ol.OpenAICompatibleLabeler("http://127.0.0.1:1/v1", "m",
                               api_key_env="NO_SUCH_KEY_VAR")
  with pytest.raises(ValueError, match="api 'embeddings' not in"):
    ol.OpenAICompatibleLabeler("http://127.0.0.1:1/v1", "m", api_key_env="",
                               api="embeddings")
  with pytest.raises(ValueError, match="concurrency must be >= 1"):
    ol.OpenAICompatibleLabeler("http://127.0.0.1:1/v1", "m", api_key_env="",
                               concurrency=0)
