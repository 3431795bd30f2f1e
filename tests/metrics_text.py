"""Reading the Prometheus text exposition in tests: samples by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def samples_of(text: str) -> Samples:
    """{(sample name, frozenset of (label, value)): value} of every sample in the text."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def per_port(samples: Samples, name: str) -> dict[int, float]:
    """A per-gateway metric, by port."""
    return {int(dict(labels)["port"]): v for (n, labels), v in samples.items() if n == name}
