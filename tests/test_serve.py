"""The embeddings server (`python -m dashclip_jax.serving`): parity of every
endpoint with the Python API (through the official `openai` client where
it applies), filters, limits and errors, auth, batching counted from
/metrics, and the search page typed into in headless Chromium."""

import base64
import contextlib
import concurrent.futures as futures_lib
import http.client
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import dashclip_jax
import helpers
import serve_helpers
from dashclip_jax import index as index_lib
from dashclip_jax.serving import server as serve

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TITLES = ["red cotton shirt", "blue jeans for men", "steel watch",
          "black leather belt", "beach sandals", "wool scarf", "green cap",
          "white sneakers", "silk tie", "denim jacket", "gold ring",
          "rain coat"]
CATEGORIES = ["Shirts", "Jeans", "Watches", "Belts", "Sandals", "Scarves",
              "Caps", "Shoes", "Ties", "Jackets", "Rings", "Jackets"]
IDS = [f"p{i:02d}" for i in range(len(TITLES))]
QUERIES = ["shirt for men", "watch", "warm scarf"]
MAX_BATCH = 4
WAIT_MS = 100  # Batching window: concurrent test requests always merge.


def _image(i: int) -> np.ndarray:
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, (24 + 2 * i, 30, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return helpers.save_one_layer_tiny_model(
      tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def encoder(model_dir):
  # The server's largest batch: its forwards and the test's share shapes,
  # so each compiles once.
  return dashclip_jax.load(model_dir, batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
  """images/<id>.png under a root (lossless: the server reads the same
  pixels the test encodes), and a secret beside the root."""
  top = tmp_path_factory.mktemp("catalog")
  root = top / "root"
  (root / "images").mkdir(parents=True)
  for i, pid in enumerate(IDS):
    Image.fromarray(_image(i)).save(root / "images" / f"{pid}.png")
  Image.fromarray(_image(99)).save(top / "secret.png")
  os.symlink(top / "secret.png", root / "images" / "link.png")
  return root


@pytest.fixture(scope="module")
def export_dir(encoder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export"))
  encoder.encode_products_to_parquet(
      os.path.join(out, index_lib.part_file(0, 1)), IDS,
      [_image(i) for i in range(len(IDS))], TITLES, categories=CATEGORIES)
  return index_lib.finish_export(out, 1)


@pytest.fixture(scope="module")
def url(model_dir, encoder, export_dir, catalog):
  api = serve.build(model_dir, export_dir, image_root=str(catalog),
                    image_template="images/{id}.png", max_batch=MAX_BATCH,
                    batch_wait_ms=WAIT_MS, encoder=encoder)
  with serve_helpers.serving(api) as base:
    yield base


def _post(url, path, body, headers=None, raw=None, timeout=60):
  data = raw if raw is not None else json.dumps(body).encode()
  req = urllib.request.Request(
      url + path, data=data, method="POST",
      headers={"Content-Type": "application/json", **(headers or {})})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, json.load(r)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


def _get(url, path, headers=None):
  req = urllib.request.Request(url + path, headers=headers or {})
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def _client(url, key="unused"):
  openai = pytest.importorskip("openai")
  return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


# -- parity ------------------------------------------------------------------


def test_openai_client_round_trip_equals_encode_query(url, encoder):
  client = _client(url)
  want = encoder.encode_query(QUERIES)
  # The client asks for base64 unless told otherwise, and decodes it.
  got = client.embeddings.create(model="dashclip-query", input=QUERIES)
  assert [d.index for d in got.data] == [0, 1, 2]
  np.testing.assert_allclose([d.embedding for d in got.data], want,
                             atol=1e-6)
  as_float = client.embeddings.create(model="dashclip-query", input=QUERIES,
                                      encoding_format="float",
                                      dimensions=16)
  np.testing.assert_allclose([d.embedding for d in as_float.data], want,
                             atol=1e-6)
  tokens = int(encoder.tokenize(QUERIES)[1].sum())
  assert got.usage.prompt_tokens == got.usage.total_tokens == tokens
  one = client.embeddings.create(model="dashclip-text", input="steel watch")
  np.testing.assert_allclose(one.data[0].embedding,
                             encoder.encode_text(["steel watch"])[0],
                             atol=1e-6)
  assert {m.id for m in client.models.list()} == {
      "dashclip-query", "dashclip-text", "dashclip-product"}


def test_base64_decodes_to_the_same_floats(url):
  body = {"model": "dashclip-query", "input": QUERIES}
  _, floats = _post(url, "/v1/embeddings", body)
  _, packed = _post(url, "/v1/embeddings",
                    dict(body, encoding_format="base64"))
  for f, b in zip(floats["data"], packed["data"]):
    decoded = np.frombuffer(base64.b64decode(b["embedding"]), "<f4")
    assert decoded.tolist() == f["embedding"]  # Bit for bit.


def test_product_embedding_equals_the_python_api(url, encoder):
  want = encoder.encode_product([_image(0), _image(5)],
                                [TITLES[0], TITLES[5]])
  png = io.BytesIO()
  Image.fromarray(_image(0)).save(png, format="PNG")
  status, got = _post(url, "/v1/products/embeddings", {"input": [
      {"title": TITLES[0],
       "image_base64": base64.b64encode(png.getvalue()).decode()},
      {"title": TITLES[5], "image_path": "images/p05.png"}]})
  assert status == 200, got
  np.testing.assert_allclose([d["embedding"] for d in got["data"]], want,
                             atol=1e-6)


def test_search_equals_model_search_and_respects_filters(url, encoder,
                                                         export_dir):
  want = encoder.search(QUERIES, k=5, index=export_dir)
  for query, hits in zip(QUERIES, want):
    status, got = _post(url, "/search", {"query": query, "k": 5})
    assert status == 200, got
    assert [r["product_id"] for r in got["results"]] == [
        h.product_id for h in hits]
    np.testing.assert_allclose([r["score"] for r in got["results"]],
                               [h.score for h in hits], atol=1e-5)
    first = got["results"][0]
    assert first["rank"] == 1 and first["image"] == (
        f"/images/{first['product_id']}")
    assert first["category"] == CATEGORIES[IDS.index(first["product_id"])]
  # Filters: exact ranking of the matching rows only (worked by hand on
  # products.npy), every hit in the asked categories.
  products = np.load(os.path.join(export_dir, "products.npy"))
  q = encoder.encode_query(["jacket"])[0]
  for cats in (["Jackets"], ["Jackets", "Watches", "Rings"]):
    rows = [i for i, c in enumerate(CATEGORIES) if c in cats]
    order = sorted(rows, key=lambda i: -float(products[i] @ q))[:2]
    status, got = _post(url, "/search", {"query": "jacket", "k": 2,
                                         "filters": {"category": cats}})
    assert status == 200, got
    assert [r["product_id"] for r in got["results"]] == [
        IDS[i] for i in order]
    assert all(r["category"] in cats for r in got["results"])
    np.testing.assert_allclose([r["score"] for r in got["results"]],
                               [products[i] @ q for i in order], atol=1e-5)
  # A k larger than the matches: all of them.
  _, got = _post(url, "/search", {"query": "jacket", "k": 10,
                                  "filters": {"category": "Jackets"}})
  assert sorted(r["product_id"] for r in got["results"]) == ["p09", "p11"]


# -- errors and limits -------------------------------------------------------


def _error(url, path, body, raw=None):
  status, got = _post(url, path, body, raw=raw)
  assert set(got) == {"error"} and got["error"]["message"], got
  return status, got["error"]


@pytest.mark.parametrize("path,body,status,says", [
    ("/v1/embeddings", {"model": "dashclip-query", "input": "a",
                        "dimensions": 8}, 400, "dimensions=8"),
    ("/v1/embeddings", {"model": "gpt-4", "input": "a"}, 404,
     "'gpt-4' does not exist"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": [[101, 2003]]},
     400, "input[0] is list, not a string"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": []}, 400,
     "input is empty"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": ["ok", " "]},
     400, "no words"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": ["a"] * 513},
     400, "513 items, over this server's limit of 512"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": "x" * 2049},
     400, "2049 characters"),
    ("/v1/embeddings", {"model": "dashclip-query", "input": "a",
                        "encoding_format": "hex"}, 400, "encoding_format"),
    ("/v1/embeddings", {"input": "a"}, 400, "model"),
    ("/search", {"query": "shirt", "k": 101}, 400, "k=101"),
    ("/search", {"query": "shirt", "k": 0}, 400, "k"),
    ("/search", {"query": "shirt", "filters": {"colour": "red"}}, 400,
     "no filter 'colour'"),
    ("/search", {"query": "shirt", "filters": {"category": []}}, 400,
     "non-empty list"),
    ("/v1/products/embeddings", {"input": {"title": "t",
                                           "image_base64": "%%%"}}, 400,
     "not valid base64"),
    ("/v1/products/embeddings", {"input": {
        "title": "t", "image_base64": base64.b64encode(b"no image").decode()
    }}, 422, "input[0]"),
    ("/v1/products/embeddings", {"input": {"title": "t"}}, 400,
     "exactly one of image_base64 and image_path"),
    ("/v1/products/embeddings", {"input": {"title": "t",
                                           "image_path": "images/none.png"}},
     404, "no such file"),
])
def test_bad_requests_get_openai_errors(url, path, body, status, says):
  got_status, error = _error(url, path, body)
  assert got_status == status and says in error["message"], error


def test_bad_json_and_methods(url):
  status, error = _error(url, "/v1/embeddings", None, raw=b"{not json")
  assert status == 400 and "not valid JSON" in error["message"]
  status, _ = _get(url, "/v1/embeddings")
  assert status == 405
  status, _ = _get(url, "/no/such/path")
  assert status == 404


@pytest.mark.parametrize("path", [
    "../secret.png", "images/../../secret.png", "images/link.png",
    "/etc/passwd"])
def test_paths_outside_the_image_root_are_refused(url, path):
  status, error = _error(url, "/v1/products/embeddings",
                         {"input": {"title": "t", "image_path": path}})
  assert status == 400 and "outside this server's image root" in (
      error["message"]), error
  assert error["param"] == "input[0]"  # Which product of the request.


def test_product_images_are_served_only_from_the_root(url, catalog):
  status, data = _get(url, "/images/p03")
  assert status == 200
  assert data == (catalog / "images" / "p03.png").read_bytes()
  for pid in ("..%2Fsecret", "link", "nope"):
    assert _get(url, f"/images/{pid}")[0] == 404


def test_a_5mb_body_gets_413_while_a_small_request_answers(url):
  host, port = url.removeprefix("http://").split(":")
  # Announced: refused from its Content-Length, unread.
  conn = http.client.HTTPConnection(host, int(port), timeout=30)
  conn.putrequest("POST", "/v1/embeddings")
  conn.putheader("Content-Type", "application/json")
  conn.putheader("Content-Length", str(5 << 20))
  conn.endheaders()
  answer = conn.getresponse()
  assert answer.status == 413 and b"limit of 2097152" in answer.read()
  conn.close()
  # Chunked, trickling: a small request answers while it is still open.
  sock = socket.create_connection((host, int(port)))
  sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
  chunk = b"x" * (256 << 10)
  sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
  status, got = _post(url, "/v1/embeddings",
                      {"model": "dashclip-query", "input": "watch"},
                      timeout=10)
  assert status == 200 and len(got["data"]) == 1
  reply = b""
  try:  # The rest of 5 MB: cut off once it passes the limit.
    for _ in range(19):
      sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    sock.sendall(b"0\r\n\r\n")
  except (BrokenPipeError, ConnectionResetError):
    pass
  sock.settimeout(30)
  with contextlib.suppress(ConnectionResetError):
    reply = sock.recv(1 << 16)
  sock.close()
  assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


# -- batching and metrics ----------------------------------------------------


def _metric(url, name, **labels):
  from prometheus_client import parser  # pylint: disable=g-import-not-at-top
  _, text = _get(url, "/metrics")
  for family in parser.text_string_to_metric_families(text.decode()):
    for sample in family.samples:
      if sample.name == name and all(
          sample.labels.get(k) == v for k, v in labels.items()):
        return sample.value
  return 0.0


def test_concurrent_requests_are_merged_into_batches(url):
  before = {k: _metric(url, f"dashclip_batch_size_{k}", tower="query")
            for k in ("count", "sum")}
  n = 16
  with futures_lib.ThreadPoolExecutor(n) as pool:
    answers = list(pool.map(lambda i: _post(
        url, "/v1/embeddings", {"model": "dashclip-query",
                                "input": f"query {i}"}), range(n)))
  assert all(status == 200 for status, _ in answers)
  rows = _metric(url, "dashclip_batch_size_sum", tower="query") - (
      before["sum"])
  forwards = _metric(url, "dashclip_batch_size_count", tower="query") - (
      before["count"])
  assert rows == n and forwards < n, (rows, forwards)
  assert _metric(url, "dashclip_requests_total", path="/v1/embeddings",
                 status="200") >= n
  assert _metric(url, "dashclip_request_seconds_count",
                 path="/v1/embeddings") >= n


def test_healthz_and_models(url, model_dir):
  status, data = _get(url, "/healthz")
  assert status == 200 and json.loads(data) == {
      "status": "ok", "dimensions": 16, "products": len(IDS)}
  _, data = _get(url, "/v1/models")
  models = json.loads(data)["data"]
  assert [m["id"] for m in models] == [
      "dashclip-query", "dashclip-text", "dashclip-product"]
  assert models[0]["dimensions"] == 16
  assert models[0]["model_dir"] == os.path.abspath(model_dir)
  assert models[0]["training_config"] is None  # A bare model dir.


# -- the command line and auth -----------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cli_with_auth_on(model_dir, export_dir):
  port = _free_port()
  env = dict(os.environ, DASHCLIP_API_KEY="sk-secret",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
                 "PYTHONPATH", "")]))
  proc = subprocess.Popen(
      [sys.executable, "-m", "dashclip_jax.serving", f"--model={model_dir}",
       f"--index={export_dir}", f"--port={port}", "--nowarmup"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  url = f"http://127.0.0.1:{port}"
  try:
    line = proc.stdout.readline()
    assert "auth on" in line and "127.0.0.1" in line, (
        line + proc.stderr.read() if proc.poll() is not None else line)
    deadline = time.monotonic() + 60
    while True:
      try:
        if _get(url, "/healthz")[0] == 200:  # Open without a key.
          break
      except (urllib.error.URLError, ConnectionError):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    body = {"model": "dashclip-query", "input": "watch"}
    status, got = _post(url, "/v1/embeddings", body)
    assert status == 401 and got["error"]["code"] == "invalid_api_key"
    assert _post(url, "/search", {"query": "watch"},
                 {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(url, "/metrics")[0] == 401
    assert _get(url, "/")[0] == 200  # The page holds no data.
    got = _client(url, "sk-secret").embeddings.create(
        model="dashclip-query", input="watch")
    assert len(got.data[0].embedding) == 16
    status, got = _post(url, "/search", {"query": "watch", "k": 3},
                        {"Authorization": "Bearer sk-secret"})
    assert status == 200 and len(got["results"]) == 3
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def test_auth_off_needs_no_key(url):
  status, _ = _post(url, "/v1/embeddings",
                    {"model": "dashclip-query", "input": "watch"})
  assert status == 200 and _get(url, "/metrics")[0] == 200


def test_cli_errors_are_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.serving",
       f"--model={tmp_path / 'none'}"], capture_output=True, text=True,
      timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      f"serve: --model={tmp_path / 'none'}: no such file or directory"], (
          proc.stderr)


# -- the page ----------------------------------------------------------------


def test_the_page_shows_result_cards_for_a_typed_query(url, tmp_path):
  if serve_helpers.CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)")
  browser = serve_helpers.Browser(str(tmp_path / "profile"))
  try:
    browser.open(url + "/")
    assert browser.wait_for("document.readyState === 'complete' && "
                            "!!document.getElementById('q')")
    browser.evaluate("document.getElementById('k').value = '4'; "
                     "document.getElementById('q').focus()")
    browser.page_call("Input.insertText", text="steel watch")
    for kind in ("keyDown", "keyUp"):
      browser.page_call("Input.dispatchKeyEvent", type=kind, key="Enter",
                        code="Enter", windowsVirtualKeyCode=13, text="\r")
    cards = browser.wait_for("""(() => {
      const cards = [...document.querySelectorAll('.card')];
      const ok = cards.length === 4 && cards.every(
          c => c.querySelector('img').complete &&
               c.querySelector('img').naturalWidth > 0);
      return ok && cards.map(c => [c.dataset.product,
          c.querySelector('img').naturalHeight,
          c.querySelector('.title').textContent]);
    })()""")
    latency = browser.evaluate(
        "document.getElementById('latency').textContent")
    shot = base64.b64decode(browser.page_call(
        "Page.captureScreenshot", format="png")["data"])
  finally:
    browser.close()
  _, want = _post(url, "/search", {"query": "steel watch", "k": 4})
  assert cards, "no 4 result cards with loaded images"
  assert [c[0] for c in cards] == [r["product_id"] for r in want["results"]]
  assert [c[2] for c in cards] == [r["title"] for r in want["results"]]
  # Each image is its product's own file (their heights differ).
  assert [c[1] for c in cards] == [
      _image(IDS.index(c[0])).shape[0] for c in cards]
  assert latency.startswith("4 results; server ") and "round trip" in latency
  assert Image.open(io.BytesIO(shot)).size == (1200, 800)
