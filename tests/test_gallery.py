"""The retrieval gallery: cells and label marks from hand-built inputs, the
query sample, the contact sheet, the config block, and the page rendered in
headless Chromium (every image loads; a planted broken one is caught)."""

import base64
import html
import html.parser
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dashclip_jax.evaluation import gallery
from dashclip_jax.runtime import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# 3 queries x 2 systems x top 5 over 7 products.
QUERIES = [("q1", "red shirt"), ("q2", "blue heels"), ("q3", "steel watch")]
COLOURS = {"p0": (200, 30, 30), "p1": (220, 90, 90), "p2": (30, 30, 200),
           "p3": (60, 60, 230), "p4": (120, 120, 120), "p5": (90, 160, 90),
           "p6": (240, 200, 40)}
TITLES = {pid: f"Product {pid} in a colour" for pid in COLOURS}
RANKINGS = {
    "alpha": [[("p0", 0.9), ("p1", 0.8), ("p2", 0.7), ("p3", 0.6),
               ("p4", 0.5)],
              [("p2", 0.95), ("p3", 0.9), ("p0", 0.3), ("p5", 0.2),
               ("p6", 0.1)],
              [("p4", 0.7), ("p5", 0.6), ("p6", 0.5), ("p0", 0.4),
               ("p1", 0.3)]],
    "beta": [[("p1", 12.5), ("p0", 11.0), ("p6", 3.0), ("p5", 2.0),
              ("p4", 1.0)],
             [("p3", 8.0), ("p2", 7.5), ("p1", 0.0), ("p0", 0.0),
              ("p4", 0.0)],
             [("p6", 5.0), ("p4", 4.0), ("p3", 1.0), ("p2", 0.5),
              ("p1", 0.25)]],
}
# Listed pairs only; e.g. (q1, p3) is not in the qrels: unjudged.
QRELS = {"q1": {"p0": 2, "p1": 1, "p2": 0, "p4": 0},
         "q2": {"p2": 2, "p3": 2, "p0": 0},
         "q3": {"p4": 2, "p6": 1}}
# The label colours the page promises (written here, not read from
# gallery.LABEL_STYLE, so a swapped or changed colour fails).
LABEL_COLOURS = {2: "#1a9641", 1: "#e69f00", 0: "#d7191c", None: "#9e9e9e"}


def _images():
  # Tiny, odd-sized, one with an alpha channel: thumbnails must cope.
  out = {pid: Image.new("RGB", (12 + i, 16), c)
         for i, (pid, c) in enumerate(COLOURS.items())}
  out["p5"] = np.asarray(Image.new("RGBA", (10, 14), COLOURS["p5"] + (255,)))
  return out


class _Cells(html.parser.HTMLParser):
  """The gallery's td.cell attributes, and every <img> src and tag seen."""

  def __init__(self):
    super().__init__()
    self.cells, self.srcs, self.tags = [], [], set()

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.add(tag)
    if tag == "td" and "cell" in attrs.get("class", "").split():
      self.cells.append(attrs)
    if tag == "img":
      self.srcs.append(attrs["src"])


def _parse(text):
  p = _Cells()
  p.feed(text)
  return p


def _want_label(qid, pid):
  label = QRELS[qid].get(pid)
  return "unjudged" if label is None else str(label)


def test_html_has_every_cell_marked_by_its_qrels_label():
  text = gallery.render_html(QUERIES, RANKINGS, TITLES, _images(), QRELS,
                             note="hand-built")
  page = _parse(text)
  assert len(page.cells) == len(QUERIES) * len(RANKINGS) * 5
  want = [(qid, name, str(rank), pid, _want_label(qid, pid))
          for row, (qid, _) in enumerate(QUERIES)
          for name, ranking in RANKINGS.items()
          for rank, (pid, _) in enumerate(ranking[row], 1)]
  got = [(c["data-query"], c["data-system"], c["data-rank"], c["data-product"],
          c["data-label"]) for c in page.cells]
  assert got == want  # Row by query, block by system, rank order.
  labels = [w[-1] for w in want]
  assert {lab: labels.count(lab) for lab in set(labels)} == {
      "2": 8, "1": 4, "0": 5, "unjudged": 13}
  # The colour of each cell is its label's.
  for cell in page.cells:
    label = None if cell["data-label"] == "unjudged" else int(
        cell["data-label"])
    assert f"border-color:{LABEL_COLOURS[label]}" in cell["style"]
  # Self-contained: inline JPEGs, no script, nothing fetched.
  assert len(page.srcs) == len(page.cells)
  assert all(s.startswith("data:image/jpeg;base64,") for s in page.srcs)
  assert not page.tags & {"script", "link", "iframe"}
  assert "http" not in text and "url(" not in text
  # Scores and titles as given, escaped where needed.
  assert "12.500" in text and "0.950" in text and TITLES["p6"] in text


def test_inline_thumbnails_decode_within_their_size():
  uri = gallery.jpeg_data_uri(Image.new("RGB", (300, 400), (10, 200, 10)))
  im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
  assert im.format == "JPEG" and im.size == (84, 112)  # 3:4 kept.
  assert abs(np.asarray(im).astype(int)[40, 40] - (10, 200, 10)).max() < 8


def test_escaping_and_ranking_length_mismatch():
  titles = {**TITLES, "p0": 'Shirt <b>"bold"</b> & co'}
  text = gallery.render_html(QUERIES, RANKINGS, titles, _images(), QRELS)
  assert "<b>" not in text and "&lt;b&gt;&quot;bold&quot;" in text
  with pytest.raises(ValueError, match="system 'beta': 2 ranked lists for 3"):
    gallery.render_html(QUERIES, {**RANKINGS, "beta": RANKINGS["beta"][:2]},
                        TITLES, _images(), QRELS)


IDS = [f"q{i:02d}" for i in range(20)]
TEXTS = [f"query number {i}" for i in range(20)]


def test_seed_picks_the_sample():
  a = gallery.select_queries(IDS, TEXTS, 5, [], seed=0)
  assert a == gallery.select_queries(IDS, TEXTS, 5, [], seed=0)
  assert len(a) == 5 and a == sorted(a) and len(set(a)) == 5
  others = [gallery.select_queries(IDS, TEXTS, 5, [], seed=s)
            for s in (1, 2, 3)]
  assert all(o != a for o in others)
  assert gallery.select_queries(IDS, TEXTS, 50, [], seed=0) == list(range(20))
  assert gallery.select_queries(IDS, TEXTS, 0, [], seed=0) == []


def test_given_queries_come_first_by_id_or_text():
  drawn = gallery.select_queries(IDS, TEXTS, 5, [], seed=0)
  outside = [i for i in range(20) if i not in drawn][:2]
  given = [IDS[outside[0]], TEXTS[outside[1]], IDS[outside[0]]]  # Repeated.
  got = gallery.select_queries(IDS, TEXTS, 5, given, seed=0)
  assert got == outside + drawn  # Plus the same 5 drawn ones.
  # A given query the draw had chosen: the draw's next pick replaces it.
  got = gallery.select_queries(IDS, TEXTS, 5, [TEXTS[drawn[0]]], seed=0)
  assert got[0] == drawn[0] and set(drawn[1:]) < set(got[1:])
  assert len(got) == 6 and len(set(got)) == 6
  # An id wins over another query's identical text.
  assert gallery.select_queries(["a", "b"], ["b", "x"], 0, ["b"], 0) == [1]


def test_unknown_gallery_query_is_a_one_line_error_naming_it():
  with pytest.raises(config_files.ConfigError) as e:
    gallery.select_queries(IDS, TEXTS, 5, ["q03", "red shoes", "q99"], seed=0)
  msg = str(e.value)
  assert "config.gallery.queries: unknown ['red shoes', 'q99']" in msg
  assert "\n" not in msg and "20 evaluated queries" in msg


def test_parse_queries():
  assert gallery.parse_queries(" q1, men blue shirt ,,q3 ") == [
      "q1", "men blue shirt", "q3"]
  assert gallery.parse_queries(["a b", " c "]) == ["a b", "c"]
  assert gallery.parse_queries("") == []


def test_ranked_hits_break_ties_by_catalog_order():
  scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9], [1.0, 2.0, 3.0, 4.0, 5.0]])
  hits = gallery.ranked_hits(scores, ["a", "b", "c", "d", "e"], k=3)
  assert hits == [[("b", 0.9), ("e", 0.9), ("a", 0.5)],
                  [("e", 5.0), ("d", 4.0), ("c", 3.0)]]
  assert len(gallery.ranked_hits(scores, list("abcde"), k=9)[0]) == 5


def test_contact_sheet_frames_carry_the_labels():
  sheet = gallery.contact_sheet(QUERIES, RANKINGS, TITLES, _images(), QRELS)
  lay = gallery.SheetLayout(5, 2, 3)
  assert sheet.size == lay.size
  px = np.asarray(sheet)
  rgb = lambda h: tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))
  for row, (qid, _) in enumerate(QUERIES):
    for b, ranking in enumerate(RANKINGS.values()):
      for c, (pid, _) in enumerate(ranking[row]):
        x0, y0 = lay.cell_origin(row, b, c)
        label = QRELS[qid].get(pid)
        want = rgb(LABEL_COLOURS[label])
        # Right and bottom edges of the frame (the badge covers top-left),
        # and the product's colour in the middle.
        assert tuple(px[y0 + lay.side // 2, x0 + lay.side - 2]) == want
        assert tuple(px[y0 + lay.side - 2, x0 + lay.side // 2]) == want
        centre = px[y0 + lay.side // 2, x0 + lay.side // 2].astype(int)
        assert abs(centre - COLOURS[pid]).max() < 10, (qid, pid)


def test_write_gallery_files(tmp_path):
  html_path, png_path = gallery.write_gallery(
      str(tmp_path), QUERIES, RANKINGS, TITLES, _images(), QRELS)
  assert html_path == str(tmp_path / "gallery.html")
  assert len(_parse(open(html_path, encoding="utf-8").read()).cells) == 30
  assert Image.open(png_path).size == gallery.SheetLayout(5, 2, 3).size


def _eval_config():
  return config_files.load_config(ROOT / "configs" / "eval.py", "synthetic")


def test_config_blocks_and_their_checks():
  cfg = _eval_config()
  assert cfg.gallery.to_dict() == dict(enabled=True, num_queries=12,
                                       queries="", k=5, seed=0)
  stage2 = config_files.load_config(ROOT / "configs" / "stage2.py", "tiny")
  assert stage2.final_eval.gallery.to_dict() == cfg.gallery.to_dict()
  for key, value, match in (("k", 0, r"gallery.k=0 must be >= 1"),
                            ("num_queries", -1, r"num_queries=-1 must be")):
    bad = _eval_config()
    bad.gallery[key] = value
    with pytest.raises(config_files.ConfigError, match=match):
      gallery.check_config(bad.gallery)
  gallery.check_config(cfg.gallery)


def test_cli_unknown_gallery_key_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "dashclip_jax.evaluation.run",
       "--config=configs/eval.py:synthetic", "--config.gallery.nmu_queries=3",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()
  assert len(last) == 1, proc.stderr[-2000:]
  assert last[0].startswith("evaluation.run: error: --config.gallery."
                            "nmu_queries: no such config key"), last[0]


# -- the page in a browser -----------------------------------------------------

# Appended to a copy of the page (the gallery itself has no script): once
# everything has loaded, report every image's state and the cell count.
_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(
      (i) => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);
  const cells = document.querySelectorAll("td.cell").length;
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({imgs, cells});
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args, timeout=60):
  return subprocess.run(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
       "--hide-scrollbars", "--virtual-time-budget=5000", *args],
      capture_output=True, text=True, timeout=timeout)


def _browser_check(page: pathlib.Path) -> dict:
  probe = page.with_name(page.stem + "_check.html")
  probe.write_text(page.read_text(encoding="utf-8").replace(
      "</body>", _CHECK + "</body>"), encoding="utf-8")
  proc = _chromium("--dump-dom", probe.as_uri())
  assert proc.returncode == 0, proc.stderr[-2000:]
  dom = proc.stdout
  start = dom.index('<pre id="check">') + len('<pre id="check">')
  return json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))


@pytest.fixture(scope="module")
def written_gallery(tmp_path_factory):
  if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)")
  out = tmp_path_factory.mktemp("gallery")
  gallery.write_gallery(str(out), QUERIES, RANKINGS, TITLES, _images(), QRELS)
  return out / "gallery.html"


def test_every_image_loads_in_chromium(written_gallery):
  got = _browser_check(written_gallery)
  assert got["cells"] == 30 and len(got["imgs"]) == 30
  assert all(ok and w > 0 and h > 0 for _, ok, w, h in got["imgs"]), got
  # Thumbnails keep a small image's own size (never enlarged).
  sizes = {alt: (w, h) for alt, _, w, h in got["imgs"]}
  assert sizes["p0"] == (12, 16) and sizes["p6"] == (18, 16)


def test_a_broken_image_is_caught(written_gallery):
  broken = written_gallery.with_name("broken.html")
  text = written_gallery.read_text(encoding="utf-8")
  first = text.index("data:image/jpeg;base64,")
  end = text.index('"', first)
  broken.write_text(text[:first] + "data:image/jpeg;base64,AAAA"
                    + text[end:], encoding="utf-8")
  got = _browser_check(broken)
  bad = [img for img in got["imgs"] if not (img[1] and img[2] > 0)]
  assert [img[0] for img in bad] == [RANKINGS["alpha"][0][0][0]]


def test_screenshot_shows_the_page(written_gallery):
  shot = written_gallery.with_name("shot.png")
  proc = _chromium(f"--screenshot={shot}", "--window-size=1400,700",
                   written_gallery.as_uri())
  assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
  px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
  assert px.shape == (700, 1400, 3)
  # The label-2 green of the frames is on screen (colour of cell borders).
  green = np.array([int(LABEL_COLOURS[2][i:i + 2], 16) for i in (1, 3, 5)])
  assert (np.abs(px - green).max(axis=2) < 6).sum() > 500
