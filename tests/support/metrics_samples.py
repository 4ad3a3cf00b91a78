"""One sample of this process's /metrics exposition, for tests of what the service counts."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service import metrics


def sample(name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels (0 when there is none yet)."""
    text, _content_type = metrics.exposition()
    for family in text_string_to_metric_families(text.decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0
