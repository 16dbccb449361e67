"""Metrics of the retrieval proxy, in their own registry (served on the gateway's /metrics).
Labels are outcomes only: never a query, subject or document."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("lethe_rag_requests", "Retrieval-proxy requests by outcome.", ["outcome"], registry=REGISTRY)
GATE_BLOCKS = Counter(
    "lethe_rag_gate_blocks", "Answers (or streamed choices) the leakage gate withheld.", registry=REGISTRY
)
RETRIEVAL_SECONDS = Histogram(
    "lethe_rag_retrieval_seconds",
    "Embedding the query and searching the knowledge base.",
    buckets=_LATENCY,
    registry=REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "lethe_rag_upstream_seconds",
    "Upstream model call, until its answer has arrived.",
    buckets=_LATENCY,
    registry=REGISTRY,
)
