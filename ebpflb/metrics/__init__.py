"""Prometheus metrics of a loaded instance: the metric families (collector) and the HTTP
server that serves them (exporter)."""
