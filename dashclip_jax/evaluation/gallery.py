"""The retrieval gallery: every system's top-k products for a sample of
queries, side by side, each marked by its qrels label.

  gallery.html  self-contained (thumbnails inlined as base64 JPEG, inline
                CSS, no script, nothing fetched): a row per query, a column
                block per system, each cell with image, title and score.
  gallery.png   the same as a contact sheet (PIL), for the README.

Inputs are plain: queries as (id, text), per-system ranked (product id,
score) lists, product titles and images, and the labels the qrels list per
query. Pairs the qrels do not list are shown as unjudged (the metrics count
them as 0). `evaluation.run` fills the inputs from the evaluation it ran.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from dashclip_jax.evaluation import metrics as metrics_lib
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax.runtime import config_files

# query id -> product id -> listed label; one system's ranking: per query,
# (product id, score) best first.
Qrels = Mapping[str, Mapping[str, int]]
Ranking = Sequence[Sequence[tuple[str, float]]]

# label (None: not in the qrels) -> (badge text, colour, legend).
LABEL_STYLE = {
    2: ("2", "#1a9641", "2 highly relevant"),
    1: ("1", "#e69f00", "1 moderately relevant"),
    0: ("0", "#d7191c", "0 irrelevant"),
    None: ("?", "#9e9e9e", "? unjudged (not in the qrels; counted as 0)"),
}
HTML_THUMB = 112  # px, longer side of an inlined thumbnail.
SHEET_THUMB = 80  # px, a contact-sheet thumbnail.


# -- which queries -------------------------------------------------------------


def parse_queries(spec: str | Sequence[str]) -> list[str]:
  """config.gallery.queries ("id or text, id or text, ...") as a list."""
  items = spec.split(",") if isinstance(spec, str) else spec
  return [s.strip() for s in items if s.strip()]


def check_config(cfg) -> None:
  """ConfigError for a config.gallery block that cannot be drawn."""
  if cfg.num_queries < 0:
    raise config_files.ConfigError(
        f"config.gallery.num_queries={cfg.num_queries} must be >= 0")
  if cfg.k < 1:
    raise config_files.ConfigError(f"config.gallery.k={cfg.k} must be >= 1")


def select_queries(query_ids: Sequence[str], queries: Sequence[str],
                   num_queries: int, given: Sequence[str], seed: int
                   ) -> list[int]:
  """Query rows to show: `given` (ids or texts, in their order), then
  `num_queries` others drawn by `seed`, in query order.

  The draw is one permutation of all queries by the seed, so naming a query
  in `given` replaces at most one drawn query rather than reshuffling.
  """
  row_of = {text: i for i, text in reversed(list(enumerate(queries)))}
  row_of.update({qid: i for i, qid in enumerate(query_ids)})  # Ids win.
  unknown = [g for g in given if g not in row_of]
  if unknown:
    raise config_files.ConfigError(
        f"config.gallery.queries: unknown {unknown}: neither the id nor the "
        f"text of any of the {len(query_ids)} evaluated queries (a query "
        "without a label-2 product among the ranked ones is not evaluated)")
  picked = list(dict.fromkeys(row_of[g] for g in given))
  taken = set(picked)
  order = np.random.default_rng(seed).permutation(len(query_ids))
  drawn = [int(i) for i in order if i not in taken][:num_queries]
  return picked + sorted(drawn)


def ranked_hits(scores: np.ndarray, product_ids: Sequence[str], k: int
                ) -> list[list[tuple[str, float]]]:
  """Top-k (product id, score) per row of float (S, N) scores, with the
  metrics' tie rule (equal scores: lower product index first)."""
  top = metrics_lib.rank_by_score(scores, k=min(k, scores.shape[1]))
  return [[(product_ids[j], float(scores[r, j])) for j in row]
          for r, row in enumerate(top)]


# -- images --------------------------------------------------------------------


def _pil(image: np.ndarray | Image.Image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  return Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")


def thumbnail(image: np.ndarray | Image.Image, size: int) -> Image.Image:
  """RGB copy whose longer side is at most `size`, aspect kept."""
  out = _pil(image)
  out.thumbnail((size, size))
  return out


def jpeg_data_uri(image: np.ndarray | Image.Image, size: int = HTML_THUMB
                  ) -> str:
  buf = io.BytesIO()
  thumbnail(image, size).save(buf, format="JPEG", quality=85)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# -- gallery.html --------------------------------------------------------------

_CSS = """
body { font: 13px/1.3 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; }
p.note { margin: 2px 0 10px; color: #555; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px;
  vertical-align: -2px; margin-right: 4px; }
table { border-collapse: separate; border-spacing: 4px; }
th { background: #f3f3f3; padding: 4px; }
th.query, td.query { position: sticky; left: 0; background: #fff; z-index: 1;
  width: 180px; min-width: 180px; text-align: left; vertical-align: top; }
td.query .qid { color: #777; font-size: 11px; }
td.query .text { font-weight: 600; font-size: 14px; }
td.gap, th.gap { width: 10px; padding: 0; background: none; }
td.cell { width: 124px; min-width: 124px; vertical-align: top; padding: 4px;
  border: 4px solid; border-radius: 4px; position: relative; }
td.cell.unjudged { border-style: dashed; }
td.cell img { display: block; margin: 0 auto; max-width: 112px;
  max-height: 112px; }
td.cell .badge { position: absolute; top: 2px; left: 2px; color: #fff;
  font-weight: 700; padding: 0 5px; border-radius: 3px; }
td.cell .title { font-size: 11px; height: 2.6em; overflow: hidden;
  margin-top: 3px; }
td.cell .score { font-size: 11px; color: #444; }
"""


def _label_of(qrels: Qrels, query_id: str, product_id: str) -> int | None:
  return qrels.get(query_id, {}).get(product_id)


def _cell_html(query_id: str, system: str, rank: int, product_id: str,
               score: float, title: str, image_uri: str,
               label: int | None) -> str:
  badge, colour, legend = LABEL_STYLE[label]
  esc = lambda s: html.escape(str(s), quote=True)
  return (
      f'<td class="cell{" unjudged" if label is None else ""}" '
      f'style="border-color:{colour}" data-query="{esc(query_id)}" '
      f'data-system="{esc(system)}" data-rank="{rank}" '
      f'data-product="{esc(product_id)}" '
      f'data-label="{"unjudged" if label is None else label}">'
      f'<span class="badge" style="background:{colour}" '
      f'title="{esc(legend)}">{badge}</span>'
      f'<img src="{image_uri}" alt="{esc(product_id)}" title="{esc(title)}">'
      f'<div class="title" title="{esc(title)}">{esc(title)}</div>'
      f'<div class="score">#{rank} · {esc(product_id)} · {score:.3f}</div>'
      "</td>")


def render_html(queries: Sequence[tuple[str, str]],
                rankings: Mapping[str, Ranking], titles: Mapping[str, str],
                images: Mapping[str, np.ndarray | Image.Image], qrels: Qrels,
                note: str = "") -> str:
  """gallery.html's text.

  Args:
    queries: (query id, text) per row.
    rankings: system -> per row of `queries`, its ranked (product id, score).
    titles, images: by product id (every ranked product).
    qrels: query id -> product id -> label, the pairs the qrels list.
    note: one line under the heading (what was ranked).
  """
  for name, ranking in rankings.items():
    if len(ranking) != len(queries):
      raise ValueError(f"system {name!r}: {len(ranking)} ranked lists for "
                       f"{len(queries)} queries")
  uris = {pid: jpeg_data_uri(images[pid]) for pid in sorted(
      {pid for r in rankings.values() for row in r for pid, _ in row})}
  k = max((len(row) for r in rankings.values() for row in r), default=0)
  esc = html.escape
  head = ['<tr><th class="query">query</th>']
  for name in rankings:
    head.append(f'<th class="gap"></th><th colspan="{k}">{esc(name)}</th>')
  rows = ["".join(head) + "</tr>"]
  for row, (qid, text) in enumerate(queries):
    relevant = sum(v == qrels_lib.RELEVANT
                   for v in qrels.get(qid, {}).values())
    cells = [f'<tr><td class="query"><div class="qid">{esc(qid)}</div>'
             f'<div class="text">{esc(text)}</div><div class="qid">'
             f'{relevant} label-2 products in the qrels</div></td>']
    for name, ranking in rankings.items():
      cells.append('<td class="gap"></td>')
      for rank, (pid, score) in enumerate(ranking[row], 1):
        cells.append(_cell_html(qid, name, rank, pid, score, titles[pid],
                                uris[pid], _label_of(qrels, qid, pid)))
    rows.append("".join(cells) + "</tr>")
  legend = "".join(f'<span><i style="background:{c}"></i>{esc(t)}</span>'
                   for _, c, t in LABEL_STYLE.values())
  return "\n".join([
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      "<title>DashCLIP retrieval gallery</title>", f"<style>{_CSS}</style>",
      "</head><body>", "<h1>DashCLIP retrieval gallery</h1>",
      f'<p class="note">Top {k} of each system for {len(queries)} queries'
      + (f"; {esc(note)}" if note else "") + ". Border: the qrels label.</p>",
      f'<p class="legend">{legend}</p>', "<table>", *rows, "</table>",
      "</body></html>", ""])


# -- gallery.png ---------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
  """`text` cut (with an ellipsis) to at most `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "…", font=font) > width:
    text = text[:-1]
  return text + "…"


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
  out, words = [], text.split()
  while words and len(out) < lines:
    line = words.pop(0)
    while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
      line += " " + words.pop(0)
    out.append(line)
  if words:
    out[-1] = _fit(draw, out[-1] + " " + " ".join(words), font, width)
  return [_fit(draw, line, font, width) for line in out]


@dataclasses.dataclass(frozen=True)
class SheetLayout:
  """Where the contact sheet puts things (pixels)."""
  k: int
  num_systems: int
  num_queries: int
  thumb: int = SHEET_THUMB
  border: int = 3
  pad: int = 4
  gap: int = 14       # Between system blocks.
  query_w: int = 170  # The query column.
  head_h: int = 40    # Legend and system names.

  @property
  def side(self) -> int:  # A thumbnail in its coloured frame.
    return self.thumb + 2 * self.border

  @property
  def cell_w(self) -> int:
    return self.side + self.pad

  @property
  def cell_h(self) -> int:  # Frame, title line, score line.
    return self.side + 30

  @property
  def block_w(self) -> int:
    return self.k * self.cell_w + self.gap

  @property
  def size(self) -> tuple[int, int]:
    return (self.query_w + self.num_systems * self.block_w,
            self.head_h + self.num_queries * (self.cell_h + self.pad)
            + self.pad)

  def cell_origin(self, row: int, system: int, rank: int) -> tuple[int, int]:
    """Top-left corner of the frame of cell (query row, system, rank - 1)."""
    return (self.query_w + system * self.block_w + rank * self.cell_w,
            self.head_h + row * (self.cell_h + self.pad))


def contact_sheet(queries: Sequence[tuple[str, str]],
                  rankings: Mapping[str, Ranking], titles: Mapping[str, str],
                  images: Mapping[str, np.ndarray | Image.Image],
                  qrels: Qrels, thumb: int = SHEET_THUMB) -> Image.Image:
  """gallery.html's table as one RGB image (the same rows and cells); the
  cells are placed by `SheetLayout`."""
  k = max((len(row) for r in rankings.values() for row in r), default=0)
  lay = SheetLayout(k, len(rankings), len(queries), thumb)
  sheet = Image.new("RGB", lay.size, "white")
  draw = ImageDraw.Draw(sheet)
  small, normal, bold = _font(10), _font(12), _font(14)
  x = lay.pad
  for _, colour, legend in LABEL_STYLE.values():
    draw.rectangle([x, 4, x + 10, 14], fill=colour)
    draw.text((x + 14, 3), legend, fill="black", font=small)
    x += 24 + int(draw.textlength(legend, font=small))
  for b, name in enumerate(rankings):
    x0, _ = lay.cell_origin(0, b, 0)
    draw.text((x0 + (k * lay.cell_w - draw.textlength(name, font=bold)) / 2,
               20), name, fill="black", font=bold)
  thumbs = {pid: thumbnail(images[pid], thumb) for pid in
            {pid for r in rankings.values() for row in r for pid, _ in row}}
  text_w = lay.query_w - 2 * lay.pad
  for row, (qid, text) in enumerate(queries):
    _, y0 = lay.cell_origin(row, 0, 0)
    draw.text((lay.pad, y0), _fit(draw, qid, small, text_w), fill="#777",
              font=small)
    for i, line in enumerate(_wrap(draw, text, normal, text_w, 4)):
      draw.text((lay.pad, y0 + 14 + 15 * i), line, fill="black", font=normal)
    for b, ranking in enumerate(rankings.values()):
      for c, (pid, score) in enumerate(ranking[row]):
        x0, y0 = lay.cell_origin(row, b, c)
        badge, colour, _ = LABEL_STYLE[_label_of(qrels, qid, pid)]
        far = lay.side - 1
        draw.rectangle([x0, y0, x0 + far, y0 + far], fill=colour)
        draw.rectangle([x0 + lay.border, y0 + lay.border,
                        x0 + far - lay.border, y0 + far - lay.border],
                       fill="white")
        im = thumbs[pid]
        sheet.paste(im, (x0 + lay.border + (thumb - im.width) // 2,
                         y0 + lay.border + (thumb - im.height) // 2))
        draw.rectangle([x0, y0, x0 + 12, y0 + 13], fill=colour)
        draw.text((x0 + 3, y0 + 1), badge, fill="white", font=small)
        draw.text((x0, y0 + lay.side + 2),
                  _fit(draw, titles[pid], small, lay.side), fill="black",
                  font=small)
        draw.text((x0, y0 + lay.side + 14), f"#{c + 1}  {score:.3f}",
                  fill="#444", font=small)
  return sheet


def write_gallery(workdir: str, queries: Sequence[tuple[str, str]],
                  rankings: Mapping[str, Ranking], titles: Mapping[str, str],
                  images: Mapping[str, np.ndarray | Image.Image],
                  qrels: Qrels, note: str = "") -> tuple[str, str]:
  """Writes gallery.html and gallery.png into `workdir`; returns their paths."""
  html_path = os.path.join(workdir, "gallery.html")
  png_path = os.path.join(workdir, "gallery.png")
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(render_html(queries, rankings, titles, images, qrels, note))
  contact_sheet(queries, rankings, titles, images, qrels).save(
      png_path, optimize=True)
  return html_path, png_path
