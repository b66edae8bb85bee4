"""The search page's screenshot for the README: the server on loopback
over a sample of the fashion catalog, a query typed into headless Chromium.

  python bench/serve_screenshot.py --model=DIR [--data=../shared/data/fashion]
      [--num=400] [--query="men blue jeans"] [--out=serve_page.png]

Embeds the first --num products of the catalog (styles.csv, images/<id>.jpg;
category = articleType) with `encode_products_to_parquet` into a temporary
export, serves it with the catalog as the image root, types --query into
the page, presses Enter, waits for the cards' images and writes the PNG.
"""

import argparse
import base64
import csv
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

import dashclip_jax
from dashclip_jax import index as index_lib
from dashclip_jax.serving import server as serve
import serve_helpers  # tests/: the server thread and the DevTools browser.
# pylint: enable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--data", default=os.path.join(
      ROOT, "..", "shared", "data", "fashion"))
  parser.add_argument("--num", type=int, default=400)
  parser.add_argument("--query", default="men blue jeans")
  parser.add_argument("--k", type=int, default=12)
  parser.add_argument("--out", default="serve_page.png")
  args = parser.parse_args()
  with open(os.path.join(args.data, "styles.csv"), newline="") as f:
    rows = [r for r in csv.DictReader(f) if os.path.isfile(
        os.path.join(args.data, "images", f"{r['id']}.jpg"))][:args.num]
  encoder = dashclip_jax.load(args.model)
  with tempfile.TemporaryDirectory() as tmp:
    images = [np.asarray(Image.open(os.path.join(
        args.data, "images", f"{r['id']}.jpg")).convert("RGB")) for r in rows]
    encoder.encode_products_to_parquet(
        os.path.join(tmp, index_lib.part_file(0, 1)),
        [r["id"] for r in rows], images,
        [r["productDisplayName"] for r in rows],
        categories=[r["articleType"] for r in rows])
    index_lib.finish_export(tmp, 1, checkpoint=args.model)
    # Warmed up: the latency readout shows a served query, not a compile.
    api = serve.build(args.model, tmp, image_root=args.data, encoder=encoder,
                      warmup=True)
    with serve_helpers.serving(api) as url:
      browser = serve_helpers.Browser(os.path.join(tmp, "profile"), 1280, 760)
      try:
        browser.open(url + "/")
        browser.wait_for("!!document.getElementById('q')")
        browser.evaluate(f"document.getElementById('k').value = '{args.k}'; "
                         "document.getElementById('q').focus()")
        browser.page_call("Input.insertText", text=args.query)
        for kind in ("keyDown", "keyUp"):
          browser.page_call("Input.dispatchKeyEvent", type=kind, key="Enter",
                            code="Enter", windowsVirtualKeyCode=13, text="\r")
        shown = browser.wait_for(
            "[...document.querySelectorAll('.card img')].filter("
            f"i => i.complete && i.naturalWidth > 0).length >= {args.k}",
            120)
        png = base64.b64decode(browser.page_call(
            "Page.captureScreenshot", format="png")["data"])
      finally:
        browser.close()
  with open(args.out, "wb") as f:
    f.write(png)
  print(f"{args.out}: {len(rows)} products, query {args.query!r}, "
        f"{'all' if shown else 'NOT all'} {args.k} cards loaded")


if __name__ == "__main__":
  main()
