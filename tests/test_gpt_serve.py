"""The OpenAI-compatible server (`curation.serve`) in a subprocess on a free
loopback port, serving a tiny GGUF, asked by `OpenAICompatibleLabeler`.

The tiny model is random but leans towards the label tokens: a residual
coordinate that every token embedding sets and no layer writes is read only
by the label tokens' output rows, so "0", "1", "2" are always the three
most likely next tokens while their split still depends on the prompt.
That makes the greedy answer a label and the client's top-3 logprobs the
whole label distribution, to compare with the in-process `GptLabeler`.
"""

import concurrent.futures as futures_lib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

import gpt_helpers

from dashclip_jax.curation import label_shards
from dashclip_jax.curation.labelers import wording as client_prompts
from dashclip_jax.curation.labelers.gpt import gguf_loader
from dashclip_jax.curation.labelers.gpt import labeler as gpt_labeler
from dashclip_jax.curation.labelers.gpt import lora as lora_lib
from dashclip_jax.curation.labelers.gpt import model as model_lib
from dashclip_jax.curation.labelers.gpt import prompts as prompts_lib
from dashclip_jax.curation.labelers.openai_client import labeler as ol
from dashclip_jax.curation.serve import loading
from dashclip_jax.data import catalog as catalog_lib

pytest.importorskip("gguf")
pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tiny"
FIELDS = ("title",)
QUERIES = ["black watch", "blue running shoes", "red kurta for women",
           "tshirts", "grey track pants", "leather wallet"]
TITLES = ["Titan Men Black Watch", "Nike Men Blue Running Shoes",
          "Red Cotton Kurta", "Blue Tshirt", "Puma Women Grey Track Pants",
          "Brown Leather Wallet"]


def label_leaning_gguf(directory: str) -> str:
  tokens, merges = gpt_helpers.tiny_bpe()
  config = model_lib.tiny_config(vocab_size=len(tokens), tie_embeddings=False)
  tensors = gguf_loader.hf_to_gguf_tensors(
      gpt_helpers.hf_state(gpt_helpers.hf_llama(config)), config)
  tensors["token_embd.weight"][:, 0] = 1.0
  for i in range(config.depth):  # Nothing writes coordinate 0.
    tensors[f"blk.{i}.attn_output.weight"][0] = 0.0
    tensors[f"blk.{i}.ffn_down.weight"][0] = 0.0
    # Sharper attention over bigger values: the context matters more.
    for part, scale in (("q", 8.0), ("k", 8.0), ("v", 20.0)):
      tensors[f"blk.{i}.attn_{part}.weight"] *= scale
  head = tensors["output.weight"]
  labels = [tokens.index(t) for t in client_prompts.LABEL_TOKENS]
  head[labels] *= 50.0
  head[labels, 0] = 3.0
  return gpt_helpers.write_gguf(os.path.join(directory, "tiny.gguf"), config,
                                tensors, tokens, merges, quantize=False)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def get_json(url: str, body: dict | None = None, raw: bytes | None = None
             ) -> tuple[int, dict]:
  data = raw if raw is not None else (
      None if body is None else json.dumps(body).encode())
  request = urllib.request.Request(
      url, data=data, headers={"content-type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=30) as r:
      return r.status, json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


class Server:
  """`python -m dashclip_jax.curation.serve` on a loopback port."""

  def __init__(self, model: str, log_path: str, port: int | None = None,
               batch_wait_ms: float = 5.0):
    self.model, self.log_path = model, log_path
    self.batch_wait_ms = batch_wait_ms
    self.port = port or free_port()
    self.root = f"http://127.0.0.1:{self.port}"
    self.url = self.root + "/v1"
    self.proc = None

  def start(self) -> "Server":
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    with open(self.log_path, "ab") as log:
      self.proc = subprocess.Popen(
          [sys.executable, "-m", "dashclip_jax.curation.serve",
           f"--model={self.model}", f"--port={self.port}",
           "--max_length=256", "--max_batch=16",
           f"--batch_wait_ms={self.batch_wait_ms}"],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
      try:
        if get_json(self.root + "/health")[0] == 200:
          return self
      except OSError:
        pass
      if self.proc.poll() is not None or time.monotonic() > deadline:
        with open(self.log_path) as f:
          pytest.fail(f"the server did not come up:\n{f.read()[-2000:]}")
      time.sleep(0.1)

  def stats(self) -> dict:
    return get_json(self.url + "/stats")[1]

  def kill(self) -> None:
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(30)

  def stop(self) -> None:
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(30)
      except subprocess.TimeoutExpired:
        self.kill()


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
  return label_leaning_gguf(str(tmp_path_factory.mktemp("gguf")))


@pytest.fixture(scope="module")
def in_process(gguf_path):
  loaded, tokenizer = gpt_labeler.base_model(gguf_path)
  prompts = prompts_lib.Prompts(tokenizer, FIELDS, max_length=256)
  return gpt_labeler.GptLabeler(loaded.config, loaded.params, prompts, MODEL,
                                batch_size=8)


@pytest.fixture(scope="module")
def server(gguf_path, tmp_path_factory):
  # A 200 ms batching window, not 5 ms: concurrent requests are batched even
  # when a loaded runner starts their threads far apart (a lone request
  # waits it out, about 0.2 s per request here).
  s = Server(gguf_path, str(tmp_path_factory.mktemp("log") / "server.log"),
             batch_wait_ms=200.0)
  try:
    yield s.start()
  finally:
    s.stop()


def records(titles):
  return [{"product_id": f"p{i}", "title": t} for i, t in enumerate(titles)]


def client(url, tmp_path=None, **kw):
  settings = dict(api_key_env="", fields=FIELDS, top_logprobs=3,
                  concurrency=4, backoff_s=0.01, max_backoff_s=0.05,
                  timeout_s=30.0)
  if tmp_path is not None:
    settings["cache_path"] = str(tmp_path / "cache" / "answers.sqlite")
  return ol.OpenAICompatibleLabeler(url, MODEL, **{**settings, **kw})


def completion_texts(queries, products):
  """The raw prompts the client sends to /v1/completions."""
  suffix = ol.ClientSettings().completion_suffix
  return [client_prompts.relevance_prompt(q, p, FIELDS) + suffix
          for q, p in zip(queries, products)]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_round_trip_matches_the_labeler_in_process(server, in_process, api):
  products = records(TITLES)
  texts = (in_process.prompts.texts(QUERIES, products) if api == "chat"
           else completion_texts(QUERIES, products))
  want = in_process.label_probs(texts)
  # The fixture does what it says: labels on top, a prompt-dependent split.
  top, _ = in_process.next_token_logprobs(texts, top_k=3)
  assert (np.sort(top, 1) == np.sort(in_process.prompts.label_ids)).all()
  assert np.ptp(want, axis=0).max() > 200 * 1e-5
  labeler = client(server.url, api=api)
  got = labeler.predict(QUERIES, products)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert labeler.summary()["from_logprobs"] == len(QUERIES)


def test_a_rerun_is_answered_from_the_cache(server, tmp_path):
  products = records(TITLES)
  before = server.stats()["completion_requests"]
  first = client(server.url, tmp_path).predict(QUERIES, products)
  assert server.stats()["completion_requests"] == before + len(QUERIES)
  again = client(server.url, tmp_path)
  second = again.predict(QUERIES, products)
  assert server.stats()["completion_requests"] == before + len(QUERIES)
  np.testing.assert_array_equal(first, second)
  assert (again.summary()["requests"], again.summary()["cache_hits"]) == (
      0, len(QUERIES))


def test_concurrent_requests_are_batched(server, in_process):
  n = 24
  queries = [f"{QUERIES[i % 6]} size {i}" for i in range(n)]
  products = records([TITLES[i % 6] + " x" * (i % 7) for i in range(n)])
  before = server.stats()
  got = client(server.url, concurrency=n).predict(queries, products)
  after = server.stats()
  assert after["completion_requests"] - before["completion_requests"] == n
  forwards = after["forward_calls"] - before["forward_calls"]
  assert forwards < n and after["largest_batch"] > 1, after["batch_sizes"]
  # Batched with other lengths and pad rows, each answer is its own.
  np.testing.assert_allclose(
      got, in_process.label_probs(in_process.prompts.texts(queries, products)),
      atol=1e-5)
  shapes = {(b, l) for b in after["batch_buckets"]
            for l in after["length_buckets"]}
  assert {tuple(s) for s in after["compiled_shapes"]} <= shapes


def test_bad_requests_get_openai_style_errors(server):
  chat = server.url + "/chat/completions"
  ok = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2}
  for body, param in ((dict(ok, messages=[]), "messages"),
                      (dict(ok, top_logprobs=50, logprobs=True),
                       "top_logprobs"),
                      (dict(ok, max_tokens=1000), "max_tokens"),
                      (dict(ok, n=2), "n"),
                      ({"model": MODEL, "max_tokens": 1}, "messages")):
    status, answer = get_json(chat, body)
    assert status == 400, (body, answer)
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param and answer["error"]["message"]
  status, answer = get_json(chat, raw=b"{not json")
  assert status == 400 and "not valid JSON" in answer["error"]["message"]
  status, answer = get_json(chat, dict(ok, model="gpt-9"))
  assert status == 404 and answer["error"]["code"] == "model_not_found"
  sampled = [get_json(chat, dict(ok, temperature=1.5, seed=3))
             for _ in range(2)]
  assert [status for status, _ in sampled] == [200, 200]
  assert sampled[0][1]["usage"]["completion_tokens"] <= 2
  assert sampled[0][1]["choices"] == sampled[1][1]["choices"]  # Seeded.
  # Other seeds sample other answers (a server that ignored temperature
  # would answer all alike); at temperature 0 the seed does not matter.
  text = lambda t, seed: get_json(chat, dict(ok, temperature=t, seed=seed))[
      1]["choices"][0]["message"]["content"]
  assert len({text(1.5, seed) for seed in range(8)}) > 1
  assert len({text(0.0, seed) for seed in range(3)}) == 1
  status, models = get_json(server.url + "/models")
  assert models["data"][0]["id"] == MODEL


def post_raw(server, path, body, chunked=False):
  """(status, answer) of a POST of `body` bytes. A server that answers
  before reading the body may close the connection while it is being sent;
  its answer is read all the same."""
  conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
  try:
    if chunked:  # No Content-Length: the server must count.
      conn.request("POST", path, body=iter(
          [body[i:i + 65536] for i in range(0, len(body), 65536)]),
                   headers={"content-type": "application/json"},
                   encode_chunked=True)
    else:
      conn.putrequest("POST", path)
      conn.putheader("content-type", "application/json")
      conn.putheader("content-length", str(len(body)))
      conn.endheaders()
      try:
        conn.send(body)
      except (BrokenPipeError, ConnectionResetError):
        pass
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally:
    conn.close()


def timed_models(server):
  tick = time.monotonic()
  status, _ = get_json(server.url + "/models")
  return status, time.monotonic() - tick


@pytest.mark.parametrize("chunked", [False, True])
def test_a_huge_request_is_refused_and_stalls_no_one(server, chunked):
  # 5 MB: over the 1 MiB --max_request_bytes default. Refused with 413
  # unread (by its Content-Length) or as soon as the count passes it.
  huge = json.dumps({"model": MODEL, "prompt": "x" * 5_000_000,
                     "max_tokens": 1}).encode()
  with futures_lib.ThreadPoolExecutor(1) as pool:
    big = pool.submit(post_raw, server, "/v1/completions", huge, chunked)
    status, seconds = timed_models(server)
    assert status == 200 and seconds < 1.0, seconds  # Wide: takes ms.
    status, answer = big.result(60)
  assert status == 413, answer
  assert "max_request_bytes" in answer["error"]["message"]


def test_a_long_prompt_is_refused_before_tokenizing(server):
  # Under the byte limit, but 600 KB cannot be 256 tokens: refused from
  # its length ("at least"), not after seconds of tokenizing.
  chat = {"model": MODEL, "max_tokens": 1,
          "messages": [{"role": "user", "content": "shoe " * 120_000}]}
  long = dict(chat, messages=None, prompt="shoe " * 120_000)
  with futures_lib.ThreadPoolExecutor(2) as pool:
    answers = [pool.submit(get_json, server.url + path, body)
               for path, body in (("/completions", long),
                                  ("/chat/completions", chat))]
    status, seconds = timed_models(server)
    assert status == 200 and seconds < 1.0, seconds
    for future in answers:
      status, answer = future.result(60)
      assert status == 400, answer
      assert answer["error"]["code"] == "context_length_exceeded"
      assert "at least" in answer["error"]["message"], answer


def small_catalog(n):
  return catalog_lib.Catalog(
      name="test", ids=[f"p{i}" for i in range(n)],
      titles=[f"Product {i}" for i in range(n)],
      category=np.full(n, -1, np.int32), category_names=[],
      split=["train"] * n, images=[b""] * n,
      where=[f"row {i}" for i in range(n)])


def label_job(labeler, out_dir, n_pairs):
  """(query q{i % 5}, product i % 6) pairs: all distinct for n <= 30."""
  queries = [f"q{i % 5}" for i in range(n_pairs)]
  return label_shards.label_pairs(
      labeler, small_catalog(6), [f"id-{q}" for q in queries], queries,
      np.arange(n_pairs) % 6, str(out_dir), shard_size=4, batch_size=4,
      progress=False)


def test_server_killed_mid_run_then_restarted(gguf_path, tmp_path):
  n, out = 20, tmp_path / "labels"
  first = Server(gguf_path, str(tmp_path / "server.log")).start()
  try:
    labeler = client(first.url, tmp_path, concurrency=2, max_retries=2)
    # The client kills the server right after its 7th answer (mid-batch:
    # 4 pairs a batch, 2 at a time), not a poller racing the requests: the
    # request in flight beside it may still be answered, so 7 or 8 are.
    call, answers, lock = labeler._call, [0], threading.Lock()

    def call_then_kill(body):
      answer = call(body)
      with lock:
        answers[0] += 1
        if answers[0] == 7:
          first.kill()
      return answer

    labeler._call = call_then_kill
    with pytest.raises(ol.EndpointError, match="connection on all"):
      label_job(labeler, out, n)
  finally:
    first.stop()
  answered = labeler.summary()["answers"]
  committed = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
  assert answered in (7, 8) and len(committed) == answered // 4, (
      answered, committed)
  mtimes = {p: os.stat(out / p).st_mtime_ns for p in committed}
  second = Server(gguf_path, str(tmp_path / "server.log"), first.port)
  try:
    second.start()
    labeler = client(second.url, tmp_path)
    paths = label_job(labeler, out, n)
    asked = second.stats()["completion_requests"]
  finally:
    second.stop()
  # Every pair answered once over both servers, and written once.
  assert answered + asked == n
  assert labeler.summary()["cache_hits"] == answered - 4 * len(committed)
  rows = label_shards.read_shards(paths)
  pairs = list(zip(rows["query"].to_pylist(), rows["product_id"].to_pylist()))
  assert len(pairs) == len(set(pairs)) == n
  for p, mtime in mtimes.items():
    assert os.stat(out / p).st_mtime_ns == mtime


def test_a_bad_model_is_one_clear_line(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.curation.serve",
       f"--model={tmp_path / 'none.gguf'}"], cwd=REPO, capture_output=True,
      text=True, timeout=60)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1] == (
      f"serve: ValueError: --model={tmp_path / 'none.gguf'}: no such file "
      "or directory")


def test_model_specs(gguf_path, tmp_path):
  loaded, _ = gpt_labeler.base_model(gguf_path)
  name, config, params, _ = loading.load_model(os.path.dirname(gguf_path))
  assert (name, config) == (MODEL, loaded.config)
  config = gpt_labeler.GptTeacherConfig(
      gguf=gguf_path, gguf_sha256=gpt_labeler.file_sha256(gguf_path),
      tuning="lora", lora_rank=2, lora_alpha=4.0)
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.05,
                      lora_lib.init(loaded.params, 2, jax.random.key(1)))
  teacher_id = gpt_labeler.save_gpt_teacher(str(tmp_path / "t"), config,
                                            lora, {})
  name, _, params, _ = loading.load_model(str(tmp_path / "t"))
  merged = lora_lib.merge(loaded.params, lora, 2.0)
  assert name == teacher_id
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               params, jax.tree.map(np.asarray, merged))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="needs exactly one .gguf file"):
    loading.load_model(str(tmp_path / "empty"))
