"""GET /: the search page, one self-contained HTML file (no build step).

A query box, k and an optional category filter; POST /search; one card per
result (thumbnail from /images/<id>, title, score, category) and the
latency readout (the server's own and the round trip). With an API key set
on the server, the page asks for it on the first 401 and keeps it for the
tab (sessionStorage); images are then fetched with it too.
"""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>DashCLIP search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
form { display: flex; gap: .5em; flex-wrap: wrap; align-items: center; }
input[type=search] { font-size: 16px; padding: .4em; width: 28em; }
#latency { color: #555; margin: .6em 0; min-height: 1.4em; }
#error { color: #b00020; }
#results { display: grid; grid-template-columns: repeat(auto-fill, 170px);
           gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px;
        background: #fafafa; }
.card img { width: 150px; height: 150px; object-fit: contain;
            display: block; margin: 0 auto 6px; background: #fff; }
.card .title { font-weight: 600; font-size: 13px; }
.card .meta { color: #555; font-size: 12px; }
#keybox { display: none; }
</style></head>
<body>
<h1>DashCLIP product search</h1>
<form id="form">
  <input type="search" id="q" name="q" placeholder="e.g. men navy blue shirt"
         autofocus autocomplete="off" required>
  <label>k <input type="number" id="k" value="12" min="1" max="100"
                  style="width:4em"></label>
  <label>category <input type="text" id="category" placeholder="any"
                         style="width:9em"></label>
  <span id="keybox"><label>API key <input type="password" id="key">
  </label></span>
  <button type="submit" id="go">Search</button>
</form>
<div id="latency"></div><div id="error"></div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("dashclip-key") || "";
const headers = () => Object.assign({"Content-Type": "application/json"},
    key ? {"Authorization": "Bearer " + key} : {});

async function showImage(img, url) {
  if (!key) { img.src = url; return; }
  const r = await fetch(url, {headers: headers()});
  if (r.ok) img.src = URL.createObjectURL(await r.blob());
}

function card(hit) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.product = hit.product_id;
  const img = document.createElement("img");
  img.alt = hit.product_id;
  if (hit.image) showImage(img, hit.image);
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = hit.title;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = "#" + hit.rank + "  score " + hit.score.toFixed(4) +
      (hit.category ? "  \\u00b7 " + hit.category : "");
  div.append(img, title, meta);
  return div;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if ($("key").value) {
    key = $("key").value;
    sessionStorage.setItem("dashclip-key", key);
  }
  const body = {query: $("q").value, k: parseInt($("k").value, 10) || 12};
  const category = $("category").value.trim();
  if (category) body.filters = {category: category};
  $("error").textContent = "";
  const start = performance.now();
  const r = await fetch("/search", {method: "POST", headers: headers(),
                                    body: JSON.stringify(body)});
  const answer = await r.json();
  const roundTrip = performance.now() - start;
  if (r.status === 401) $("keybox").style.display = "inline";
  if (!r.ok) {
    $("error").textContent = answer.error ? answer.error.message : r.status;
    return;
  }
  $("results").replaceChildren(...answer.results.map(card));
  $("latency").textContent = answer.results.length + " results; server " +
      answer.latency_ms.toFixed(1) + " ms, round trip " +
      roundTrip.toFixed(1) + " ms";
});
</script>
</body></html>
"""
