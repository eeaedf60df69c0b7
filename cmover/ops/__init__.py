"""Operator control of distributed runs: run records, status and completion, steering (pause,
resume, pool), retry of failures, and the Graphite and Prometheus exporters."""
