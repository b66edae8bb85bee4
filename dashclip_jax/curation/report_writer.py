"""The curation report: metrics.json, report.md and reliability plots.

`metrics` holds one agreement block per scored set ("validation": held-out
seed queries; "truth": the unlabelled queries' true labels, the experiment
only), the threshold and its sweep, and the expanded set's counts; the
manifest says what it was all made from.
"""

from __future__ import annotations

import json
import os

from dashclip_jax.curation import agreement as agreement_lib

_SETS = {"validation": "held-out seed queries",
         "truth": "unlabelled queries, true labels"}


def write(out_dir: str, metrics: dict, manifest: dict) -> str:
  """Writes report.md, metrics.json and reliability_<set>.png -> report.md."""
  os.makedirs(out_dir, exist_ok=True)
  for name in _SETS:
    if metrics.get(name):
      agreement_lib.reliability_plot(
          metrics[name]["reliability"],
          os.path.join(out_dir, f"reliability_{name}.png"),
          f"{manifest['teacher']['teacher_id']}: {_SETS[name]}")
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump({"metrics": metrics, "manifest": manifest}, f, indent=2,
              default=str)
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(markdown(metrics, manifest))
  return path


def _agreement_lines(name: str, m: dict) -> list[str]:
  lines = [f"### {name}: {_SETS[name]} ({m['pairs']} pairs)", "",
           "| accuracy | kappa | kappa (linear) | ECE |", "|---|---|---|---|",
           f"| {m['accuracy']:.4f} | {m['kappa']:.4f} | "
           f"{m['kappa_linear']:.4f} | {m['ece']:.4f} |", "",
           "Confusion (rows: human label, columns: teacher label):", "",
           "| human \\ teacher | 0 | 1 | 2 |", "|---|---|---|---|"]
  lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
            for c, row in enumerate(m["confusion"])]
  lines += ["", "| label | precision | recall | f1 | support |",
            "|---|---|---|---|---|"]
  lines += [f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | "
            f"{v['f1']:.4f} | {v['support']} |"
            for c, v in m["per_class"].items()]
  return lines + ["", f"![reliability](reliability_{name}.png)", ""]


def markdown(metrics: dict, manifest: dict) -> str:
  t, th = manifest["teacher"], metrics["threshold"]
  lines = ["# Relevance curation report", "",
           "## What it was made from", "",
           f"* seed: {manifest['seed']['pairs']} pairs, "
           f"{manifest['seed']['queries']} queries, sha256 "
           f"`{manifest['seed']['sha256']}` ({manifest['seed']['source']})",
           f"* teacher: `{t['teacher_id']}` in `{t['dir']}` ({t['kind']}, "
           f"fields {', '.join(t['fields'])}, from {t['init']})",
           f"* candidates: {json.dumps(manifest.get('candidates'))}",
           f"* negatives: {json.dumps(manifest.get('negatives'))}",
           f"* threshold: {th['value']:.2f} ({th['chosen_by']})", ""]
  if manifest["seed"].get("bad"):
    lines += [f"Seed rows skipped: {manifest['seed']['bad']}", ""]
  lines += ["## Agreement with human labels", ""]
  for name in _SETS:
    if metrics.get(name):
      lines += _agreement_lines(name, metrics[name])
  lines += ["## Threshold (held-out seed queries)", "",
            "| threshold | coverage | accuracy of kept |", "|---|---|---|"]
  for s in th["sweep"]:
    if round(s["threshold"] * 100) % 5 == 0 or s["threshold"] == th["value"]:
      acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
      lines.append(f"| {s['threshold']:.2f} | {s['coverage']:.4f} | {acc} |")
  if metrics.get("expanded"):
    e = metrics["expanded"]
    lines += ["", "## Expanded set", "",
              f"`{e['path']}`: {e['rows']} rows "
              f"({json.dumps(e['by_source_label'])})"]
  if metrics.get("generated"):
    lines += generated_lines(metrics["generated"])
  return "\n".join(lines) + "\n"


def generated_lines(g: dict) -> list[str]:
  """The generate step: counts, drops by reason, the teacher's verdict and
  the examples."""
  lines = ["", "## Generated queries", "",
           f"{g['generated']} drafts, {g['kept']} kept "
           f"({100 * g['kept_share']:.1f}%); dropped: {g['dropped_test']} "
           f"as test queries ({g['dropped_test_exact']} exact, "
           f"{g['dropped_test_near']} near), {g['dropped_duplicate']} "
           f"duplicates, {g['dropped_filters']} by the filters."]
  t = g.get("teacher")
  if t:
    lines += ["", f"The teacher labelled {t['pairs']} candidate pairs of "
              f"the {t['queries']} kept queries and kept "
              f"{t['pairs_kept']} ({100 * t['pairs_kept_share']:.1f}%) at "
              f"threshold {t['threshold']:.2f}; {t['queries_with_label2']} "
              f"queries ({100 * t['queries_with_label2'] / max(t['queries'], 1):.1f}%) "
              "have a confident label-2 product."]
  lines += ["", "Examples (spread over the kept queries):", ""]
  lines += [f"* {e}" for e in g["examples"]]
  return lines
