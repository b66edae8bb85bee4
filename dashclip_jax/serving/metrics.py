"""The embeddings server's Prometheus metrics (prometheus_client), in a
registry of its own per app, so that two apps in one process (tests) keep
separate counts.

  dashclip_requests_total{path, status}        requests answered
  dashclip_request_seconds{path}               latency histogram
  dashclip_batch_size{tower}                   rows per forward (histogram:
                                               _count = forwards, _sum = rows)
  dashclip_inputs_total{tower}                 inputs embedded for requests
"""

from __future__ import annotations

from typing import Sequence

import prometheus_client as prom

# Per-path label values are the routes, not raw URLs: a scan of random
# paths must not grow the label set without bound.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                   5, 10)


class Metrics:
  """The counters and histograms, and their text exposition."""

  def __init__(self, batch_buckets: Sequence[int]):
    self.registry = prom.CollectorRegistry()
    self.requests = prom.Counter(
        "dashclip_requests", "HTTP requests answered", ("path", "status"),
        registry=self.registry)
    self.latency = prom.Histogram(
        "dashclip_request_seconds", "Request latency, received to answered",
        ("path",), buckets=LATENCY_BUCKETS, registry=self.registry)
    self.batch_size = prom.Histogram(
        "dashclip_batch_size", "Rows per batched forward", ("tower",),
        buckets=tuple(batch_buckets), registry=self.registry)
    self.inputs = prom.Counter(
        "dashclip_inputs", "Inputs embedded for requests", ("tower",),
        registry=self.registry)

  def observe_batch(self, tower: str, rows: int) -> None:
    self.batch_size.labels(tower).observe(rows)

  def observe_request(self, path: str, status: int, seconds: float) -> None:
    self.requests.labels(path, str(status)).inc()
    self.latency.labels(path).observe(seconds)

  def exposition(self) -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text format."""
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
