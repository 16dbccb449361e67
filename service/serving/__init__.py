"""Serving with vLLM: replica processes, the per-replica adapter reconciler and the rollout of a
new served model (publish, wait for every routable replica's acknowledgement)."""
